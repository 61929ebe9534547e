"""The one loader of a model nerft decodes with or trains further: a `nerft train` run folder,
a `nerft export` folder (adapter or merged) or a model source (demo, hub id, folder, .gguf).

The shape is LLaMA-Factory's `load_model` + `init_adapter(is_trainable)`: `describe` reads what
a reference names without touching weights (so a bad record fails at once, by name), the base
weights and tokenizer load through `nerft.models.base.load_model_and_tokenizer`, and `init_adapter`
puts a trained adapter on top: merged for inference (as fast as the base model), kept and
trainable to continue training, or kept frozen (the export's parity reference). The `Task`
(labels, answer format) comes back with the weights, so no caller reads a run's records itself.
A run or export of the tagging head (method.head tagger) loads as the backbone with that head
(its BIO tags from the task's labels); `nerft.infer.predict.decoder_for` then tags with it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, get_args

from nerft.config import HeadName, is_tagger
from nerft.data.labels import PRESETS
from nerft.task.bio import tag_names
from nerft.errors import NerftError
from nerft.export_dir import ExportDir, ExportDirError
from nerft.task.prompt import Task, TaskError, task_from_record
from nerft.runs.run_dir import RunDir, RunDirError

__all__ = ["DEFAULT_LABELS", "InferenceError", "LoadedModel", "ModelRef", "describe",
           "init_adapter", "load_model"]

DEFAULT_LABELS = tuple(PRESETS["ccfbdci"].values())  # 地点, 人名, 地理实体, 组织: the worked example


class InferenceError(NerftError):
    """A model, or an input to it, that cannot be used: one line saying what to do (exit code 2)."""


class LoadedModel(NamedTuple):
    """What `load_model` returns; unpacks as (model, tokenizer, task)."""

    model: object
    tokenizer: object
    task: Task


@dataclass(frozen=True)
class ModelRef:
    """What a reference names, read from its records without loading any weights."""

    weights: str  # what `load_model_and_tokenizer` loads: a base source or a full model folder
    adapter: Path | None = None  # a trained adapter to put on top of `weights`
    tokenizer_folder: Path | None = None  # for full weights saved without a tokenizer
    task: Task | None = None  # the task it was trained for; None for a model nerft did not train
    dtype: str = "auto"
    system_prompt: str | None = None  # an export's pinned prompt, checked against ours
    record: Path | None = None  # the file `system_prompt` came from, for the error message
    head: str = "generate"  # method.head: generate, tagger or tagger-bidirectional


@contextmanager
def quiet_peft():
    """PEFT calls an API this transformers deprecates while loading an adapter: not ours to
    fix, and not the user's to read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


def describe(ref: str, *, trust_remote_code: bool = False) -> ModelRef:
    """What `ref` (a run folder, an export folder or a model source) names, without weights."""
    path = Path(ref).expanduser()
    if RunDir.is_run(path):
        return _describe_run(RunDir(path), trust_remote_code)
    if path.is_dir() and ExportDir.holds_export(path):
        return _describe_export(ExportDir(path))
    if _looks_like_path(ref) and not path.exists():
        raise InferenceError(f"{ref}: no such run or model folder")
    return ModelRef(ref)


def load_model(ref: str, trainable: bool = False, *, labels=None, fallback_labels=None,
               merge: bool | None = None, dtype: str | None = None, device: str = "auto",
               trust_remote_code: bool = False) -> LoadedModel:
    """(model, tokenizer, task) for a run folder, an export folder or a model source.

    `trainable=False`: an adapter is merged in (`merge=False` keeps it, frozen) and the model
    is in eval mode; `trainable=True`: the adapter is kept and its weights train. Labels:
    explicit `labels` win, then the reference's own, then `fallback_labels`, then the worked
    example's four. `dtype` (default: the run's) and `device` as in `load_model_and_tokenizer`.
    `trust_remote_code` comes from the command line only, never from a run's files.
    """
    from nerft.models.base import load_model_and_tokenizer

    found = describe(ref, trust_remote_code=trust_remote_code)
    task = _task(found, labels, fallback_labels)  # before the weights: a bad record fails at once
    if is_tagger(found.head) and task.labels != found.task.labels:
        raise InferenceError(f"{ref}: a tagger's labels are its head's outputs "
                             f"({','.join(found.task.labels)}); it cannot be asked for others "
                             "(drop --labels)")
    tags = tag_names(task.labels) if is_tagger(found.head) else None
    try:  # unreadable or broken weight files: one line naming the reference, for every verb
        model, tokenizer = load_model_and_tokenizer(
            found.weights, dtype=dtype or found.dtype, device=device,
            trust_remote_code=trust_remote_code, tokenizer_folder=found.tokenizer_folder,
            tags=tags, bidirectional=found.head == "tagger-bidirectional")
        if found.adapter is not None:
            model = init_adapter(model, found.adapter, trainable=trainable,
                                 merge=not trainable if merge is None else merge)
    except OSError as e:
        raise InferenceError(f"{ref}: {e}".splitlines()[0]) from e
    except Exception as e:  # a damaged safetensors file (SafetensorError is no OSError)
        if type(e).__name__ != "SafetensorError":
            raise
        raise InferenceError(f"{ref}: a weights file is damaged ({e}); train or export it "
                             "again") from e
    return LoadedModel(model, tokenizer, task)


