"""The run directory: everything needed to reproduce, resume and audit a training run.

    RUN/config.yaml      the resolved config (file + overrides + defaults)
    RUN/run.json         data file hashes, package versions, git commit, seed, command line,
                         labels, and the overrides given at each resume
    RUN/metrics.jsonl    one line per logged step (train) or evaluation (eval)
    RUN/val_predictions.jsonl  validation answers of a few rows at each evaluation
    RUN/checkpoint-N/    resumable checkpoints, each moved into place whole
    RUN/damaged-checkpoint-N/  a checkpoint `--resume` could not use, kept for inspection
    RUN/best/            the adapter (or model) with the best validation F1, and its scores
    RUN/final/           the adapter at the end of training
    RUN/summary.json     written last: the run has finished
    RUN/eval-SPLIT/      what `nerft eval RUN --split SPLIT` wrote (its metrics.json)
    RUN/.lock            held while `nerft train` writes the run

`RunDir` is the one reader and writer of this layout: everyone else asks it (is this a run,
its task, its weights, its checkpoints, its outputs) instead of spelling a file name. Every
replacement goes through `nerft.atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import yaml
from filelock import FileLock, Timeout
from pydantic import ValidationError

from nerft import atomic
from nerft import versions as provenance
from nerft.config import ANSWER_FORMATS, Config, HeadName, ModelConfig, dump_config
from nerft.data.prepared import PreparedData
from nerft.errors import NerftError
from nerft.task.prompt import Task, guidelines_of_record


class RunDirError(NerftError):
    """A run directory that cannot be used as asked; one line saying what to do."""


class RunLocked(RunDirError):
    """Another `nerft train` holds the run's lock."""


WEIGHT_FOLDERS = ("best", "final")
_SCORES = "scores.json"  # in best/: the validation scores; written last, so it marks best/ whole
# Files in a weights folder that are the run's records, not part of the weights.
WEIGHT_RECORDS = (_SCORES,)
_CHECKPOINT = "checkpoint-"
_DAMAGED = "damaged-"
_EVAL = "eval-"
_EVAL_METRICS = "metrics.json"
# What `nerft train` (and `nerft eval RUN`) write into a run directory; `--overwrite` removes
# these and nothing else, so an output_dir pointed at a folder with other files never loses them.
_OUTPUTS = ("config.yaml", "run.json", "metrics.jsonl", "val_predictions.jsonl", "summary.json",
            "best", "final", ".best.tmp", ".best.old", ".final.tmp", ".final.old", ".staging",
            "swanlog", "tensorboard", f"{_CHECKPOINT}*", f"{_DAMAGED}{_CHECKPOINT}*", f"{_EVAL}*")
# A reader that finds best/ missing while a trainer holds the lock is between the two renames
# of a swap (microseconds); it waits this long for best/ to come back before looking further.
_SWAP_WAIT_S = 1.0
# A trainer starting while a reader briefly holds the lock (to finish an interrupted swap)
# waits this long before saying another `nerft train` is writing the run.
_WRITER_WAIT_S = 2.0


