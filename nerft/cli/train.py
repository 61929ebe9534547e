"""`nerft train CONFIG`: one recipe from a config to a run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console

from nerft.cli.common import err, fail


def train(
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
    from nerft.train.workflow import train

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
    # Errors (config, data, model, run state; "already finished" too, with exit code 0) are
    # NerftErrors that `nerft.cli` reports, rank 0 alone under torchrun.
    cfg = load_config(config, overrides)
    if cfg.model.trust_remote_code and not trust_remote_code:
        raise ConfigError(f"{config}: model.trust_remote_code is never taken from a file; pass "
                          "--trust-remote-code on the command line if you trust the model's code")
    if trust_remote_code:
        cfg.model.trust_remote_code = True  # recorded in the run's config.yaml
        err.print(f"trusting and running the Python code that {cfg.model.source} ships "
                  "(--trust-remote-code)", highlight=False)
    summary = train(cfg, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":  # torchrun / accelerate: rank 0 reports for all
        return
    out = Console()
    if summary.new_labels:
        out.print(f"labels new in this run (its parent never saw them): {', '.join(summary.new_labels)}")
    out.print(f"[bold]done[/]: {summary.steps} steps; run directory {summary.run_dir}")
    if summary.best_step is not None:
        before = f"{summary.initial_f1:.4f}" if summary.initial_f1 is not None else "n/a"
        start = "parent" if summary.continued else "untrained"
        out.print(f"validation F1: {start} {before} → best {summary.best_f1:.4f} at step "
                  f"{summary.best_step}" + (" (stopped early)" if summary.stopped_early else ""))
        out.print(f"best adapter: {summary.best_weights}")
        if summary.best_per_label:
            parts = [f"{label} {v.get('f1', 0):.2f} ({int(v.get('support', 0))})"
                     + (" never found" if not v.get("f1") else "")
                     for label, v in sorted(summary.best_per_label.items(),
                                            key=lambda kv: -kv[1].get("support", 0))]
            out.print("validation F1 per label (gold mentions): " + ", ".join(parts),
                      highlight=False, soft_wrap=True)
        if summary.best_step == 0 and summary.continued:
            err.print("[bold yellow]warning:[/] training never beat the parent run on the "
                      "validation set, so best/ holds the parent's weights. Try a lower "
                      "training.lr, fewer epochs, a larger data.replay_share or more new rows.",
                      highlight=False, soft_wrap=True)
        elif summary.best_step == 0:
            err.print("[bold yellow]warning:[/] training never beat the untrained model on the "
                      "validation set, so best/ holds the untrained adapter. Try a lower "
                      "training.lr, more data, or fewer entity-free sentences.",
                      highlight=False, soft_wrap=True)

