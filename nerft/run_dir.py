"""The run directory: everything needed to reproduce, resume and audit a training run.

    RUN/config.yaml      the resolved config (file + overrides + defaults)
    RUN/run.json         data file hashes, package versions, git commit, seed, command line,
                         labels, and the overrides given at each resume
    RUN/metrics.jsonl    one line per logged step (train) or evaluation (eval)
    RUN/val_predictions.jsonl  validation answers of a few rows at each evaluation
    RUN/checkpoint-N/    resumable checkpoints, each moved into place whole
    RUN/best/            the adapter (or model) with the best validation F1, and its scores
    RUN/final/           the adapter at the end of training
    RUN/summary.json     written last: the run has finished
    RUN/.lock            held while `nerft train` writes the run

`RunDir` is the one reader of this layout: everyone else asks it (is this a run, its model
section, its labels, its weights) instead of opening the files.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from dataclasses import dataclass

import yaml
from pydantic import ValidationError

from nerft.cache import sha256_file
from nerft.config import ANSWER_FORMATS, Config, ModelConfig, dump_config
from nerft.errors import NerftError


class RunDirError(NerftError):
    """A run directory that cannot be used as asked; one line saying what to do."""


WEIGHT_FOLDERS = ("best", "final")


@dataclass(frozen=True)
class RunDir:
    """A `nerft train` output folder, read through one type."""

    path: Path

    @staticmethod
    def is_run(path: Path) -> bool:
        path = Path(path)
        return (path / "config.yaml").is_file() and (path / "run.json").is_file()

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        path = Path(path).expanduser()
        if not cls.is_run(path):
            raise RunDirError(f"{path}: not a `nerft train` run directory (no config.yaml and run.json)")
        return cls(path)

    # The layout, one name per file.
    config_yaml = property(lambda self: self.path / "config.yaml")
    run_json = property(lambda self: self.path / "run.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    val_predictions = property(lambda self: self.path / "val_predictions.jsonl")
    best = property(lambda self: self.path / "best")
    final = property(lambda self: self.path / "final")
    summary = property(lambda self: self.path / "summary.json")
    lock = property(lambda self: self.path / ".lock")
    best_staging = property(lambda self: self.path / ".best.tmp")
    best_old = property(lambda self: self.path / ".best.old")

    def raw_config(self) -> dict:
        try:
            raw = yaml.safe_load(self.config_yaml.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RunDirError(f"{self.config_yaml}: cannot read ({e})") from e
        if not isinstance(raw, dict):
            raise RunDirError(f"{self.config_yaml}: expected a mapping of sections")
        return raw

    def model_config(self) -> ModelConfig:
        """The run's model section (its data folder need not exist any more)."""
        section = self.raw_config().get("model")
        try:
            return ModelConfig.model_validate(section)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(["model", *(str(p) for p in first["loc"])])
            raise RunDirError(f"{self.config_yaml}: {where}: {first['msg']}") from None

    def info(self) -> dict:
        try:
            data = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.run_json}: cannot read ({e})") from e
        if not isinstance(data, dict):
            raise RunDirError(f"{self.run_json}: expected a JSON object")
        return data

    def labels(self) -> tuple[str, ...]:
        labels = self.info().get("labels")
        if not labels or not all(isinstance(x, str) for x in labels):
            raise RunDirError(f"{self.run_json}: no labels recorded; pass --labels")
        return tuple(labels)

    def answer_format(self) -> str:
        """The answer format the run was trained with (data.answer_format; runs from before
        the setting existed wrote JSON lines)."""
        data = self.raw_config().get("data")
        found = data.get("answer_format", "json") if isinstance(data, dict) else "json"
        if found not in ANSWER_FORMATS:
            raise RunDirError(f"{self.config_yaml}: data.answer_format {found!r} is not one of "
                              f"{', '.join(ANSWER_FORMATS)}")
        return found

    def weights(self) -> Path:
        """The folder to load: best/ (best validation F1), else final/."""
        self.recover_best()
        found = next((self.path / f for f in WEIGHT_FOLDERS if (self.path / f).is_dir()), None)
        if found is None:
            raise RunDirError(f"{self.path}: no best/ or final/ folder yet; wait for the first "
                              "evaluation of `nerft train`, or pass a model folder")
        return found

    def finished(self) -> bool:
        return self.summary.is_file()

    def parent(self) -> "RunDir | None":
        """The run this one was continued from (`init_from`), as recorded in run.json."""
        parent = (self.info().get("init_from") or {}).get("run")
        return RunDir(Path(parent)) if parent else None

    def method_kind(self) -> str:
        return str((self.raw_config().get("method") or {}).get("kind", "lora"))

    def summary_info(self) -> dict | None:
        """summary.json (steps, best F1...) of a finished run; None while it runs."""
        if not self.finished():
            return None
        try:
            data = json.loads(self.summary.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"{self.summary}: cannot read ({e})") from e
        return data if isinstance(data, dict) else None

    def eval_f1(self, split: str = "test") -> float | None:
        """Strict micro F1 that `nerft eval RUN --split SPLIT` wrote (RUN/eval-SPLIT), if any."""
        path = self.path / f"eval-{split}" / "metrics.json"
        if not path.is_file():
            return None
        try:
            return float(json.loads(path.read_text(encoding="utf-8"))["scores"]["strict"]["micro"]["f1"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunDirError(f"{path}: not a metrics.json written by nerft eval ({e})") from e

    def training_rows_file(self) -> tuple[Path, int | None]:
        """The train.jsonl this run trained on and the row limit it applied, checked against
        the hash recorded when it started (replay must draw from what the run really saw)."""
        info = self.info()
        data_dir = info.get("data_dir")
        if not data_dir:
            raise RunDirError(f"{self.run_json}: no data_dir recorded")
        path = Path(data_dir) / "train.jsonl"
        recorded = (info.get("data_sha256") or {}).get("train.jsonl")
        if not path.is_file():
            raise RunDirError(f"{path}: the training data of {self.path} is gone; replay needs "
                              "it (or set data.replay_share=0)")
        if recorded and sha256_file(path) != recorded:
            raise RunDirError(f"{path} changed since {self.path} trained on it; replay needs the "
                              "same rows (or set data.replay_share=0)")
        limit = (self.raw_config().get("data") or {}).get("train_limit")
        return path, limit

    def validation_rows_file(self) -> Path:
        """The val.jsonl this run validated on (for a child whose new data has none)."""
        data_dir = self.info().get("data_dir")
        if not data_dir:
            raise RunDirError(f"{self.run_json}: no data_dir recorded")
        path = Path(data_dir) / "val.jsonl"
        if not path.is_file():
            raise RunDirError(f"{path}: the validation data of {self.path} is gone")
        return path

    def recover_best(self) -> None:
        """Finish a `best/` swap that a kill interrupted (see `replace_folder`)."""
        recover_folder(self.best, self.best_staging, self.best_old)


def replace_folder(target: Path, staging: Path, old: Path) -> None:
    """Move a finished `staging` folder to `target`, keeping the previous one until the new
    one is in place; `recover_folder` completes it after a kill at any point."""
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: Path, staging: Path, old: Path) -> None:
    if not target.exists():
        # Killed between the two renames: the new folder if it was finished (its scores are
        # written last), else the previous one.
        if staging.is_dir() and (staging / "scores.json").is_file():
            os.replace(staging, target)
        elif old.is_dir():
            os.replace(old, target)
    shutil.rmtree(old, ignore_errors=True)

PACKAGES = ("nerft", "torch", "transformers", "peft", "accelerate", "datasets", "swanlab")


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def init_run_dir(config: Config, run_dir: Path, *, resume: bool, labels: list[str],
                 resume_changes: list[str] = (), lineage: dict | None = None,
                 training_rows: dict | None = None) -> None:
    """Write config.yaml and run.json for a new run; on resume keep config.yaml as the run
    started and record in run.json which (harmless) settings this resume changed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data_files = {name: sha256_file(config.data.dir / name)
                  for name in ("train.jsonl", "val.jsonl", "test.jsonl")
                  if (config.data.dir / name).is_file()}
    info = {
        # Absolute: a child run (init_from) started from another folder must find the rows.
        "data_dir": str(Path(config.data.dir).resolve()),
        "data_sha256": data_files,
        "labels": labels,
        "seed": config.training.seed,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
    }
    if training_rows:
        info["training_rows"] = training_rows  # before replay: what data.max_empty_share kept
    if lineage:
        info["init_from"] = lineage  # parent, replay share and rows, labels new in this run
    if resume and (run_dir / "run.json").is_file():
        old = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        info["started_at"] = old.get("started_at", info["started_at"])
        if old.get("data_sha256") != data_files:
            raise RunDirError(f"{run_dir}: the data changed since this run started; "
                             "resume needs the same data (or start a new run)")
        info["resumed"] = old.get("resumed", 0) + 1
        new_values = config.model_dump(mode="json")
        info["resume_overrides"] = old.get("resume_overrides", []) + [
            {key: _dotted(new_values, key) for key in resume_changes}]
        info["command"], info["first_command"] = sys.argv, old.get("first_command", old.get("command"))
    if not (resume and (run_dir / "config.yaml").is_file()):
        (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    write_json_atomic(run_dir / "run.json", info)


def _dotted(values: dict, key: str):
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines after `last_step` so a resumed run never writes a step twice."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def append_metrics(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