def _json_line(record: dict) -> str:
    """One JSON line that splits on "\\n" alone and on every other line break too: U+2028,
    U+2029 and U+0085 (valid raw in JSON) are written escaped, as ensure_ascii would."""
    text = json.dumps(record, ensure_ascii=False)
    for ch in ("\u2028", "\u2029", "\u0085"):
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file written by `append_line`. Lines split on "\\n" only;
    a line that does not parse is one a crash tore while writing it, and is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:  # a torn line (or the empty piece after the last "\n")
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass(frozen=True)
class RunDir:
    """A `nerft train` output folder, read and written through one type."""

    path: Path

    @staticmethod
    def is_run(path: Path) -> bool:
        run = RunDir(Path(path))
        return run.config_yaml.is_file() and run.run_json.is_file()

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
    final_staging = property(lambda self: self.path / ".final.tmp")
    final_old = property(lambda self: self.path / ".final.old")
    checkpoint_staging = property(lambda self: self.path / ".staging")
    swanlog = property(lambda self: self.path / "swanlog")
    tensorboard = property(lambda self: self.path / "tensorboard")

    # -- what the run is -------------------------------------------------------------------
    def raw_config(self) -> dict:
        try:
            raw = yaml.safe_load(self.config_yaml.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
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
        except (OSError, ValueError) as e:
            raise RunDirError(f"{self.run_json}: cannot read ({e})") from e
        if not isinstance(data, dict):
            raise RunDirError(f"{self.run_json}: expected a JSON object")
        return data

    def task(self) -> Task:
        """The run's task: the labels (and label guidelines) it recorded and the answer format
        it trained with; a run from before guidelines existed has none."""
        labels = self.labels()
        return Task(labels, self.answer_format(), guidelines_of_record(self.info(), self.run_json, labels))

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

    def method_kind(self) -> str:
        return str((self.raw_config().get("method") or {}).get("kind", "lora"))

    def head(self) -> str:
        """method.head: what the model answers with (runs from before the setting generated)."""
        found = (self.raw_config().get("method") or {}).get("head", "generate")
        if found not in get_args(HeadName):
            raise RunDirError(f"{self.config_yaml}: method.head {found!r} is not one of "
                              f"{', '.join(get_args(HeadName))}")
        return found

    def parent(self) -> "RunDir | None":
        """The run this one was continued from (`init_from`), as recorded in run.json."""
        parent = (self.info().get("init_from") or {}).get("run")
        return RunDir(Path(parent)) if parent else None

    def data(self) -> PreparedData:
        """The prepared data this run trained on (the folder recorded in run.json)."""
        data_dir = self.info().get("data_dir")
        if not data_dir:
            raise RunDirError(f"{self.run_json}: no data_dir recorded")
        return PreparedData(Path(data_dir))

    def training_rows_file(self) -> tuple[Path, int | None]:
        """The training split this run trained on and the row limit it applied, checked
        against the hash recorded when it started (replay must draw from what the run saw)."""
        data = self.data()
        path = data.split("train")
        if not path.is_file():
            raise RunDirError(f"{path}: the training data of {self.path} is gone; replay needs "
                              "it (or set data.replay_share=0)")
        if data.changed_split(self.info().get("data_sha256") or {}, "train"):
            raise RunDirError(f"{path} changed since {self.path} trained on it; replay needs the "
                              "same rows (or set data.replay_share=0)")
        limit = (self.raw_config().get("data") or {}).get("train_limit")
        return path, limit

    def validation_rows_file(self) -> Path:
        """The validation split this run validated on (for a child whose new data has none)."""
        path = self.data().split("val")
        if not path.is_file():
            raise RunDirError(f"{path}: the validation data of {self.path} is gone")
        return path

    # -- progress and scores ----------------------------------------------------------------
    def finished(self) -> bool:
        return self.summary.is_file()

    def summary_info(self) -> dict | None:
        """summary.json (steps, best F1...) of a finished run; None while it runs."""
        if not self.finished():
            return None
        return _read_json_object(self.summary)

    def write_summary(self, summary: dict) -> None:
        """summary.json, written last: from here on the run has finished."""
        atomic.write_json(self.summary, summary)

    def last_logged_step(self) -> int | None:
        """The step of the last whole line of metrics.jsonl (a torn last line is skipped)."""
        records = read_json_lines(self.metrics)
        step = records[-1].get("step") if records else None
        return step if isinstance(step, int) else None

    def append_metric(self, record: dict) -> None:
        atomic.append_line(self.metrics, _json_line(record))

    def append_val_prediction(self, record: dict) -> None:
        atomic.append_line(self.val_predictions, _json_line(record))

    def trim_metrics(self, last_step: int) -> None:
        """Drop metric and prediction lines after `last_step` (and any torn line: the
        interruption being resumed from) so a resumed run never writes a step twice."""
        for path in (self.metrics, self.val_predictions):
            if path.is_file():
                kept = [r for r in read_json_lines(path) if r.get("step", 0) <= last_step]
                atomic.write_lines(path, (_json_line(r) for r in kept))

    def best_scores(self) -> dict:
        """best/scores.json: the validation scores of the kept weights ({} before any)."""
        return self.scores_of(self.best)

    def scores_of(self, weights: Path) -> dict:
        """The validation scores saved beside weights (best/ has them, final/ not): {} if none."""
        path = Path(weights) / _SCORES
        return _read_json_object(path) if path.is_file() else {}

    def eval_dir(self, split: str) -> Path:
        """Where `nerft eval RUN --split SPLIT` writes its report."""
        return self.path / f"{_EVAL}{split}"

    def eval_scores(self, split: str = "test") -> dict:
        """Strict micro scores and sentence count that `nerft eval RUN --split SPLIT` wrote
        ({} when it has not run): {"f1", "precision", "recall", "sentences"}."""
        path = self.eval_dir(split) / _EVAL_METRICS
        if not path.is_file():
            return {}
        data = _read_json_object(path)
        strict = ((data.get("scores") or {}).get("strict") or {}).get("micro") or {}
        if not isinstance(strict, dict) or not isinstance(strict.get("f1"), (int, float)):
            raise RunDirError(f"{path}: not a metrics.json written by nerft eval (no "
                              "scores.strict.micro.f1)")
        return {"f1": strict.get("f1"), "precision": strict.get("precision"),
                "recall": strict.get("recall"), "sentences": data.get("sentences")}

    def eval_f1(self, split: str = "test") -> float | None:
        """Strict micro F1 that `nerft eval RUN --split SPLIT` wrote, if any."""
        found = self.eval_scores(split).get("f1")
        return None if found is None else float(found)

    # -- weights -----------------------------------------------------------------------------
    def weights(self) -> Path:
        """The folder to load: best/ (best validation F1), else final/. A reader never moves
        anything while a trainer holds the lock (it may be swapping best/ at this moment)."""
        if not self.best.is_dir() and (self.best_staging.is_dir() or self.best_old.is_dir()):
            self._finish_interrupted_swap()
        found = next((self.path / f for f in WEIGHT_FOLDERS if (self.path / f).is_dir()), None)
        if found is None:
            raise RunDirError(f"{self.path}: no best/ or final/ folder yet; wait for the first "
                              "evaluation of `nerft train`, or pass a model folder")
        return found

    def _finish_interrupted_swap(self) -> None:
        try:
            with self.writing(wait_s=0):
                self.recover_best()  # no trainer: a kill interrupted a swap; finish it
            return
        except RunLocked:
            pass  # a trainer is mid-swap: best/ is back in a moment
        except OSError:
            return  # a folder we may not write (the lock cannot be created): read as is
        deadline = time.monotonic() + _SWAP_WAIT_S
        while not self.best.is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)

    def recover_best(self) -> None:
        """Finish a `best/` swap that a kill interrupted; call it holding the lock."""
        atomic.recover_folder(self.best, self.best_staging, self.best_old, _SCORES)

    def save_best(self, scores: dict) -> None:
        """Complete best/ from the weights just saved into `best_staging`: drop the Trainer's
        arguments file, write the scores last (they mark the folder whole), swap it in."""
        (self.best_staging / "training_args.bin").unlink(missing_ok=True)  # not part of an adapter
        atomic.write_json(self.best_staging / _SCORES, scores)
        atomic.replace_folder(self.best, self.best_staging, self.best_old)

    def save_final(self) -> None:
        """Swap in final/ from the weights just saved into `final_staging`."""
        (self.final_staging / "training_args.bin").unlink(missing_ok=True)
        atomic.replace_folder(self.final, self.final_staging, self.final_old)

    # -- checkpoints -------------------------------------------------------------------------
    @staticmethod
    def checkpoint_step(folder: Path | str) -> int | None:
        """N for a folder named checkpoint-N, else None."""
        name = Path(folder).name
        step = name[len(_CHECKPOINT):] if name.startswith(_CHECKPOINT) else ""
        return int(step) if step.isdigit() else None

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, newest first."""
        found = [p for p in self.path.glob(f"{_CHECKPOINT}*")
                 if p.is_dir() and self.checkpoint_step(p) is not None]
        return sorted(found, key=self.checkpoint_step, reverse=True)

    def set_aside(self, checkpoint: Path) -> Path:
        """Move a checkpoint `--resume` cannot use to damaged-checkpoint-N (a new name if one
        is there already: a kept folder is never replaced) and return where it went."""
        aside, n = self.path / f"{_DAMAGED}{checkpoint.name}", 1
        while aside.exists():
            n += 1
            aside = self.path / f"{_DAMAGED}{checkpoint.name}.{n}"
        atomic.move_into(checkpoint, aside)
        return aside

    def damaged_checkpoints(self) -> list[Path]:
        return sorted(self.path.glob(f"{_DAMAGED}{_CHECKPOINT}*"))

    def move_checkpoints_into_place(self) -> None:
        """Move what the Trainer wrote into `checkpoint_staging` into the run, one folder at
        a time (each rename is atomic), replacing a checkpoint a resume went back past."""
        for folder in self.checkpoint_staging.iterdir():
            atomic.move_into(folder, self.path / folder.name)
        self.checkpoint_staging.rmdir()

    def rotate_checkpoints(self, keep: int | None) -> None:
        """Keep the newest `keep` checkpoints (all when None or 0)."""
        for old in self.checkpoints()[keep:] if keep else []:
            shutil.rmtree(old, ignore_errors=True)

    # -- the folder as a whole ---------------------------------------------------------------
    def outputs(self) -> list[Path]:
        """Everything `nerft train` and `nerft eval RUN` wrote here (nothing else)."""
        if not self.path.is_dir():
            return []
        return sorted({p for pattern in _OUTPUTS for p in self.path.glob(pattern)})

    def clear(self, keep: tuple[Path, ...] = ()) -> None:
        """Remove what a previous run wrote, except `keep`."""
        for entry in self.outputs():
            if entry in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @contextlib.contextmanager
    def writing(self, wait_s: float = _WRITER_WAIT_S) -> Iterator[None]:
        """Hold the run's lock (one writer at a time): raises `RunLocked` when another
        process holds it for longer than `wait_s`."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock), timeout=wait_s)
        try:
            lock.acquire()
        except Timeout:
            raise RunLocked(f"{self.path}: another `nerft train` ({self._lock_holder()}) is "
                            "writing this run; wait for it or choose another "
                            "training.output_dir") from None
        try:
            with contextlib.suppress(OSError):  # who holds it, for the message above
                self.lock.write_text(f"pid {os.getpid()}", encoding="utf-8")
            yield
        finally:
            lock.release()

    def _lock_holder(self) -> str:
        try:
            return self.lock.read_text(encoding="utf-8").strip() or "another process"
        except (OSError, UnicodeDecodeError):
            return "another process"


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read ({e})") from e
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return data


