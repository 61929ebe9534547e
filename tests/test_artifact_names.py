"""Issue 27: the file names of a prepared-data folder and of an export folder are spelled in
their owner module only (`nerft/data/prepared.py`, `nerft/export_dir.py`); every other module
asks the owner. This reads the package's own source: a string literal (docstrings aside) that
names one of these files elsewhere fails here with the file and line to change."""

import ast
import re

from source_scan import modules, string_constants

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


def _allowed(rel: str, text: str) -> bool:
    return any(rel == file and snippet in text for file, snippet in ALLOWED)


def test_no_artifact_file_name_outside_its_owner():
    found = []
    for rel, path, tree in modules():
        if rel in OWNERS:
            continue
        for line, text in string_constants(tree):
            if NAME.search(text) and not _allowed(rel, text):
                found.append(f"{rel}:{line}: {text.strip()[:70]!r}")
        for node in ast.walk(tree):
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
