"""What an export needs to know about a `nerft train` run directory, read without loading weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from nerft.data.prepared import PreparedData
from nerft.export import ExportError
from nerft.runs.run_dir import WEIGHT_RECORDS, RunDir, RunDirError
from nerft.task.prompt import Task


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
    task: Task | None = None  # the run's whole task (labels, answer format, guidelines)
    head: str = "generate"  # method.head: generate, tagger or tagger-bidirectional

    @property
    def config_file(self) -> Path:
        """The run's config.yaml (to name in messages)."""
        return RunDir(self.run).config_yaml

    @property
    def record_files(self) -> tuple[str, ...]:
        """Files of the weights folder that are the run's records (the validation scores: they
        go into the card), not part of the weights."""
        return WEIGHT_RECORDS

    @property
    def is_adapter(self) -> bool:
        return (self.weights / "adapter_config.json").is_file()

    def scores(self) -> dict:
        """Validation scores of the kept weights (best/'s) and test scores of the latest
        `nerft eval RUN`, where present."""
        found: dict = {}
        try:
            validation = RunDir(self.run).scores_of(self.weights)
            test = RunDir(self.run).eval_scores("test")
        except RunDirError as e:
            raise ExportError(str(e)) from e
        if validation:
            found["validation"] = validation
        if test:
            found["test"] = test
        return found

    def validation_texts(self, limit: int) -> list[str]:
        """Up to `limit` sentences of the run's validation split (for the export's own check)."""
        if self.data_dir is None or not PreparedData(self.data_dir).split("val").is_file():
            return []
        return [ex.text for ex in islice(PreparedData(self.data_dir).rows("val"), limit)]


def read_run(run: Path, *, trust_remote_code: bool = False) -> RunSource:
    """The run through `RunDir`; `trust_remote_code` comes from the command line, never from
    the run's own config.yaml."""
    try:
        rd = RunDir.open(Path(run))
        model, task, weights, raw, info = (rd.model_config(), rd.task(), rd.weights(),
                                           rd.raw_config(), rd.info())
        head = rd.head()
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
                     labels=task.labels, weights=weights, info=info, data_dir=data_dir,
                     answer_format=task.answer_format, task=task, head=head)