def init_run_dir(config: Config, run_dir: Path, *, resume: bool, labels: list[str],
                 resume_changes: list[str] = (), lineage: dict | None = None,
                 training_rows: dict | None = None, guidelines: dict | None = None) -> None:
    """Write config.yaml and run.json for a new run; on resume keep config.yaml as the run
    started and record in run.json which (harmless) settings this resume changed."""
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    data_files = PreparedData(config.data.dir).sha256()
    info = {
        # Absolute: a child run (init_from) started from another folder must find the rows.
        "data_dir": str(Path(config.data.dir).resolve()),
        "data_sha256": data_files,
        "labels": labels,
        "seed": config.training.seed,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
    }
    if guidelines:  # Task.record()'s field: the instruction's label guidelines
        info["guidelines"] = guidelines
    if training_rows:
        info["training_rows"] = training_rows  # before replay: what data.max_empty_share kept
    if lineage:
        info["init_from"] = lineage  # parent, replay share and rows, labels new in this run
    if resume and run.run_json.is_file():
        old = run.info()
        info["started_at"] = old.get("started_at", info["started_at"])
        if old.get("data_sha256") != data_files:
            raise RunDirError(f"{run.path}: the data changed since this run started; "
                              "resume needs the same data (or start a new run)")
        info["resumed"] = old.get("resumed", 0) + 1
        new_values = config.model_dump(mode="json")
        info["resume_overrides"] = old.get("resume_overrides", []) + [
            {key: _dotted(new_values, key) for key in resume_changes}]
        info["command"], info["first_command"] = sys.argv, old.get("first_command", old.get("command"))
    if not (resume and run.config_yaml.is_file()):
        atomic.write_text(run.config_yaml, dump_config(config))
    atomic.write_json(run.run_json, info)


def _dotted(values: dict, key: str):
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values
