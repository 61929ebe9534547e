"""`nerft predict`: entities of one sentence (a table), of stdin, or of a whole file (JSON lines)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def predict(
    run_or_model: str = typer.Argument(
        ..., metavar="RUN_OR_MODEL", help="A `nerft train` run directory, a model folder, or a base "
        "model source (demo, hub id, .gguf) for zero-shot use."),
    text: Optional[str] = typer.Argument(
        None, metavar="TEXT", help="A sentence; '-' reads sentences from stdin, one per line."),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i",
                                              help=".jsonl (a \"text\" field per row) or .txt "
                                                   "(one sentence per line)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Write predictions here as JSON lines "
                                               "{id, text, entities, answer}."),
    fmt: str = typer.Option("jsonl", "--format", help="--output as jsonl | label-studio (tasks "
                            "with the spans as predictions) | doccano (JSONL to import); the "
                            "tools' label config is written beside it."),
    labels: Optional[str] = typer.Option(None, "--labels",
                                         help="Comma-separated label names; default: the run's "
                                              "labels, else 地点,人名,地理实体,组织."),
    constrain: bool = typer.Option(True, "--constrain/--no-constrain",
                                   help="Keep answers in the format, entity texts in the sentence."),
    batch_size: int = typer.Option(16, "--batch-size", min=1,
                                   help="Sentences decoded together; finished ones are "
                                   "replaced from the queue."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch CPU threads (default: torch's choice)."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the Python code a model folder ships (its "
        "auto_map). Never read from a run's files: only this flag allows it."),
):
    """Find the entities in sentences with a trained run or any chat model.

    \b
    Examples:
      nerft predict runs/ccfbdci "国会外有大约200名警察驻守，防止抗议人群闯入国会。"
      echo "张三在北京工作。" | nerft predict runs/ccfbdci -
      nerft predict runs/ccfbdci --input data/ccfbdci/test.jsonl --output preds.jsonl
      nerft predict demo "李白出生于碎叶城。" --labels 人名,地点 --no-constrain
      nerft predict runs/ccfbdci --input new.txt --output tasks.json --format label-studio
    """
    from nerft.cli.common import fail
    from nerft.data.annotation_formats import (TOOL_FORMATS, PreAnnotated, model_version,
                                               write_for_tool)
    from nerft.data.example import write_jsonl
    from nerft.infer.predict import InferenceError, predict as run_predict
    from nerft.infer.predict import read_sentences
    from nerft.models.loader import load_model

    err = Console(stderr=True)
    if (text is None) == (input_file is None):
        fail("give either a sentence (or '-' for stdin) or --input FILE, not both or neither")
    if fmt != "jsonl" and fmt not in TOOL_FORMATS:
        fail(f"--format {fmt}: choose jsonl, {', '.join(TOOL_FORMATS)}")
    if fmt != "jsonl" and output is None:
        fail(f"--format {fmt} writes a file: give --output")
    label_set = tuple(x.strip() for x in labels.split(",") if x.strip()) if labels else None
    if labels is not None and not label_set:
        fail("--labels is empty; give names such as 地点,人名,地理实体,组织")
    try:
        if input_file is not None:
            rows = list(read_sentences(input_file))
        elif text == "-":
            rows = [(f"stdin:{n}", line.rstrip("\r\n"))
                    for n, line in enumerate(sys.stdin, 1) if line.strip()]
        else:
            rows = [("argument", text)]
        if not rows:
            raise InferenceError("no sentence to read")
        blank = next((i for i, t in rows if not t.strip()), None)
        if blank is not None:
            raise InferenceError(f"{blank}: the sentence is empty; give some text")
        if output is not None and output.is_dir():
            raise InferenceError(f"--output {output} is a folder; give a file name such as "
                                 f"{output / 'predictions.jsonl'}")
        if trust_remote_code:
            err.print(f"trusting and running the Python code that {run_or_model} ships "
                      "(--trust-remote-code)", highlight=False)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one to watch
        if threads:
            import torch

            torch.set_num_threads(threads)
        loaded, tokenizer, task = load_model(run_or_model, labels=label_set,
                                             trust_remote_code=trust_remote_code)
    except OSError as e:  # an unreadable --input file (a model that will not load: NerftError)
        fail(f"{run_or_model}: {e}".splitlines()[0])

    out = Console()
    if input_file is None:
        preds = run_predict(loaded, tokenizer, task, rows, batch_size=batch_size, constrained=constrain)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err) as bar:
            job = bar.add_task("predicting", total=len(rows))
            preds = run_predict(loaded, tokenizer, task, rows, batch_size=batch_size,
                                constrained=constrain, progress=lambda n: bar.advance(job, n))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        config = None
        if fmt == "jsonl":
            write_jsonl(output, [p.to_dict() for p in preds])
        else:  # no score: predict has no margin to give (`nerft select` scores its tasks)
            config = write_for_tool(output, [PreAnnotated(p.id, p.text, p.entities) for p in preds],
                                    fmt, task.labels, model_version(run_or_model))
        found = sum(len(p.entities) for p in preds)
        err.print(f"{len(preds):,} sentences, {found:,} entities → {output}"
                  + (f"; label config → {config}" if config else ""), highlight=False)
    else:
        _print(out, preds)


def _print(console: Console, preds) -> None:
    several = len(preds) > 1
    if not several:
        console.print(preds[0].text, highlight=False)
        if not preds[0].entities:
            console.print("no entity found")
            return
    table = Table()
    if several:
        table.add_column("sentence")
    for name, justify in (("start", "right"), ("end", "right"), ("label", "left"), ("text", "left")):
        table.add_column(name, justify=justify)
    for p in preds:
        if not p.entities and several:
            table.add_row(p.id, "", "", "", "(no entity)")
        for e in p.entities:
            table.add_row(*([p.id] if several else []), str(e.start), str(e.end), e.label, e.text)
    console.print(table)
