"""Writing to disk so that a kill at any moment leaves either the old file or the new one.

The one place that knows how nerft replaces a file or a folder: write beside the target, then
rename over it (a rename within one folder is atomic on POSIX and on Windows' `os.replace`).
Every artifact owner (prepared data, run folder, export, model cache) writes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def _temp_beside(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename."""
    path = Path(path)
    tmp = _temp_beside(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one rename."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data, indent: int | None = 2) -> None:
    """Replace `path` with `data` as JSON (non-ASCII kept, newline at the end)."""
    write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Replace `path` with one line per item (each given without its newline); returns the
    count. Streams, so a large split never sits in memory whole."""
    path = Path(path)
    tmp = _temp_beside(path)
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def append_line(path: Path, line: str, *, sync: bool = True) -> None:
    """Append one line. A file whose last line was torn by a crash (no final newline) gets
    the newline first, so the new line never glues onto the torn one."""
    path = Path(path)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        torn = False
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
            f.seek(0, os.SEEK_END)
        f.write((("\n" if torn else "") + line + "\n").encode("utf-8"))
        f.flush()
        if sync:
            os.fsync(f.fileno())


def replace_folder(target: Path, staging: Path, old: Path) -> None:
    """Move a finished `staging` folder to `target`, keeping the previous one at `old` until
    the new one is in place; `recover_folder` completes the swap after a kill at any point."""
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: Path, staging: Path, old: Path, finished_marker: str) -> None:
    """Finish a `replace_folder` that a kill interrupted: the new folder if it was finished
    (its `finished_marker` file is written last), else the previous one."""
    if not target.exists():
        if staging.is_dir() and (staging / finished_marker).is_file():
            os.replace(staging, target)
        elif old.is_dir():
            os.replace(old, target)
    shutil.rmtree(old, ignore_errors=True)


def move_into(source: Path, target: Path) -> None:
    """Rename `source` to `target`, replacing a file or folder already there."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    os.replace(source, target)


@contextlib.contextmanager
def staged_folder(final: Path, *, mode: int = 0o755) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `final`; when the body returns, rename it to
    `final` (which must not exist or be an empty folder). If the body raises, the temporary
    folder is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(mode)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        yield tmp
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
