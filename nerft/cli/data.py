"""`nerft data ...`: read, clean and split annotated corpora."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from nerft.cli.common import err

app = typer.Typer(help="Read, clean and split annotated corpora.", no_args_is_help=True)


@app.command("prepare")
def data_prepare(
    inputs: list[Path] = typer.Argument(..., help="Annotated corpus files (several allowed; .gz/.bz2/.xz read as is)."),
    out: Path = typer.Option(..., "--out", help="Output folder for train/val/test.jsonl."),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="ccfbdci | cluener | conll | canonical | label-studio | doccano (default: "
        "detect from content)."),
    label_map: Optional[str] = typer.Option(
        None, "--label-map", help="Rename or drop corpus labels: a .json/.yaml file or "
        "'LOC=地点,PER=人名,NOM=-' (- drops the label). Default: every label kept, known codes "
        "get their usual Chinese names."),
    labels_file: Optional[Path] = typer.Option(
        None, "--labels", help="Label guidelines written into the model's instruction: a "
        ".yaml/.json file of {label: {description: ..., examples: [...], not: [...]}}, keyed "
        "by the names the model sees (after --label-map)."),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="train,val,test ratios."),
    seed: int = typer.Option(42, help="Seed of the split shuffle."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad row (exit code 2)."),
    resplit: bool = typer.Option(False, "--resplit", help="Ignore the splits the inputs declare."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out that holds no "
                               "earlier prepare output (its other files are kept)."),
):
    """Clean and split corpora into the canonical span format.

    \b
    Exit codes: 0 done
                1 no rows kept, or most rows rejected (nothing written)
                2 bad arguments or input, or the first bad row under --strict

    \b
    Examples:
      nerft data prepare ../shared/data/ccfbdci/ccfbdci.jsonl --out data/ccfbdci
      nerft data prepare cluener_public/train.json cluener_public/dev.json --out data/cluener
      nerft data prepare msra_train_bio msra_test_bio --out data/msra --label-map LOC=地名
      nerft data prepare weibo.train.bio --out data/weibo --label-map NOM=-
      nerft data prepare cluener_public/train.json --out data/cluener --labels labels.yaml
      nerft data prepare mine.jsonl --out data/mine --split 0.8,0.1,0.1 --strict
      nerft data prepare label-studio-export.json doccano-export.jsonl --out data/corrected
    """
    from rich.markup import escape

    from nerft.data.guidelines import read_guidelines
    from nerft.data.labels import parse_label_map
    from nerft.data.prepare import check_outcome, prepare, write_prepared
    from nerft.data.prepared import PreparedData
    from nerft.data.split import parse_ratios
    from nerft.data.stats import print_summary

    # Bad options, unreadable inputs, a bad row under --strict, an unwritable --out (exit 2) and
    # too few rows kept (PrepareFailed, exit 1) are NerftErrors that `nerft.cli` reports.
    started = time.perf_counter()
    ratios = parse_ratios(split)
    user_map = parse_label_map(label_map)
    guidelines = read_guidelines(labels_file) if labels_file else None  # its fields, before the work
    PreparedData.check_target(out, force)
    prep = prepare(inputs, fmt=fmt, user_label_map=user_map, ratios=ratios,
                   seed=seed, strict=strict, resplit=resplit)
    warnings = check_outcome(prep)
    if guidelines:  # and its labels, once the label set is known
        guidelines = read_guidelines(labels_file, prep.labels)
    stats = write_prepared(prep, out, ratios=ratios, seed=seed, guidelines=guidelines)
    print_summary(stats, str(out))
    for line in warnings:
        err.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    err.print(f"done in {time.perf_counter() - started:.1f}s")

