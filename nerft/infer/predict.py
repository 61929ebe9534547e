"""Load a trained run (or any model) for inference, and turn sentences into entity spans."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

from nerft.data.example import Span
from nerft.data.labels import PRESETS
from nerft.infer.generate import AnswerGenerator
from nerft.prompt import Task, parse_answer

DEFAULT_LABELS = tuple(PRESETS["ccfbdci"].values())  # 地点, 人名, 地理实体, 组织: the worked example
ADAPTER_FOLDERS = ("best", "final")


class InferenceError(Exception):
    """A model or input that cannot be used: one line saying what to do (exit code 2)."""


@dataclass
class Prediction:
    id: str
    text: str
    entities: list[Span] = field(default_factory=list)
    answer: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "entities": [e.to_dict() for e in self.entities],
                "answer": self.answer}


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "run.json").is_file()


def load_for_inference(path_or_source: str, labels: tuple[str, ...] | list[str] | None = None):
    """(model, tokenizer, task) from a `nerft train` run directory, a model folder or a source.

    A run directory gives its base model (`config.yaml` model.source) with the adapter in
    `best/` (else `final/`) merged in, or the full model saved there, and its label set
    (`run.json`). Anything else is loaded with `load_model_and_tokenizer` and uses `labels`,
    the folder's own `run.json`/`nerft.json` labels, or the ccfbdci set. Explicit `labels` win.
    """
    from nerft.model import load_model_and_tokenizer

    path = Path(path_or_source).expanduser()
    if path.is_dir() and is_run_dir(path):
        model, tokenizer, run_labels = _load_run(path)
    else:
        model, tokenizer = load_model_and_tokenizer(path_or_source)
        run_labels = _folder_labels(path) if path.is_dir() else None
    chosen = tuple(labels) if labels else run_labels or DEFAULT_LABELS
    try:
        task = Task(tuple(chosen))
    except ValueError as e:
        raise InferenceError(f"labels {','.join(chosen)}: {e}") from e
    return model, tokenizer, task


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InferenceError(f"{path}: cannot read ({e})") from e
    if not isinstance(data, dict):
        raise InferenceError(f"{path}: expected a JSON object")
    return data


def _folder_labels(folder: Path) -> tuple[str, ...] | None:
    for name in ("run.json", "nerft.json"):
        if (folder / name).is_file():
            found = _read_json(folder / name).get("labels")
            if found:
                return tuple(found)
    return None


def _load_run(run: Path):
    from nerft.model import load_model_and_tokenizer, pick_device, pick_dtype, resolve_model

    try:
        raw = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InferenceError(f"{run / 'config.yaml'}: not valid YAML: {e}") from e
    model_cfg = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("source"), str):
        raise InferenceError(f"{run / 'config.yaml'}: no model.source; is this a `nerft train` run?")
    source, dtype = model_cfg["source"], model_cfg.get("dtype", "auto")
    remote = bool(model_cfg.get("trust_remote_code", False))
    run_labels = _read_json(run / "run.json").get("labels")
    if not run_labels:
        raise InferenceError(f"{run / 'run.json'}: no labels recorded; pass --labels")
    weights = next((run / f for f in ADAPTER_FOLDERS if (run / f).is_dir()), None)
    if weights is None:
        raise InferenceError(f"{run}: no best/ or final/ folder yet; wait for the first "
                             "evaluation of `nerft train`, or pass a model folder")

    if (weights / "config.json").is_file():  # full fine-tuning saved the whole model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok_folder = weights if (weights / "tokenizer_config.json").is_file() else \
            resolve_model(source, trust_remote_code=remote)
        kwargs = {"trust_remote_code": True} if remote else {}
        device = pick_device("auto")
        tokenizer = AutoTokenizer.from_pretrained(tok_folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=pick_dtype(dtype, device), **kwargs)
        return model.to(device).eval(), tokenizer, tuple(run_labels)
    if not (weights / "adapter_config.json").is_file():
        raise InferenceError(f"{weights}: neither an adapter (adapter_config.json) nor a model "
                             "(config.json)")
    from peft import PeftModel

    base, tokenizer = load_model_and_tokenizer(source, dtype=dtype, trust_remote_code=remote)
    with warnings.catch_warnings():  # peft calls an API this transformers deprecates: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(base, weights)
    # Merged weights run as fast as the base model: no extra adapter matmuls per layer.
    return model.merge_and_unload().eval(), tokenizer, tuple(run_labels)


# --- sentences in, spans out --------------------------------------------------------------

def read_sentences(path: Path) -> Iterator[tuple[str, str]]:
    """(id, text) from a .jsonl file (a "text" field per row) or a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: no such file")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not jsonl:
                yield f"{path.stem}:{lineno}", line.rstrip("\r\n")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InferenceError(f"{path}:{lineno}: not JSON ({e.msg}, column {e.colno})") from e
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InferenceError(f"{path}:{lineno}: expected an object with a string \"text\" field")
            yield str(row.get("id", f"{path.stem}:{lineno}")), row["text"]


def predict(model, tokenizer, task: Task, rows: list[tuple[str, str]], *, batch_size: int = 16,
            constrained: bool = True, progress: Callable[[int], None] | None = None,
            generator: AnswerGenerator | None = None) -> list[Prediction]:
    """Predictions for (id, text) rows, in order; entities come from the task's own parser."""
    generator = generator or AnswerGenerator(model, tokenizer, task)
    texts = [t for _, t in rows]
    answers = generator.generate(texts, batch_size=batch_size, constrained=constrained,
                                 progress=progress)
    return [Prediction(i, t, parse_answer(a, t, task.labels).spans, a)
            for (i, t), a in zip(rows, answers)]
