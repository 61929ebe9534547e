"""`nerft eval MODEL --data DIR`: score a model, write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nerft.cli.common import err


def eval_(
    model: str = typer.Argument(..., help="Run directory, exported model folder, or base model."),
    data: Path = typer.Option(..., "--data", help="Folder from `nerft data prepare`, or a canonical .jsonl."),
    split: str = typer.Option("test", "--split", help="Which split of a prepared folder."),
    compare: Optional[str] = typer.Option(None, "--compare", help="A second model for the same report."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: RUN/eval-SPLIT or eval/NAME)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N rows."),
    batch_size: int = typer.Option(16, "--batch-size", min=1,
                                   help="Sentences decoded together; finished ones are "
                                   "replaced from the queue."),
    constrain: bool = typer.Option(True, "--constrain/--no-constrain", help="Constrained decoding."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the Python code a model folder ships (its "
        "auto_map). Never read from a run's files: only this flag allows it."),
):
    """Score a model on a split: metrics.json, predictions.jsonl, report.md and report.html.

    \b
    Examples:
      nerft eval runs/demo-cpu --data data/ccfbdci
      nerft eval runs/demo-cpu --data data/ccfbdci --compare demo      # zero-shot base vs fine-tuned
      nerft eval demo --data data/ccfbdci --split val --limit 200 --no-constrain
    """
    from rich.progress import Progress

    from rich.markup import escape

    from nerft.eval.workflow import evaluate_model, load_split, model_name, write_outputs
    from nerft.runs.run_dir import RunDir

    # Bad data, model or labels are NerftErrors that `nerft.cli` reports in one line.
    examples, labels = load_split(data, split, limit)
    refs = [model] + ([compare] if compare else [])
    evals = []
    for ref in refs:
        with Progress(console=err, transient=True) as bar:
            job = bar.add_task(f"predicting with {model_name(ref)}", total=len(examples))
            evals.append(evaluate_model(ref, examples, labels, name=model_name(ref),
                                        batch_size=batch_size, constrained=constrain,
                                        progress=lambda n: bar.advance(job, n),
                                        trust_remote_code=trust_remote_code))
        if evals[-1].unseen_labels:
            err.print(f"[yellow]warning:[/] {model_name(ref)} was not trained on the label(s) "
                      f"{escape(', '.join(evals[-1].unseen_labels))} of this data; their entities "
                      "count as missed", highlight=False)
    if out is None:
        out = RunDir(Path(model)).eval_dir(split) if RunDir.is_run(Path(model)) else Path("eval") / model_name(model)
    if compare:
        evals.reverse()  # report order: the reference first, so deltas read "model minus reference"
    md, page = write_outputs(evals, out, title=f"NER evaluation on {data} ({split})")
    _print_eval(evals, md, page)


def _print_eval(evals, md: Path, page: Path) -> None:
    from nerft.eval import summary_table

    console = Console()
    for ev in evals:
        console.print(summary_table(ev.result))
        rates = ev.result.answers
        extra = (f"; answers parsed {rates.parse_rate:.1%}, hallucinated entities {rates.hallucination_rate:.1%}"
                 if rates else "")
        console.print(f"[bold]{ev.name}[/]: strict micro F1 {ev.result.scores['strict'].micro.f1:.4f} "
                      f"on {ev.result.sentences} sentences in {ev.seconds:.1f}s{extra}", highlight=False)
    console.print(f"report: {page}  ({md})")
