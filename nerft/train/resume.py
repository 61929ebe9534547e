"""Starting, resuming and restarting a run directory safely.

Every interruption has a way on: killed before the first checkpoint → `--resume` starts again
from step 0; killed later → `--resume` continues from the newest complete checkpoint (a damaged
one is named and skipped); finished → `--resume` says so and changes nothing; anything else →
`--overwrite` starts afresh. One `nerft train` at a time writes a run (a lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nerft.config import Config
from nerft.run_dir import RunDir
from nerft.errors import NerftError

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


class AlreadyFinished(Exception):
    """`--resume` on a run that has finished: nothing to do."""


@contextmanager
def run_lock(run: RunDir) -> Iterator[None]:
    """Hold the run's lock while training writes it; a second `nerft train` is refused."""
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunStateError(f"{run.path}: another `nerft train` ({holder}) is writing this run; "
                                "wait for it or choose another training.output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    found = [p for p in Path(run_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def checkpoint_problems(folder: Path) -> list[str]:
    """What makes a checkpoint unusable for an exact resume ([] when none)."""
    problems = [f"no {name}" for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in RNG_FILES):
        problems.append("no rng_state.pth")
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        problems.append("no weights (adapter_model.safetensors or model.safetensors)")
    elif weights.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as e:  # safetensors raises its own error types for damaged files
            problems.append(f"{weights.name} is damaged ({type(e).__name__})")
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


def usable_checkpoint(run_dir: Path, warn) -> Path | None:
    """The newest checkpoint that can resume exactly. Damaged newer ones are named and renamed
    to damaged-checkpoint-N (kept for inspection, out of the Trainer's way)."""
    for folder in checkpoints(run_dir):
        problems = checkpoint_problems(folder)
        if not problems:
            return folder
        aside = folder.with_name(f"damaged-{folder.name}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        warn(f"{folder} cannot be resumed from ({'; '.join(problems)}); moved to {aside.name}, "
             "trying an older one")
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


# What `nerft train` writes into a run directory; `--overwrite` removes these and nothing else,
# so an output_dir pointed at a folder with other files never loses them.
RUN_OUTPUTS = ("config.yaml", "run.json", "metrics.jsonl", "val_predictions.jsonl", "best", "final",
               "summary.json", ".best.tmp", ".best.old", ".staging", "swanlog", "tensorboard",
               "checkpoint-*", "damaged-checkpoint-*")


def run_outputs(run: RunDir) -> list[Path]:
    if not run.path.is_dir():
        return []
    return sorted({p for pattern in RUN_OUTPUTS for p in run.path.glob(pattern)})


def clear_run(run: RunDir) -> None:
    """Remove what a previous run wrote."""
    for entry in run_outputs(run):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
