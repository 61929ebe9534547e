"""`nerft demo`: the offline end-to-end demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nerft.cli.common import fail


def demo(
    data: Optional[list[Path]] = typer.Option(
        None, "--data", help="Your annotated corpus instead of the demo's MSRA slice."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Where data, run and report go (default: runs/demo-DATE-TIME)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Training recipe (default: the demo's own, shipped with nerft; "
        "configs/demo-cpu.yaml in a clone is the same file)."),
    train_rows: Optional[int] = typer.Option(
        None, "--train-rows", min=1, help="Override the recipe's data.train_limit."),
    test_rows: Optional[int] = typer.Option(
        None, "--test-rows", min=1, help="Score only the first N test sentences."),
    epochs: Optional[float] = typer.Option(
        None, "--epochs", min=0.1, help="Override the recipe's training.epochs."),
):
    """The whole life cycle offline: fetch the demo model and corpus, prepare, score, fine-tune, score.

    \b
    Examples:
      nerft demo
      nerft demo --data ../shared/data/ccfbdci/ccfbdci.jsonl --train-rows 160
    """
    from nerft.demo.run import DEMO_CONFIG, run_demo

    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if (out / "run").exists():
        fail(f"{out} already holds a demo run; remove it or pass --out")
    if config is not None and not config.is_file():  # before minutes of fetching
        fail(f"--config {config}: no such file; pass a recipe file, or leave --config out "
             "for the demo's own")
    # Errors (fetch, data, config, training) are NerftErrors: `nerft.cli` reports them.
    result = run_demo(out, data=data, config_path=config or DEMO_CONFIG, train_rows=train_rows,
                      test_rows=test_rows, epochs=epochs)
    console = Console()
    console.print(f"[bold]strict micro F1 on {result['test_sentences']} test sentences "
                  f"({result['test_entities']} entities): untrained {result['f1_before']:.4f} → "
                  f"fine-tuned {result['f1_after']:.4f} ({result['f1_after'] - result['f1_before']:+.4f})[/]")
    console.print(f"report:  {result['report']}\nadapter: {result['adapter']}\n"
                  f"took {result['minutes']:.1f} min; try: nerft predict {out / 'run'} \"张三在北京工作。\"",
                  highlight=False)

