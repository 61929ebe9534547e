"""`nerft select RUN --input unlabeled.txt`: the sentences most worth annotating next."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nerft.cli.common import err, fail


def select(
    model: str = typer.Argument(..., help="Run directory (or model folder / source)."),
    input: Path = typer.Option(..., "--input", help="Unlabeled sentences: a text file (one per "
                               "line) or .jsonl with a \"text\" field."),
    out: Path = typer.Option(..., "--out", help="Where the selected rows go."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (canonical rows) | label-studio (tasks "
                            "with the guesses as predictions) | doccano (JSONL to import); the "
                            "tools' label config is written beside --out."),
    top: int = typer.Option(200, "--top", min=1, help="How many sentences to select."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels, for a "
                                         "model that is not a run."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run the Python code a model folder ships."),
):
    """Rank sentences by the model's uncertainty; write the top ones with its guesses.

    The score: each sentence is answered with constrained decoding; at every point where the
    answer format left a choice (entity or none, span ends, label, one more entity) the margin
    is log p(chosen token) - log p(best other allowed token). A sentence's margin is its
    smallest; the lowest margins are selected. Each output row is canonical ("id", "text",
    "entities" = the model's guesses, to correct) plus "selection" {rank, uncertainty, margin,
    decisions, closest_call_after}.

    With --format label-studio each task carries the guesses as a prediction (model_version =
    the run's folder name, score = the chosen token's share against its best rival at the
    closest call, 0.5 a coin toss), and OUT.label-config.xml is the labeling config to paste
    into the project. With --format doccano, OUT.labels.json is the file for doccano's Import
    Labels. Bring the export back with `nerft data prepare`.

    \b
    Examples:
      nerft select runs/demo-cpu --input unlabeled.txt --top 200 --out to_annotate.jsonl
      nerft select runs/demo-cpu --input unlabeled.txt --format label-studio --out tasks.json
    """
    from rich.progress import Progress

    from nerft.data.annotation_formats import TOOL_FORMATS, model_version, write_for_tool
    from nerft.data.example import write_jsonl
    from nerft.infer.predict import InferenceError, read_sentences
    from nerft.infer.select import rank_uncertain
    from nerft.models.loader import load_model

    if fmt != "jsonl" and fmt not in TOOL_FORMATS:
        fail(f"--format {fmt}: choose jsonl, {', '.join(TOOL_FORMATS)}")
    if out.exists() and out.resolve() == input.resolve():
        fail(f"--out {out} is the --input file")
    # Unreadable input and unloadable models are NerftErrors that `nerft.cli` reports.
    rows = list(read_sentences(input))
    if not rows:
        raise InferenceError(f"{input}: no sentences")
    model_, tokenizer, task = load_model(
        model, labels=tuple(x.strip() for x in labels.split(",")) if labels else None,
        trust_remote_code=trust_remote_code)
    with Progress(console=err, transient=True) as bar:
        job = bar.add_task("scoring", total=len(rows))
        scored = rank_uncertain(model_, tokenizer, task, rows, batch_size=batch_size,
                                progress=lambda n: bar.advance(job, n))
    chosen = scored[:top]
    out.parent.mkdir(parents=True, exist_ok=True)
    config = None
    if fmt == "jsonl":
        write_jsonl(out, (s.to_row(rank) for rank, s in enumerate(chosen, 1)))
    else:
        config = write_for_tool(out, [s.pre_annotated(rank) for rank, s in enumerate(chosen, 1)],
                                fmt, task.labels, model_version(model))
    Console().print(f"selected {len(chosen):,} of {len(rows):,} sentences (most uncertain first) "
                    f"→ {out}; margins {chosen[0].margin:.3f} … {chosen[-1].margin:.3f}"
                    + (f"; label config → {config}" if config else ""),
                    highlight=False, soft_wrap=True)

