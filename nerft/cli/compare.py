"""`nerft compare RUN_A RUN_B --data DIR ...`: the regression gate, as a CI step."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nerft.cli.common import err, fail


def compare(
    run_a: str = typer.Argument(..., help="The reference: the model in use (run directory or model)."),
    run_b: str = typer.Argument(..., help="The candidate that would replace it."),
    data: list[Path] = typer.Option(..., "--data", help="Prepared folder (its --split) or a "
                                    "canonical .jsonl; repeat for several data sets."),
    split: str = typer.Option("test", "--split", help="Which split of a prepared folder."),
    max_drop: float = typer.Option(1.0, "--max-drop", min=0, help="Largest allowed drop of "
                                   "strict micro F1, in points, on any data set."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: "
                                       "compare/A-vs-B)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N rows of each."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    constrain: bool = typer.Option(True, "--constrain/--no-constrain", help="Constrained decoding (both models)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run the Python code a model folder ships."),
):
    """Score two models on the same sentences; exit 1 if B is worse than A by more than --max-drop.

    \b
    Exit codes: 0 B passes the gate on every data set
                1 B drops more than --max-drop F1 points on some data set (the line says where)
                2 bad arguments, data or model

    \b
    Examples:
      nerft compare runs/v1 runs/v2 --data data/ccfbdci
      nerft compare runs/v1 runs/v2 --data data/ccfbdci --data data/feedback --max-drop 0.5
    """
    from nerft.eval.compare import compare_predictions, gate, predict_data_sets, write_report
    from nerft.eval.workflow import distinct_model_names, load_split

    names = [str(d) for d in data]
    if len(set(names)) != len(names):
        fail("the same --data was given twice")
    # Bad data and unloadable models are NerftErrors that `nerft.cli` reports in one line.
    loaded = [load_split(d, split, limit) for d in data]
    data_sets = [(d.name if d.is_dir() else d.stem, examples) for d, (examples, _) in zip(data, loaded)]
    labels = next((lb for _, lb in loaded if lb), None)  # for a model that is not a run
    name_a, name_b = distinct_model_names(run_a, run_b)
    preds = []
    for ref in (run_a, run_b):
        err.print(f"decoding {sum(len(x) for _, x in data_sets):,} sentences with {ref}", highlight=False)
        preds.append(predict_data_sets(ref, data_sets, batch_size=batch_size, constrained=constrain,
                                       fallback_labels=labels, trust_remote_code=trust_remote_code))
    results = [compare_predictions(name, examples, pa, pb, seed=seed)
               for (name, examples), pa, pb in zip(data_sets, *preds)]
    verdict = gate(results, max_drop, name_a, name_b)
    out = out or Path("compare") / f"{_slug(name_a)}-vs-{_slug(name_b)}"
    _, md = write_report(out, name_a, name_b, results, verdict, max_drop)
    console = Console()
    for r in results:
        console.print(f"{r.name}: {r.sentences} sentences, strict F1 {name_a} {r.f1_a:.2f} → "
                      f"{name_b} {r.f1_b:.2f} ({r.delta:+.2f}, 95% CI [{r.ci_low:+.2f}, "
                      f"{r.ci_high:+.2f}])", highlight=False, soft_wrap=True)
    console.print(f"report: {md}", highlight=False, soft_wrap=True)
    console.print(verdict.reason, highlight=False, soft_wrap=True)
    if not verdict.passed:
        raise typer.Exit(1)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
