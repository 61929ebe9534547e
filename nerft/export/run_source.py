"""What an export needs to know about a `nerft train` run directory, read without loading weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nerft.export import ExportError
from nerft.run_dir import RunDir, RunDirError


@dataclass
class RunSource:
    """A run's base model, its trained weights (an adapter or a whole model) and its records."""

    run: Path
    base: str  # model.source from config.yaml
    dtype: str
    trust_remote_code: bool  # from --trust-remote-code only
    method: dict
    labels: tuple[str, ...]
    weights: Path  # RUN/best or RUN/final
    info: dict = field(default_factory=dict)  # run.json
    data_dir: Path | None = None
    answer_format: str = "json"  # data.answer_format the run was trained with

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


def read_run(run: Path, *, trust_remote_code: bool = False) -> RunSource:
    """The run through `RunDir`; `trust_remote_code` comes from the command line, never from
    the run's own config.yaml."""
    try:
        rd = RunDir.open(Path(run))
        model, labels, weights, raw = rd.model_config(), rd.labels(), rd.weights(), rd.raw_config()
        info, answer_format = rd.info(), rd.answer_format()
    except RunDirError as e:
        raise ExportError(str(e)) from e
    if not (weights / "adapter_config.json").is_file() and not (weights / "config.json").is_file():
        raise ExportError(f"{weights}: neither an adapter (adapter_config.json) nor a model "
                          "(config.json)")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    data_dir = Path(data["dir"]) if isinstance(data.get("dir"), str) else None
    return RunSource(run=rd.path, base=model.source, dtype=model.dtype,
                     trust_remote_code=trust_remote_code,
                     method=raw.get("method") if isinstance(raw.get("method"), dict) else {},
                     labels=labels, weights=weights, info=info, data_dir=data_dir,
                     answer_format=answer_format)
