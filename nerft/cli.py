"""The `nerft` command: one Typer app; each verb is a thin call into a stage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nerft.cli_common import err, fail
from nerft.errors import NerftError

app = typer.Typer(
    help="Fine-tune chat LLMs into Chinese named-entity recognisers: data → train → eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, clean and split annotated corpora.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    inputs: list[Path] = typer.Argument(..., help="Annotated corpus files (several allowed; .gz/.bz2/.xz read as is)."),
    out: Path = typer.Option(..., "--out", help="Output folder for train/val/test.jsonl."),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="ccfbdci | cluener | conll | canonical (default: detect from content)."),
    label_map: Optional[str] = typer.Option(
        None, "--label-map", help="Rename or drop corpus labels: a .json/.yaml file or "
        "'LOC=地点,PER=人名,NOM=-' (- drops the label). Default: every label kept, known codes "
        "get their usual Chinese names."),
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
      nerft data prepare mine.jsonl --out data/mine --split 0.8,0.1,0.1 --strict
    """
    from rich.markup import escape

    from nerft.data.labels import LabelMapError, parse_label_map
    from nerft.data.output import check_out_dir
    from nerft.data.prepare import PrepareFailed, check_outcome, prepare, write_prepared
    from nerft.data.readers import DataError
    from nerft.data.split import parse_ratios
    from nerft.data.stats import print_summary

    started = time.perf_counter()
    try:
        ratios = parse_ratios(split)
        user_map = parse_label_map(label_map)
        check_out_dir(out, force)
        prep = prepare(inputs, fmt=fmt, user_label_map=user_map, ratios=ratios,
                       seed=seed, strict=strict, resplit=resplit)
    except (DataError, LabelMapError, ValueError, OSError) as e:
        fail(str(e))
    try:
        warnings = check_outcome(prep)
    except PrepareFailed as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    try:
        stats = write_prepared(prep, out, ratios=ratios, seed=seed)
    except OSError as e:
        fail(f"cannot write {out}: {e}")
    print_summary(stats, str(out))
    for line in warnings:
        err.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    err.print(f"done in {time.perf_counter() - started:.1f}s")


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML config (see configs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in training.output_dir "
                                "from its newest complete checkpoint (from step 0 if it has none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove what a previous run wrote in "
                                   "training.output_dir and start afresh."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the Python code the model ships (its auto_map). "
        "Never read from a config file: only this flag allows it."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train with N processes on this machine "
                              "(runs torchrun for you; one per GPU, or N CPU processes)."),
):
    """Fine-tune a model on prepared data; KEY=VALUE arguments override the config.

    \b
    Examples:
      nerft train configs/demo-cpu.yaml
      nerft train configs/demo-cpu.yaml training.lr=2e-4 training.output_dir=runs/lr2e-4
      nerft train configs/qwen2-1.5b-ccfbdci.yaml method.kind=dora method.top_k_layers=8
      nerft train configs/demo-cpu.yaml --resume        # after a crash or kill
      nerft train configs/demo-cpu.yaml init_from=runs/demo-cpu data.dir=data/new \\
            training.output_dir=runs/demo-cpu-2          # continue on new data, 30% replay
      nerft train configs/demo-cpu.yaml --nproc 2       # = torchrun --nproc_per_node 2 -m nerft train ...
    """
    from nerft.config import ConfigError, load_config
    from nerft.model import ModelSourceError
    from nerft.run_dir import RunDirError
    from nerft.train.continual import ContinueError
    from nerft.train.resume import AlreadyFinished, RunStateError
    from nerft.train.workflow import TrainError, train

    overrides = list(ctx.args)
    for item in overrides:
        if "=" not in item:
            fail(f"unexpected argument {item!r}; overrides look like training.lr=2e-4")
    if resume and overwrite:
        fail("--resume continues a run and --overwrite starts it afresh: pass one of them")
    if nproc > 1:
        if os.environ.get("WORLD_SIZE"):
            fail("--nproc starts its own processes: leave it out under torchrun or accelerate launch")
        flags = [f for f, on in (("--resume", resume), ("--overwrite", overwrite),
                                 ("--trust-remote-code", trust_remote_code)) if on]
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={nproc}", "-m", "nerft", "train", str(config), *flags, *overrides]
        raise typer.Exit(subprocess.run(launch).returncode)
    not_rank0 = os.environ.get("RANK", "0") != "0"  # torchrun / accelerate: rank 0 reports for all
    try:
        cfg = load_config(config, overrides)
        if cfg.model.trust_remote_code and not trust_remote_code:
            raise ConfigError(f"{config}: model.trust_remote_code is never taken from a file; pass "
                              "--trust-remote-code on the command line if you trust the model's code")
        if trust_remote_code:
            cfg.model.trust_remote_code = True  # recorded in the run's config.yaml
            err.print(f"trusting and running the Python code that {cfg.model.source} ships "
                      "(--trust-remote-code)", highlight=False)
        summary = train(cfg, resume=resume, overwrite=overwrite)
    except AlreadyFinished as e:
        if not_rank0:
            return
        Console().print(str(e), highlight=False, soft_wrap=True)
        return
    except (ConfigError, TrainError, RunStateError, RunDirError, ModelSourceError, ContinueError) as e:
        if not_rank0:
            raise typer.Exit(2) from None
        fail(str(e))
    if not_rank0:
        return
    out = Console()
    if summary.new_labels:
        out.print(f"labels new in this run (its parent never saw them): {', '.join(summary.new_labels)}")
    out.print(f"[bold]done[/]: {summary.steps} steps; run directory {summary.run_dir}")
    if summary.best_step is not None:
        before = f"{summary.initial_f1:.4f}" if summary.initial_f1 is not None else "n/a"
        out.print(f"validation F1: untrained {before} → best {summary.best_f1:.4f} at step "
                  f"{summary.best_step}" + (" (stopped early)" if summary.stopped_early else ""))
        out.print(f"best adapter: {summary.run_dir / 'best'}")
        if summary.best_per_label:
            parts = [f"{label} {v.get('f1', 0):.2f} ({int(v.get('support', 0))})"
                     + (" never found" if not v.get("f1") else "")
                     for label, v in sorted(summary.best_per_label.items(),
                                            key=lambda kv: -kv[1].get("support", 0))]
            out.print("validation F1 per label (gold mentions): " + ", ".join(parts),
                      highlight=False, soft_wrap=True)
        if summary.best_step == 0:
            err.print("[bold yellow]warning:[/] training never beat the untrained model on the "
                      "validation set, so best/ holds the untrained adapter. Try a lower "
                      "training.lr, more data, or fewer entity-free sentences.",
                      highlight=False, soft_wrap=True)


