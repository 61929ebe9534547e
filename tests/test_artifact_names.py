"""Issue 27: the file names of a prepared-data folder and of an export folder are spelled in
their owner module only (`nerft/data/prepared.py`, `nerft/export_dir.py`); every other module
asks the owner. This reads the package's own source: a string literal (docstrings aside) that
names one of these files elsewhere fails here with the file and line to change."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nerft"

OWNERS = {
    "nerft/data/prepared.py": ("stats.json", "train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl"),
    "nerft/export_dir.py": ("task.json", "nerft.json", "Modelfile", "answer.gbnf", "README.md"),
}
NAME = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for names in OWNERS.values() for n in names)
                  + r")(?![\w.])|model-.*\.gguf")
# A path join onto a folder an export owns: `... / "adapter"`.
EXPORT_FOLDERS = ("adapter",)

# What must stay, and why. Keep it short: each entry is text a user reads that touches no file.
ALLOWED = {
    ("nerft/cli/data.py", "train/val/test.jsonl"): "--out's help describes what the folder gets",
    ("nerft/config.py", "train/val/test.jsonl"): "data.dir's description in the config schema",
    ("nerft/cli/export.py", "Ollama Modelfile"): "--gguf's help names Ollama's kind of file",
}


def _docstrings(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _allowed(rel: str, text: str) -> bool:
    return any(rel == file and snippet in text for file, snippet in ALLOWED)


def test_no_artifact_file_name_outside_its_owner():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel in OWNERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if NAME.search(node.value) and not _allowed(rel, node.value):
                    found.append(f"{rel}:{node.lineno}: {node.value.strip()[:70]!r}")
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                    and isinstance(node.right, ast.Constant) and node.right.value in EXPORT_FOLDERS):
                found.append(f"{rel}:{node.lineno}: / {node.right.value!r}")
    assert not found, ("artifact file names outside their owner (ask PreparedData or ExportDir):\n"
                       + "\n".join(found))


def test_the_check_sees_what_it_looks_for():
    # A check that cannot fail is no check: the patterns catch the spellings used before.
    assert NAME.search("stats.json") and NAME.search("predictions in val.jsonl")
    assert NAME.search("model-q8_0.gguf") and NAME.search("Modelfile")
    assert not NAME.search("metrics.jsonl") and not NAME.search("nerft.json.bak")