def init_adapter(model, adapter: Path, *, trainable: bool = False, merge: bool = True):
    """`model` with the trained adapter in `adapter` on top.

    merge: folded into the weights (no extra matmuls per layer; whatever `trainable` says, the
    merged model is a plain one the caller prepares for training); else a PeftModel whose
    adapter weights train when `trainable`, frozen and in eval mode otherwise.
    """
    from peft import PeftModel

    with quiet_peft():
        if merge:
            merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            return merged if trainable else merged.eval()
        wrapped = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    return wrapped if trainable else wrapped.eval()


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _checked_adapter(folder: Path) -> Path:
    """`folder` if it holds adapter weights: without them PEFT warns and gives the untrained
    base model back, which would answer as if it were the trained one."""
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise InferenceError(f"{folder}: the adapter's weights ({ADAPTER_WEIGHTS[0]}) are missing")
    return folder


def _task(found: ModelRef, labels, fallback_labels) -> Task:
    """Explicit labels (in the model's answer format), else the model's own task, else the
    fallback or the worked example's labels in JSON lines (what an untrained model has seen)."""
    if not labels and found.task is not None:
        if found.system_prompt is not None and found.system_prompt != found.task.system_prompt:
            raise InferenceError(f"{found.record}: field system_prompt differs from the one this "
                                 "nerft builds for these labels; use it with the nerft that exported it")
        return found.task
    chosen = tuple(labels or fallback_labels or DEFAULT_LABELS)
    try:
        return Task(chosen, found.task.answer_format if found.task else "json")
    except ValueError as e:
        raise InferenceError(f"labels {','.join(chosen)}: {e}") from e


def _describe_run(run: RunDir, trust_remote_code: bool) -> ModelRef:
    """A run's base model with the adapter in best/ (else final/), or the full model saved there."""
    from nerft.models.base import resolve_model

    try:  # the task first, so a bad config.yaml or run.json fails before anything loads
        task = run.task()
        model_cfg, weights, head = run.model_config(), run.weights(), run.head()
    except (RunDirError, TaskError) as e:
        raise InferenceError(str(e)) from e
    # model_cfg.trust_remote_code is what training was allowed; it is never taken from the
    # file: a model that needs its own code fails to load with a hint to pass the flag.
    if (weights / "config.json").is_file():  # full fine-tuning saved the whole model
        tokenizer_folder = weights if (weights / "tokenizer_config.json").is_file() else \
            resolve_model(model_cfg.source, trust_remote_code=trust_remote_code)
        return ModelRef(str(weights), None, tokenizer_folder, task, model_cfg.dtype, head=head)
    if not (weights / "adapter_config.json").is_file():
        raise InferenceError(f"{weights}: neither an adapter (adapter_config.json) nor a model "
                             "(config.json)")
    return ModelRef(model_cfg.source, _checked_adapter(weights), None, task, model_cfg.dtype,
                    head=head)


def _describe_export(export: ExportDir) -> ModelRef:
    """An export: merged weights in the folder itself, or an adapter on its recorded base model."""
    try:
        record = export.read_task()
        task = task_from_record(record, export.task_file)
    except (ExportDirError, TaskError) as e:
        raise InferenceError(str(e)) from e
    prompt = record.get("system_prompt")
    head = record.get("head", "generate")  # exports from before the field generated
    if head not in get_args(HeadName):
        raise InferenceError(f"{export.task_file}: field head {head!r} is not one of "
                             f"{', '.join(get_args(HeadName))}")
    common = dict(task=task, system_prompt=prompt if isinstance(prompt, str) else None,
                  record=export.task_file, head=head)
    if export.has_adapter:
        base = record.get("base_model")
        if not isinstance(base, str) or not base:
            raise InferenceError(f"{export.task_file}: field base_model is empty; an adapter "
                                 "export needs the model it was trained on")
        return ModelRef(base, _checked_adapter(export.adapter), **common)
    return ModelRef(str(export.path), **common)


def _looks_like_path(source: str) -> bool:
    """A source the user meant as a folder: relative or absolute path syntax, not a hub id."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source \
        or source.endswith("/")
