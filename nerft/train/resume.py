"""Starting, resuming and restarting a run directory safely.

Every interruption has a way on: killed before the first checkpoint → `--resume` starts again
from step 0; killed later → `--resume` continues from the newest complete checkpoint (a damaged
one is named, kept as damaged-checkpoint-N and skipped); no checkpoint usable but trained
weights in best/ or final/ → `--resume` keeps them and says how to continue from them;
finished → `--resume` says so and changes nothing; anything else → `--overwrite` starts afresh.
One `nerft train` at a time writes a run (`RunDir.writing`, a lock).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable

from nerft.config import Config
from nerft.errors import NerftError
from nerft.runs.run_dir import RunDir

# What the Trainer needs to continue exactly where it stopped.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
# One process writes rng_state.pth; N processes write rng_state_0.pth ... rng_state_{N-1}.pth.
RNG_FILES = ("rng_state.pth", "rng_state_0.pth")
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
# Settings a resume may change: they do not change what is computed.
RESUME_MAY_CHANGE = ("training.num_threads", "eval.batch_size", "tracking.swanlab",
                     "tracking.tensorboard")


class RunStateError(NerftError):
    """The run directory is not in a state the command can work from; says what to do."""


class AlreadyFinished(NerftError):
    """`--resume` on a run that has finished: nothing to do (printed as a notice, exit 0)."""

    exit_code = 0


def weights_problems(folder: Path) -> list[str]:
    """What makes a checkpoint's weights unloadable ([] when they are whole)."""
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        return ["no weights (adapter_model.safetensors or model.safetensors)"]
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as e:  # safetensors raises its own error types for damaged files
            return [f"{weights.name} is damaged ({type(e).__name__})"]
    return []


def checkpoint_problems(folder: Path) -> list[str]:
    """What makes a checkpoint unusable for an exact resume ([] when none)."""
    problems = [f"no {name}" for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in RNG_FILES):
        problems.append("no rng_state.pth")
    problems += weights_problems(folder)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        path = folder / name
        if path.is_file():
            try:  # torch saves a zip archive; a truncated one has no central directory
                with zipfile.ZipFile(path) as archive:
                    archive.namelist()
            except (zipfile.BadZipFile, OSError):
                problems.append(f"{name} is damaged")
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            problems.append("trainer_state.json is damaged")
    return problems


def usable_checkpoint(run: RunDir, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that can resume exactly. Damaged newer ones are named and moved
    to damaged-checkpoint-N (kept for inspection, out of the Trainer's way)."""
    for folder in run.checkpoints():
        problems = checkpoint_problems(folder)
        if not problems:
            return folder
        whole = "" if weights_problems(folder) else "; its weights are whole"
        aside = run.set_aside(folder)
        warn(f"{folder} cannot be resumed from ({'; '.join(problems)}{whole}); kept as "
             f"{aside.name}, trying an older one")
    return None


def trained_weights(run: RunDir) -> Path | None:
    """best/ or final/ when they hold weights trained past step 0 (step 0's weights are the
    starting model: a restart makes them again), else None."""
    if run.final.is_dir():
        return run.final
    if run.best.is_dir() and run.best_scores().get("step", 1) != 0:
        return run.best
    return None


def resume_checkpoint(run: RunDir, warn: Callable[[str], None],
                      say: Callable[[str], None]) -> Path | None:
    """The checkpoint `--resume` continues from, or None after clearing the run to start it
    again from step 0. Never removes what a message says is kept (damaged-checkpoint-N), and
    never restarts over trained weights: then it stops and says how to continue from them."""
    run.recover_best()
    last = usable_checkpoint(run, warn)
    if last is not None:
        return last
    kept = tuple(run.damaged_checkpoints())
    weights = trained_weights(run)
    if weights is not None:
        scores = run.scores_of(weights)
        scored = (f" (validation F1 {scores['eval_f1']:.4f} at step {scores.get('step')})"
                  if isinstance(scores.get("eval_f1"), (int, float)) else "")
        raise RunStateError(
            f"{run.path}: no checkpoint can resume exactly, but {weights.name}/ holds trained "
            f"weights{scored}; nothing was removed. To continue training from them, start a new "
            f"run from this one: init_from={run.path} training.output_dir=NEW_FOLDER; to train "
            "this run again from step 0: --overwrite (removes them)")
    aside = f" ({', '.join(p.name for p in kept)} kept)" if kept else ""
    say(f"{run.path}: the run stopped before a usable checkpoint was written; starting it again "
        f"from step 0{aside}")
    run.clear(keep=kept)
    return None


def changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{name}.")
        elif a != b:
            out.append(name)
    return out


def check_resume_config(run: RunDir, config: Config) -> list[str]:
    """The settings this resume changes that it may change; refuses any other change."""
    saved = run.raw_config()
    changed = changed_settings(saved, config.model_dump(mode="json"))
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        raise RunStateError(
            f"{run.path}: --resume must train the run as it started, but {', '.join(refused)} "
            f"differ from {run.config_yaml}; drop those overrides, or start a new run "
            "(another training.output_dir, or --overwrite)")
    return changed
