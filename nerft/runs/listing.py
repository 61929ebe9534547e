"""Lineage: the runs under a folder, one row each, with the run each was continued from."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nerft.runs.run_dir import RunDir, RunDirError

MAX_DEPTH = 4  # runs/project/variant/run is as deep as people nest them


@dataclass
class RunRow:
    name: str  # path relative to the listed folder
    path: str
    parent: str | None  # the init_from run, relative when it is under the folder
    method: str
    data: str | None
    steps: int | None
    best_val_f1: float | None
    test_f1: float | None
    size_bytes: int | None  # the weights folder (best/, else final/): what would be deployed
    date: str | None  # when training started
    state: str  # finished | running or stopped
    new_labels: list[str] | None = None
    replay_share: float | None = None


def find_runs(root: Path) -> list[RunDir]:
    root = Path(root)
    if RunDir.is_run(root):
        return [RunDir(root)]
    found, level = [], [root]
    for _ in range(MAX_DEPTH):
        nxt = []
        for folder in level:
            # Links to folders are skipped: they would list a run twice (e.g. a `latest` link).
            for child in sorted(p for p in folder.iterdir()
                                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
                if RunDir.is_run(child):
                    found.append(RunDir(child))  # a run's own subfolders are not searched
                else:
                    nxt.append(child)
        level = nxt
    return sorted(found, key=lambda r: str(r.path))


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or path.name
    except ValueError:
        return str(path)


def describe(run: RunDir, root: Path) -> RunRow:
    info = run.info()
    lineage = info.get("init_from") or {}
    parent = run.parent()
    summary = run.summary_info() or {}
    steps = summary.get("steps")
    if steps is None:  # still running, or stopped: the last step logged
        steps = run.last_logged_step()
    best = summary.get("best_f1")
    if best is None:
        best = run.best_scores().get("eval_f1")
    try:
        weights = run.weights()
    except RunDirError:
        weights = None
    started = info.get("started_at") or dt.datetime.fromtimestamp(
        run.config_yaml.stat().st_mtime).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
    return RunRow(
        name=_name(run.path, root), path=str(run.path),
        parent=_name(parent.path, root) if parent else None, method=run.method_kind(),
        data=info.get("data_dir"), steps=steps, best_val_f1=best, test_f1=run.eval_f1("test"),
        size_bytes=_size(weights) if weights else None, date=started,
        state="finished" if run.finished() else "running or stopped",
        new_labels=lineage.get("new_labels"), replay_share=lineage.get("replay_share"))


def list_runs(root: Path) -> list[RunRow]:
    """Every run under `root` (or `root` itself), parents before the runs continued from them."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such folder")
    rows = [describe(r, root) for r in find_runs(root)]
    by_name = {r.name: r for r in rows}

    def depth(row: RunRow) -> int:
        seen, d = set(), 0
        while row.parent in by_name and row.parent not in seen:
            seen.add(row.parent)
            row, d = by_name[row.parent], d + 1
        return d

    return sorted(rows, key=lambda r: (depth(r), r.date or "", r.name))


def to_json(rows: list[RunRow]) -> str:
    return json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=2)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
