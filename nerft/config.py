"""The training config: one YAML file, typed sections, `key=value` overrides from the command line.

Sections follow the life cycle (data, model, method, training, eval, tracking), one pydantic
model each, so an unknown key or a wrong type is an error that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from nerft.data.guidelines import GuidelineError, parse_guidelines, read_guidelines
from nerft.data.prepared import GUIDELINE_SOURCES, NotPreparedData, PreparedData
from nerft.errors import NerftError


class ConfigError(NerftError):
    """A config problem, reported as one line (exit code 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# How the model writes an answer (nerft.task.prompt writes and parses each one).
AnswerFormatName = Literal["json", "compact"]
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormatName)

# Where a run's label guidelines come from (nerft.data.prepared.PreparedData.task_guidelines).
GuidelineSource = Literal["auto", "prepared", "preset", "off"]
assert get_args(GuidelineSource) == GUIDELINE_SOURCES
# auto: the presets of the corpus formats measured to gain from them, and the prepared ones
# (nerft.data.guidelines.PRESETS_ON_BY_DEFAULT; BENCHMARKS.md "Task guidelines").
DEFAULT_GUIDELINES = "auto"


class DataConfig(_Section):
    dir: Path = Field(description="folder written by `nerft data prepare` (train/val/test.jsonl)")
    train_limit: Optional[int] = Field(None, ge=1, description="use only the first N training rows")
    max_length: int = Field(384, ge=16, description="longer rows are dropped, never truncated")
    # Sparse corpora (most sentences without an entity) otherwise teach a small model to answer
    # 没有找到任何实体 to everything: measured in BENCHMARKS.md ("Sparse corpora").
    max_empty_share: Optional[float] = Field(
        0.3, ge=0, le=1, description="at most this share of training rows without any entity "
        "(every row with an entity is kept, and a seeded sample of the others; null keeps all)")
    replay_share: float = Field(
        0.3, ge=0, lt=1, description="with init_from: the share of the training rows drawn "
        "(seeded) from the parent run's own training data, so old skills are not forgotten")
    answer_format: AnswerFormatName = Field(
        "json", description="how the model writes its answer: the worked example's JSON lines, "
        "or compact '\"text\": \"label\"' lines (about half the answer tokens)")
    guidelines: Union[GuidelineSource, dict, Path] = Field(
        DEFAULT_GUIDELINES, description="label definitions and examples written into the "
        "instruction: prepared (those of `nerft data prepare --labels FILE`), preset (those "
        "laid over the shipped corpora's preset ones), auto (preset for the corpora measured "
        "to gain from them, ccfbdci; prepared otherwise), off, or a labels.yaml file or "
        "inline mapping {label: {description, examples, not}} laid over the prepared ones")

    @field_validator("guidelines", mode="before")
    @classmethod
    def _guideline_source(cls, value):
        # YAML 1.1 reads a bare `off` as false; users mean the setting.
        return "off" if value is False else value

    @field_validator("guidelines")
    @classmethod
    def _readable_guidelines(cls, value):
        # A file or mapping is checked here (its fields); its labels are checked against the
        # data's label set when training builds the task.
        try:
            if isinstance(value, Path):
                read_guidelines(value)
            elif isinstance(value, dict):
                parse_guidelines(value, "data.guidelines")
        except GuidelineError as e:
            raise ValueError(str(e)) from None
        return value


