"""`nerft runs [DIR]`: the runs under a folder as a table (lineage, scores, size), or JSON."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def runs(
    folder: Path = typer.Argument(Path("runs"), help="Folder holding run directories (searched "
                                  "4 levels deep), or one run."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array, for scripts."),
):
    """List training runs: name, parent (init_from), method, data, steps, F1, size, date.

    \b
    Examples:
      nerft runs
      nerft runs runs/ccfbdci --json
    """
    from nerft.runs.listing import human_size, list_runs, to_json

    rows = list_runs(folder)  # a missing folder is a RunDirError: `nerft.cli` reports it
    console = Console()
    if as_json:
        print(to_json(rows))
        return
    if not rows:
        console.print(f"no runs under {folder}", highlight=False)
        return
    table = Table(title=f"runs under {folder}")
    for col in ("name", "parent", "method", "data", "steps", "best val F1", "test F1", "size", "date"):
        table.add_column(col, justify="right" if col in ("steps", "best val F1", "test F1", "size") else "left")

    def f1(x):
        return "-" if x is None else f"{x:.4f}"

    for r in rows:
        name = r.name + ("" if r.state == "finished" else " (unfinished)")
        table.add_row(name, r.parent or "-", r.method, r.data or "-",
                      "-" if r.steps is None else str(r.steps), f1(r.best_val_f1), f1(r.test_f1),
                      human_size(r.size_bytes), (r.date or "-")[:16].replace("T", " "))
    console.print(table)
