"""Issue 27: `nerft.atomic` is the only code that renames over a file or folder. This reads
the package's own source, so a module with its own os.replace dance fails here with the file
and line to change."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nerft"
RENAME = re.compile(r"\bos\.(replace|rename)\(|\.rename\(")


def test_no_rename_outside_the_atomic_helper():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel == "nerft/atomic.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if RENAME.search(line.split("#")[0]):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "renames outside nerft/atomic.py (use nerft.atomic):\n" + "\n".join(found)