class ModelConfig(_Section):
    source: str = Field(description="local folder, hub id, modelscope:ID, file.gguf, or 'demo'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# The method kinds that train an adapter (LoRA-style) rather than the model's own weights.
ADAPTER_KINDS = ("lora", "dora")


# What the model answers with: `generate` writes the entities as text (the chat model's own
# output layer); `tagger` puts a token-classification head (BIO tags) on the same backbone and
# generates nothing (nerft.task.bio; BENCHMARKS.md "Tagging head"); `tagger-bidirectional` is
# that head with the backbone's causal mask lifted, so that each token also sees the tokens
# after it, as an encoder tagger's do (a decoder sees only the left context: at the first
# character of a name it has not read the rest).
HeadName = Literal["generate", "tagger", "tagger-bidirectional"]
TAGGER_HEADS = ("tagger", "tagger-bidirectional")


def is_tagger(head: str) -> bool:
    """A tagging head (BIO tags, no generation), whichever attention its backbone uses."""
    return head in TAGGER_HEADS


class MethodConfig(_Section):
    kind: Literal["lora", "dora", "full", "freeze"] = "lora"
    head: HeadName = Field(
        "generate", description="generate: the model writes its answer; tagger: a BIO "
        "token-classification head over the backbone's hidden states, trained in full (no "
        "generation, so no stop rule, grammar or constrained decoding); tagger-bidirectional: "
        "the same with the causal mask lifted (every token sees the whole sentence)")
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    top_k_layers: Optional[int] = Field(
        None, ge=1, description="lora/dora: adapt only the top k blocks; freeze: train only them")
    trainable_modules: list[str] = Field(
        default_factory=list, description="freeze: also train modules whose name contains these")


class TrainingConfig(_Section):
    output_dir: Path = Path("runs/run")
    epochs: float = Field(2, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: epochs)")
    batch_size: int = Field(4, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(4, ge=1)
    lr: Union[float, Literal["auto"]] = Field(
        1e-4, description="peak learning rate; auto (lora/dora only): 1e-3 for a run of at most "
        "200 optimizer steps, 2e-4 for a longer one (measured: BENCHMARKS.md, learning curve)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    packing: Literal["shared_prefix", "flat", "none", "prefix_kv"] = Field(
        "shared_prefix", description="shared_prefix: one system prompt per micro-batch row; "
        "flat: examples back to back; none: padded rows grouped by length; prefix_kv: the "
        "system prompt run once, its keys/values shared by a padded batch of the examples")
    packed_attention: Literal["grid", "per_example"] = Field(
        "grid", description="shared_prefix packing with sdpa: grid runs attention over the whole "
        "row with a mask; per_example runs the prefix, then each example against the prefix "
        "and itself (the same result, fewer attention scores; not faster per step on 2 CPU "
        "cores: BENCHMARKS.md)")
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    num_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads on CPU")

    @field_validator("lr", mode="before")
    @classmethod
    def _positive_or_auto(cls, value):
        if value == "auto":
            return value
        try:
            number = float(value)  # YAML reads 2e-4 (no dot) as a string
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None or not number > 0:
            raise ValueError(f"should be a positive number or auto, not {value!r}")
        return number


class ValidationConfig(_Section):
    """The `eval` section: validation during training (loss, F1 on a fixed subset, early stop)."""

    eval_steps: int = Field(50, ge=1)
    at_start: bool = Field(True, description="score the untrained model first (step 0)")
    val_size: int = Field(64, ge=1, description="fixed validation subset for F1 during training")
    batch_size: int = Field(16, ge=1, description="validation sentences decoded together")
    early_stopping_patience: Optional[int] = Field(3, ge=1)
    log_predictions: int = Field(5, ge=0, description="validation rows logged as text")
    constrained: bool = True


class TrackingConfig(_Section):
    swanlab: Literal["local", "cloud", "off"] = "local"

    @field_validator("swanlab", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML 1.1 reads a bare `off` as false; users mean the mode.
        return {False: "off", True: "local"}.get(value, value) if isinstance(value, bool) else value

    project: str = "nerft"
    experiment: Optional[str] = None
    tensorboard: bool = False


class Config(_Section):
    init_from: Optional[Path] = Field(
        None, description="a finished `nerft train` run to continue from: its adapter (or "
        "weights) is the starting point and data.replay_share of its training rows are mixed in")
    data: DataConfig
    model: ModelConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: ValidationConfig = Field(default_factory=ValidationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _backend_supports_packing(self):
        # FlashAttention takes no 4D mask: transformers would read the shared-prefix mask as
        # a padding mask. `flat` packing gives it the example boundaries through position ids.
        packing = self.training.packing
        if self.model.attn_implementation == "flash_attention_2" and packing in ("shared_prefix", "prefix_kv"):
            raise ValueError("model.attn_implementation flash_attention_2 cannot use "
                             f"training.packing {packing} (it needs a 4D mask); "
                             "set training.packing=flat")
        if (packing == "shared_prefix" and self.training.packed_attention == "per_example"
                and self.model.attn_implementation != "sdpa"):
            raise ValueError("training.packed_attention per_example runs on SDPA; set "
                             "model.attn_implementation=sdpa or training.packed_attention=grid")
        # Gradient checkpointing makes transformers drop the cache during training, and the
        # examples would silently lose the prefix's keys/values.
        if packing == "prefix_kv" and self.training.gradient_checkpointing:
            raise ValueError("training.packing prefix_kv cannot be used with "
                             "training.gradient_checkpointing (the prefix's keys/values travel "
                             "in the cache it turns off); set training.packing=shared_prefix")
        return self

    @model_validator(mode="after")
    def _auto_lr_is_for_adapters(self):
        if self.training.lr == "auto" and self.method.kind not in ADAPTER_KINDS:
            raise ValueError(f"training.lr auto is measured for lora/dora adapters only; give "
                             f"method.kind {self.method.kind} a number (e.g. training.lr=1e-5)")
        return self

    @model_validator(mode="after")
    def _tagger_starts_fresh(self):
        if is_tagger(self.method.head) and self.init_from is not None:
            raise ValueError("init_from is not supported with method.head tagger yet: train "
                             "the tagger from the base model (init_from unset)")
        return self

    @model_validator(mode="after")
    def _paths_exist(self):
        try:
            PreparedData.open(self.data.dir, needs=("train", "val"))
        except NotPreparedData as e:
            raise ValueError(f"data.dir: {e}") from None
        return self


def apply_override(raw: dict, item: str) -> None:
    """Set `section.key=value` in a raw config dict; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. training.lr=2e-4)")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value != "" else None


def load_config(path: Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    # Relative data paths are relative to where the user runs nerft, like every CLI path.
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        extra = f" ({len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{path}: {where}: {msg}{extra}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
