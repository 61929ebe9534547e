"""The `nerft` command: one Typer app; each verb is a thin call into a stage."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="Fine-tune chat LLMs into Chinese named-entity recognisers: data → train → eval → serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, clean and split annotated corpora.", no_args_is_help=True)
app.add_typer(data_app, name="data")

err = Console(stderr=True)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@data_app.command("prepare")
def data_prepare(
    inputs: list[Path] = typer.Argument(..., help="Annotated corpus files (several allowed)."),
    out: Path = typer.Option(..., "--out", help="Output folder for train/val/test.jsonl."),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="ccfbdci | cluener | conll | canonical (default: detect from content)."),
    label_map: Optional[str] = typer.Option(
        None, "--label-map", help="Corpus label → model label: a .json/.yaml file or 'LOC=地点,PER=人名'."),
    split: str = typer.Option("0.7,0.15,0.15", "--split", help="train,val,test ratios."),
    seed: int = typer.Option(42, help="Seed of the split shuffle."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad row (exit code 2)."),
    resplit: bool = typer.Option(False, "--resplit", help="Ignore the splits the inputs declare."),
):
    """Clean and split corpora into the canonical span format.

    \b
    Examples:
      nerft data prepare ../shared/data/ccfbdci/ccfbdci.jsonl --out data/ccfbdci
      nerft data prepare cluener_public/train.json cluener_public/dev.json --out data/cluener
      nerft data prepare msra_train_bio msra_test_bio --out data/msra --label-map LOC=地名
      nerft data prepare mine.jsonl --out data/mine --split 0.8,0.1,0.1 --strict
    """
    from nerft.data.labels import LabelMapError, parse_label_map
    from nerft.data.prepare import prepare, write_prepared
    from nerft.data.readers import DataError
    from nerft.data.split import parse_ratios
    from nerft.data.stats import print_summary

    started = time.perf_counter()
    try:
        ratios = parse_ratios(split)
        prep = prepare(inputs, fmt=fmt, user_label_map=parse_label_map(label_map), ratios=ratios,
                       seed=seed, strict=strict, resplit=resplit)
    except (DataError, LabelMapError, ValueError) as e:
        fail(str(e))
    stats = write_prepared(prep, out, ratios=ratios, seed=seed)
    print_summary(stats, str(out))
    err.print(f"done in {time.perf_counter() - started:.1f}s")


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in training.output_dir."),
):
    """Fine-tune a model on prepared data; KEY=VALUE arguments override the config.

    \b
    Examples:
      nerft train configs/demo-cpu.yaml
      nerft train configs/demo-cpu.yaml training.lr=2e-4 training.output_dir=runs/lr2e-4
      nerft train configs/qwen2-1.5b-ccfbdci.yaml method.kind=dora method.top_k_layers=8
      nerft train configs/demo-cpu.yaml --resume        # after a crash or kill
    """
    from nerft.config import ConfigError, load_config
    from nerft.train.workflow import TrainError, train

    overrides = list(ctx.args)
    for item in overrides:
        if "=" not in item:
            fail(f"unexpected argument {item!r}; overrides look like training.lr=2e-4")
    try:
        cfg = load_config(config, overrides)
        summary = train(cfg, resume=resume)
    except (ConfigError, TrainError) as e:
        fail(str(e))
    out = Console()
    out.print(f"[bold]done[/]: {summary.steps} steps; run directory {summary.run_dir}")
    if summary.best_step is not None:
        before = f"{summary.initial_f1:.4f}" if summary.initial_f1 is not None else "n/a"
        out.print(f"validation F1: untrained {before} → best {summary.best_f1:.4f} at step "
                  f"{summary.best_step}" + (" (stopped early)" if summary.stopped_early else ""))
        out.print(f"best adapter: {summary.run_dir / 'best'}")


def _mount_optional_apps() -> None:
    from nerft import model_cli

    app.add_typer(model_cli.app, name="model", help="Fetch and convert models (e.g. the offline demo model).")


def main() -> None:
    try:
        _mount_optional_apps()
    except ImportError:
        pass
    app()


if __name__ == "__main__":
    main()
