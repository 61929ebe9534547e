"""The output folder of `nerft data prepare`: checked up front, replaced in one swap.

The new folder is built beside the old one (`.NAME.partial-PID`) and swapped in with two
renames; files in the old folder that `prepare` did not write are moved into the new one. A
run killed midway leaves hidden folders that the next run cleans up: a half-built folder is
removed, and an old folder whose replacement never landed is put back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from nerft.data.readers import DataError

OUTPUT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl", "stats.json")


def is_prepare_output(folder: Path) -> bool:
    try:
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and "totals" in stats and "splits" in stats


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an --out that cannot or should not receive the output, before any work."""
    out = Path(out)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise DataError(f"--out {out}: {parent} is a file, not a folder")
        if parent.exists():
            break
    if not out.is_dir() or force or is_prepare_output(out):
        return
    if any(p for p in out.iterdir() if not _ours(out, p)):
        raise DataError(f"--out {out} is not empty and holds no earlier `nerft data prepare` "
                        "output; pick another folder, or pass --force to write there (its other "
                        "files are kept)")


def _ours(out: Path, entry: Path) -> bool:
    """Leftovers of a run into `out` that was killed before it wrote stats.json."""
    return entry.name.endswith(".tmp")


def swap_in(out: Path, build: Callable[[Path], None]) -> None:
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        build(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not out.exists():
        partial.rename(out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    partial.rename(out)
    _carry_over(old, out)


def _carry_over(old: Path, out: Path) -> None:
    """Move what the user keeps in the folder into the new one, then drop the old outputs."""
    for entry in old.iterdir():
        if entry.name in OUTPUT_FILES or _ours(old, entry) or (out / entry.name).exists():
            continue
        entry.rename(out / entry.name)
    shutil.rmtree(old)


def recover(out: Path) -> None:
    """Clean up after a run into `out` that was killed (its process is gone)."""
    prefix = f".{out.name}."  # matched as text: a folder name may hold glob characters
    for entry in sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix)):
        kind, _, pid = entry.name[len(prefix):].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "partial":
            shutil.rmtree(entry, ignore_errors=True)
        elif not out.exists():
            entry.rename(out)  # the new folder never landed: the previous output comes back
        else:
            _carry_over(entry, out)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
