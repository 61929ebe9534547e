"""How long a run trains and at what learning rate: optimizer steps from the data and the
batch, and the measured rule behind `training.lr: auto`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from nerft.config import ADAPTER_KINDS, Config
from nerft.train import ranks

# Measured (BENCHMARKS.md, "Learning curve"): the demo recipe's LoRA lr 1e-3 learns well over
# 23-157 optimizer steps, but over 357 steps (2,560 ccfbdci sentences) validation F1 fell to 0,
# while at lr 2e-4 every 2,560-sentence run measured beat its corpus's 640-sentence one (test F1
# ccfbdci 0.719 against 0.515, CLUENER 0.603 against 0.516). `training.lr: auto` picks between them;
# a number above HIGH_ADAPTER_LR for a long run gets a warning before it starts.
AUTO_LR_SHORT_RUN = 1e-3
AUTO_LR_LONG_RUN = 2e-4
LONG_RUN_STEPS = 200
HIGH_ADAPTER_LR = 5e-4


def resolve_lr(lr: float | str, total_steps: int) -> float:
    """The learning rate to train at: `lr` itself, or for `auto` the measured one for this length."""
    if lr != "auto":
        return float(lr)
    return AUTO_LR_SHORT_RUN if total_steps <= LONG_RUN_STEPS else AUTO_LR_LONG_RUN


def long_run_lr_warning(kind: str, lr: float, total_steps: int) -> str | None:
    """A warning when an adapter is to train at a high learning rate for many steps, else None."""
    if kind not in ADAPTER_KINDS or lr <= HIGH_ADAPTER_LR or total_steps <= LONG_RUN_STEPS:
        return None
    return (f"training.lr={lr:g} over {total_steps} optimizer steps: at lr 1e-3 the demo recipe "
            "collapsed over 357 steps (2,560 ccfbdci sentences: validation F1 0.45, then 0) where "
            "lr 2e-4 held (BENCHMARKS.md, learning curve); consider training.lr=2e-4 or "
            "training.lr=auto for a run this long, and watch the validation F1")



@dataclass
class Schedule:
    samples_per_step: int  # the effective batch: every process takes batch_size rows per micro-step
    total_steps: int
    lr: float


def plan_schedule(config: Config, train_rows: int, resume: bool, console: Console) -> Schedule:
    """Optimizer steps and learning rate; a new run says what `lr: auto` chose and warns of a
    high adapter lr over a long run (a resumed run said so when it started)."""
    t = config.training
    samples_per_step = t.batch_size * t.grad_accum * ranks.world_size()
    steps_per_epoch = math.ceil(train_rows / samples_per_step)
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    lr = resolve_lr(t.lr, total_steps)
    if not resume:
        if t.lr == "auto":
            console.print(f"training.lr auto: {lr:g} for {total_steps} optimizer steps "
                          f"({AUTO_LR_SHORT_RUN:g} up to {LONG_RUN_STEPS}, {AUTO_LR_LONG_RUN:g} beyond)",
                          highlight=False)
        lr_warning = long_run_lr_warning(config.method.kind, lr, total_steps)
        if lr_warning:
            console.print(f"[yellow]warning:[/] {escape(lr_warning)}", highlight=False, soft_wrap=True)
    return Schedule(samples_per_step, total_steps, lr)
