"""What an export needs to know about a `nerft train` run directory, read without loading weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nerft.export import ExportError
from nerft.infer.predict import ADAPTER_FOLDERS, is_run_dir


@dataclass
class RunSource:
    """A run's base model, its trained weights (an adapter or a whole model) and its records."""

    run: Path
    base: str  # model.source from config.yaml
    dtype: str
    trust_remote_code: bool
    method: dict
    labels: tuple[str, ...]
    weights: Path  # RUN/best or RUN/final
    info: dict = field(default_factory=dict)  # run.json
    data_dir: Path | None = None

    @property
    def is_adapter(self) -> bool:
        return (self.weights / "adapter_config.json").is_file()

    def scores(self) -> dict:
        """Validation scores of the kept weights (`best/scores.json`) and test scores of the
        latest `nerft eval RUN` (`eval-test/metrics.json`), where present."""
        found: dict = {}
        best_scores = self.weights / "scores.json"
        if best_scores.is_file():
            found["validation"] = _read_json(best_scores)
        test = self.run / "eval-test" / "metrics.json"
        if test.is_file():
            strict = _read_json(test).get("scores", {}).get("strict", {}).get("micro", {})
            sentences = _read_json(test).get("sentences")
            if strict:
                found["test"] = {"f1": strict.get("f1"), "precision": strict.get("precision"),
                                 "recall": strict.get("recall"), "sentences": sentences}
        return found

    def validation_texts(self, limit: int) -> list[str]:
        """Up to `limit` sentences of the run's validation split (for the export's own check)."""
        if self.data_dir is None or not (self.data_dir / "val.jsonl").is_file():
            return []
        texts = []
        with open(self.data_dir / "val.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip() and len(texts) < limit:
                    texts.append(json.loads(line)["text"])
        return texts


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read ({e})") from e
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


def read_run(run: Path) -> RunSource:
    run = Path(run).expanduser()
    if not run.is_dir() or not is_run_dir(run):
        raise ExportError(f"{run}: not a `nerft train` run directory (no config.yaml and run.json)")
    try:
        raw = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ExportError(f"{run / 'config.yaml'}: not valid YAML: {e}".splitlines()[0]) from e
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("source"), str):
        raise ExportError(f"{run / 'config.yaml'}: field model.source missing")
    info = _read_json(run / "run.json")
    labels = info.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ExportError(f"{run / 'run.json'}: field labels missing or not a list of names")
    weights = next((run / f for f in ADAPTER_FOLDERS if (run / f).is_dir()), None)
    if weights is None:
        raise ExportError(f"{run}: no best/ or final/ folder yet; export after the first "
                          "evaluation of `nerft train`")
    if not (weights / "adapter_config.json").is_file() and not (weights / "config.json").is_file():
        raise ExportError(f"{weights}: neither an adapter (adapter_config.json) nor a model "
                          "(config.json)")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    data_dir = Path(data["dir"]) if isinstance(data.get("dir"), str) else None
    return RunSource(run=run, base=model["source"], dtype=str(model.get("dtype", "auto")),
                     trust_remote_code=bool(model.get("trust_remote_code", False)),
                     method=raw.get("method") if isinstance(raw.get("method"), dict) else {},
                     labels=tuple(labels), weights=weights, info=info, data_dir=data_dir)