@app.command("eval")
def eval_cmd(
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

    from nerft.eval.workflow import EvalInputError, evaluate_model, load_split, model_name, write_outputs
    from nerft.infer.predict import InferenceError
    from nerft.model import ModelSourceError
    from nerft.run_dir import RunDir

    try:
        examples, labels = load_split(data, split, limit)
    except EvalInputError as e:
        fail(str(e))
    refs = [model] + ([compare] if compare else [])
    evals = []
    for ref in refs:
        try:
            with Progress(console=err, transient=True) as bar:
                job = bar.add_task(f"predicting with {model_name(ref)}", total=len(examples))
                evals.append(evaluate_model(ref, examples, labels, name=model_name(ref),
                                            batch_size=batch_size, constrained=constrain,
                                            progress=lambda n: bar.advance(job, n),
                                            trust_remote_code=trust_remote_code))
        except (EvalInputError, ModelSourceError, InferenceError, ValueError) as e:
            fail(str(e))
        if evals[-1].unseen_labels:
            err.print(f"[yellow]warning:[/] {model_name(ref)} was not trained on the label(s) "
                      f"{escape(', '.join(evals[-1].unseen_labels))} of this data; their entities "
                      "count as missed", highlight=False)
    if out is None:
        out = Path(model) / f"eval-{split}" if RunDir.is_run(Path(model)) else Path("eval") / model_name(model)
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


@app.command("demo")
def demo_cmd(
    data: Optional[list[Path]] = typer.Option(
        None, "--data", help="Your annotated corpus instead of the demo's MSRA slice."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Where data, run and report go (default: runs/demo-DATE-TIME)."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Training recipe (default: the repository's configs/demo-cpu.yaml)."),
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
    from nerft.cache import FetchError
    from nerft.config import ConfigError
    from nerft.data.readers import DataError
    from nerft.demo import DEMO_CONFIG, run_demo
    from nerft.train.workflow import TrainError

    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if (out / "run").exists():
        fail(f"{out} already holds a demo run; remove it or pass --out")
    config = config or DEMO_CONFIG
    if not config.is_file():
        fail(f"{config}: demo recipe not found; run nerft demo from a clone of the repository or "
             "pass --config")
    try:
        result = run_demo(out, data=data, config_path=config, train_rows=train_rows,
                          test_rows=test_rows, epochs=epochs)
    except (FetchError, DataError, TrainError, ConfigError) as e:
        fail(str(e))
    console = Console()
    console.print(f"[bold]strict micro F1 on {result['test_sentences']} test sentences "
                  f"({result['test_entities']} entities): untrained {result['f1_before']:.4f} → "
                  f"fine-tuned {result['f1_after']:.4f} ({result['f1_after'] - result['f1_before']:+.4f})[/]")
    console.print(f"report:  {result['report']}\nadapter: {result['adapter']}\n"
                  f"took {result['minutes']:.1f} min; try: nerft predict {out / 'run'} \"张三在北京工作。\"",
                  highlight=False)


def main() -> None:
    from nerft import compare_cli, export_cli, infer_cli, model_cli, runs_cli, select_cli, serve_cli
    from nerft.versions import too_old

    for line in too_old():
        fail(line)

    app.command("predict")(infer_cli.predict)
    app.command("export")(export_cli.export)
    app.command("serve")(serve_cli.serve)
    app.command("compare")(compare_cli.compare)
    app.command("runs")(runs_cli.runs)
    app.command("select")(select_cli.select)
    app.add_typer(model_cli.app, name="model",
                  help="Fetch and convert models (e.g. the offline demo model).")
    try:
        app()
    except NerftError as e:  # anything a user can fix that a command did not catch itself
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
