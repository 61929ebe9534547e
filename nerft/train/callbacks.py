"""Trainer callbacks: metrics.jsonl, a rich progress line, SwanLab."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

from nerft.runs.run_dir import RunDir

_KEEP = ("loss", "learning_rate", "grad_norm", "eval_loss", "eval_f1", "eval_precision",
         "eval_recall", "eval_parse_rate", "epoch")


def _clean(logs: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()
            if k in _KEEP or k.startswith("eval_")}


class _StepClock(TrainerCallback):
    """Measures throughput from the step training (re)started at, so resumes read true."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step = samples_per_step
        self._t0 = None
        self._step0 = 0

    def on_train_begin(self, args, state, control, **kw):
        self._t0, self._step0 = time.perf_counter(), state.global_step


class MetricsFile(_StepClock):
    """One line of the run's metrics.jsonl per log event; train and eval lines are told apart
    by their keys."""

    def __init__(self, run: RunDir, samples_per_step: int):
        super().__init__(samples_per_step)
        self.run = run

    def on_log(self, args, state, control, logs=None, **kw):
        record = {"step": state.global_step, **_clean(logs or {})}
        if "loss" in record and self._t0 is not None and state.global_step > self._step0:
            elapsed = time.perf_counter() - self._t0
            record["samples_per_s"] = round(
                (state.global_step - self._step0) * self.samples_per_step / elapsed, 4)
        if set(record) - {"step", "epoch"}:
            self.run.append_metric(record)


class RichProgress(_StepClock):
    """A status line per log step: step, loss, learning rate, samples/s and ETA."""

    def __init__(self, samples_per_step: int, console: Console | None = None):
        super().__init__(samples_per_step)
        self.console = console or Console(stderr=True)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        done = state.global_step - self._step0
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed if done else 0.0
        eta = (state.max_steps - state.global_step) / rate if rate else float("nan")
        if "loss" in logs:
            self.console.print(
                f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"lr {logs.get('learning_rate', 0):.2e}  "
                f"{rate * self.samples_per_step:.2f} samples/s  ETA {eta / 60:.1f} min",
                highlight=False)
        if "eval_f1" in logs:
            self.console.print(
                f"[bold]validation[/] step {state.global_step}: loss {logs.get('eval_loss', 0):.4f}  "
                f"F1 {logs['eval_f1']:.4f}  P {logs['eval_precision']:.4f}  "
                f"R {logs['eval_recall']:.4f}  parse {logs['eval_parse_rate']:.2%}", highlight=False)


class SwanLabTracker(TrainerCallback):
    """SwanLab as in the worked example: config, scalars, and validation predictions as text.

    `local` mode writes under RUN/swanlog and works offline (`swanlab watch RUN/swanlog`);
    `cloud` uses the account from `swanlab login`.
    """

    def __init__(self, mode: str, project: str, experiment: str, config: dict, log_dir: Path,
                 validation=None):
        self.mode = {"cloud": "online"}.get(mode, mode)
        self.project, self.experiment, self.config = project, experiment, config
        self.log_dir = Path(log_dir)
        self.validation = validation
        self.run = None

    def on_train_begin(self, args, state, control, **kw):
        import swanlab

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run = swanlab.init(project=self.project, name=self.experiment, config=self.config,
                                mode=self.mode, log_dir=str(self.log_dir), reinit=True)

    def on_log(self, args, state, control, logs=None, **kw):
        import swanlab

        scalars = {k: v for k, v in _clean(logs or {}).items() if isinstance(v, (int, float))}
        if scalars:
            swanlab.log(scalars, step=state.global_step)
        if "eval_f1" in (logs or {}) and self.validation is not None and self.validation.last_predictions:
            texts = [swanlab.Text(f"{p['text']}\n→ {p['answer']}\ngold: {p['gold']}")
                     for p in self.validation.last_predictions]
            swanlab.log({"val_predictions": texts}, step=state.global_step)

    def on_train_end(self, args, state, control, **kw):
        import swanlab

        if self.run is not None:
            swanlab.finish()
            self.run = None
