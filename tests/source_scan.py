"""Reading nerft's own source for the owner checks (tests/test_*owner*.py, test_artifact_names):
the string constants a module spells, docstrings aside."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nerft"


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def modules():
    """(path relative to the repo, path, parsed tree) of every module of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE.parent).as_posix(), path, ast.parse(path.read_text(encoding="utf-8"))


def string_constants(tree: ast.AST):
    """(line, text) of every string constant that is not a docstring."""
    skip = docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value
