"""`init_from`: continue training from a finished run on new data, with replay of its own rows.

The child starts from the parent's weights: a LoRA/DoRA parent's adapter is loaded back as
trainable (the same adapter keeps learning, so the child's adapter applies to the same base
model), a full fine-tuning parent's saved model is the child's starting model. A share of the
parent's own training rows (data.replay_share of the mixed set, drawn with the seed) is mixed
into the new data so that what the parent learned is rehearsed, not overwritten.

Labels: the parent's labels first, in its order (so with no new label the instruction is the
parent's, token for token), then labels of the new data it never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from nerft.config import ADAPTER_KINDS, Config
from nerft.data.example import Example, read_examples
from nerft.data.prepared import PreparedData
from nerft.errors import NerftError
from nerft.models.loader import InferenceError, describe, init_adapter
from nerft.runs.run_dir import RunDir, RunDirError


class ContinueError(NerftError):
    """An init_from that cannot work as asked: one line (exit code 2)."""


@dataclass
class Lineage:
    parent: RunDir
    labels: tuple[str, ...]  # the union, parent's first
    new_labels: tuple[str, ...]
    replay: list[Example] = field(default_factory=list)
    replay_share: float = 0.0
    parent_kind: str = "lora"
    source: str = ""  # what the child loads: the parent's base model, or its full weights
    tokenizer_folder: Path | None = None
    info: dict = field(default_factory=dict)  # run.json's `init_from` record

    def record(self, new_rows: int) -> dict:
        """What run.json keeps under `init_from`."""
        info = self.parent.info()
        return {"run": str(self.parent.path.resolve()), "parent_kind": self.parent_kind,
                "parent_weights": str(self.parent.weights().resolve()),
                "parent_data_dir": info.get("data_dir"),
                "parent_data_sha256": info.get("data_sha256"),
                "replay_share": self.replay_share, "replay_rows": len(self.replay),
                "new_rows": new_rows, "replay_ids": [ex.id for ex in self.replay],
                "new_labels": list(self.new_labels)}


def start(config: Config, new_rows: list[Example], data_labels: tuple[str, ...],
          console) -> Lineage | None:
    """The plan for an init_from run (None without one), announced on `console`."""
    parent = open_parent(config)
    if parent is None:
        return None
    lineage = plan(parent, config, new_rows, data_labels)
    check_kinds(lineage.parent_kind, config.method.kind)
    try:  # what the one loader would load for the parent: its base (+ adapter) or full weights
        start_from = describe(str(parent.path), trust_remote_code=config.model.trust_remote_code)
    except InferenceError as e:
        raise ContinueError(f"init_from: {e}") from None
    lineage.source, lineage.tokenizer_folder = start_from.weights, start_from.tokenizer_folder
    # An adapter only fits the model it was trained on: the child's config.yaml records the
    # parent's base model, whatever model.source it was given.
    config.model.source = child_model_source(lineage)
    lineage.info = lineage.record(len(new_rows))
    new = f"; labels it never saw: {', '.join(lineage.new_labels)}" if lineage.new_labels else ""
    console.print(f"init_from {parent.path} ({lineage.parent_kind} on {config.model.source}): "
                  f"{len(lineage.replay):,} of its training rows replayed with {len(new_rows):,} "
                  f"new ones{new}", highlight=False, soft_wrap=True)
    return lineage


def open_parent(config: Config) -> RunDir | None:
    if config.init_from is None:
        return None
    try:
        parent = RunDir.open(config.init_from)
        parent.weights()
    except RunDirError as e:
        raise ContinueError(f"init_from: {e}") from None
    if Path(config.init_from).resolve() == Path(config.training.output_dir).resolve():
        raise ContinueError("init_from names the run's own training.output_dir; choose a new one")
    return parent


def parent_validation_rows(config: Config) -> tuple[list[Example], Path]:
    """The parent's validation rows, for new data without any (a handful of corrections): the
    child is then chosen by how well it keeps doing the parent's job."""
    parent = open_parent(config)
    try:
        path = parent.validation_rows_file()
    except RunDirError as e:
        raise ContinueError(f"init_from: {PreparedData(config.data.dir).split('val')} has no rows and {e}") from None
    return list(read_examples(path)), path


def replay_rows(parent_rows: list[Example], new_count: int, share: float, seed: int) -> list[Example]:
    """`share` of the mixed training set drawn from `parent_rows`: round(new * share / (1 -
    share)) rows (at most all of them), sampled with `seed` and kept in file order."""
    if share <= 0 or not parent_rows:
        return []
    wanted = min(len(parent_rows), round(new_count * share / (1 - share)))
    picked = sorted(random.Random(seed).sample(range(len(parent_rows)), wanted))
    return [parent_rows[i] for i in picked]


def plan(parent: RunDir, config: Config, new_rows: list[Example],
         data_labels: tuple[str, ...]) -> Lineage:
    """Labels (union), the replayed rows, and what the parent was trained with."""
    try:
        parent_labels = parent.labels()
        kind = parent.method_kind()
        if parent.answer_format() != config.data.answer_format:
            raise ContinueError(f"init_from: {parent.path} answers in data.answer_format="
                                f"{parent.answer_format()}, this run's config says "
                                f"{config.data.answer_format}; a continued model keeps its "
                                f"parent's format: set data.answer_format={parent.answer_format()}")
        share = config.data.replay_share
        replay = []
        if share > 0:
            path, limit = parent.training_rows_file()
            replay = replay_rows(list(read_examples(path))[:limit], len(new_rows), share,
                                 config.training.seed)
    except RunDirError as e:
        raise ContinueError(f"init_from: {e}") from None
    new_labels = tuple(lb for lb in data_labels if lb not in parent_labels)
    return Lineage(parent, parent_labels + new_labels, new_labels, replay, share, kind)


def check_kinds(parent_kind: str, child_kind: str) -> None:
    """Refuse a child method that cannot start from the parent's weights."""
    if parent_kind in ADAPTER_KINDS:
        if child_kind in ADAPTER_KINDS and child_kind != parent_kind:
            raise ContinueError(f"init_from: the parent trained a {parent_kind} adapter; "
                                f"set method.kind={parent_kind} (or full/freeze to merge it)")
    elif child_kind in ADAPTER_KINDS:
        raise ContinueError(f"init_from: the parent is a {parent_kind} fine-tuned model; "
                            "continue it with method.kind=full or freeze")


def child_model_source(lineage: Lineage) -> str:
    """The child's model.source: its parent's base model (what its adapter, or the weights it
    grew from, were trained on)."""
    try:
        return lineage.parent.model_config().source
    except RunDirError as e:
        raise ContinueError(f"init_from: {e}") from None


def continue_model(lineage: Lineage, model, config: Config):
    """The loaded base prepared for training from the parent's weights: (model, report).

    The loaded base is the parent's own model for a full fine-tuning parent; a LoRA/DoRA
    parent's adapter goes on top through the one loader's `init_adapter`: kept and trainable
    for an adapter child (its own shape, r and targets: the child's other method settings do
    not apply), merged for a full/freeze child."""
    from nerft.train.method import TrainableReport, apply_method

    if lineage.parent_kind not in ADAPTER_KINDS:  # the parent's full model was loaded as base
        return apply_method(model, config.method)
    weights = lineage.parent.weights()
    if config.method.kind in ADAPTER_KINDS:
        model = init_adapter(model, weights, trainable=True, merge=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return model, TrainableReport(trainable, total)
    return apply_method(init_adapter(model, weights, trainable=True, merge=True), config.method)
