"""The run directory: everything needed to reproduce, resume and audit a training run.

    RUN/config.yaml      the resolved config (file + overrides + defaults)
    RUN/run.json         data file hashes, package versions, git commit, seed, command line
    RUN/metrics.jsonl    one line per logged step (train) or evaluation (eval)
    RUN/checkpoint-N/    resumable checkpoints, each moved into place whole
    RUN/best/            the adapter (or model) with the best validation F1, and its scores
    RUN/final/           the adapter at the end of training
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from nerft.cache import sha256_file
from nerft.config import Config, dump_config

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


def init_run_dir(config: Config, run_dir: Path, *, resume: bool, labels: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    data_files = {name: sha256_file(config.data.dir / name)
                  for name in ("train.jsonl", "val.jsonl", "test.jsonl")
                  if (config.data.dir / name).is_file()}
    info = {
        "data_dir": str(config.data.dir),
        "data_sha256": data_files,
        "labels": labels,
        "seed": config.training.seed,
        "versions": versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
    }
    if resume and (run_dir / "run.json").is_file():
        old = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        if old.get("data_sha256") != data_files:
            raise ValueError(f"{run_dir}: the data changed since this run started; "
                             "resume needs the same data (or start a new run)")
        info["resumed"] = old.get("resumed", 0) + 1
    (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    write_json_atomic(run_dir / "run.json", info)


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
