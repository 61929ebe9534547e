"""Load a trained run (or any model) for inference, and turn sentences into entity spans."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from nerft.config import ANSWER_FORMATS
from nerft.export_dir import ExportDir, ExportDirError
from nerft.data.example import Span
from nerft.data.labels import PRESETS
from nerft.infer.generate import AnswerGenerator, DecodeOptions
from nerft.prompt import ParsedAnswer, Task
from nerft.run_dir import RunDir, RunDirError
from nerft.errors import NerftError

DEFAULT_LABELS = tuple(PRESETS["ccfbdci"].values())  # 地点, 人名, 地理实体, 组织: the worked example


class InferenceError(NerftError):
    """A model or input that cannot be used: one line saying what to do (exit code 2)."""


@dataclass
class Prediction:
    id: str
    text: str
    entities: list[Span] = field(default_factory=list)
    answer: str = ""
    parsed: ParsedAnswer | None = field(default=None, repr=False)  # parse issues, for scoring

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "entities": [e.to_dict() for e in self.entities],
                "answer": self.answer}


def load_for_inference(path_or_source: str, labels: tuple[str, ...] | list[str] | None = None, *,
                       fallback_labels: tuple[str, ...] | None = None,
                       trust_remote_code: bool = False):
    """(model, tokenizer, task) from a `nerft train` run directory, a model folder or a source.

    A run directory gives its base model (`config.yaml` model.source) with the adapter in
    `best/` (else `final/`) merged in, or the full model saved there, and its label set
    (`run.json`). Anything else is loaded with `load_model_and_tokenizer`. Labels: explicit
    `labels` win, then the run's, then `fallback_labels`, then the worked example's four.
    `trust_remote_code` comes from the command line only, never from a run's files.
    """
    from nerft.model import load_model_and_tokenizer

    path = Path(path_or_source).expanduser()
    answer_format = "json"  # what a model nerft did not train has never seen otherwise
    if RunDir.is_run(path):
        try:  # read before the weights load, so a bad config.yaml fails at once
            answer_format = RunDir(path).answer_format()
        except RunDirError as e:
            raise InferenceError(str(e)) from e
        model, tokenizer, run_labels = _load_run(RunDir(path), trust_remote_code)
    else:
        if _looks_like_path(path_or_source) and not path.exists():
            raise InferenceError(f"{path_or_source}: no such run or model folder")
        model, tokenizer = load_model_and_tokenizer(path_or_source, trust_remote_code=trust_remote_code)
        run_labels, answer_format = _export_record(path) if path.is_dir() else (None, "json")
    chosen = tuple(labels) if labels else run_labels or fallback_labels or DEFAULT_LABELS
    try:
        task = Task(tuple(chosen), answer_format)
    except ValueError as e:
        raise InferenceError(f"labels {','.join(chosen)}: {e}") from e
    return model, tokenizer, task


def _export_record(folder: Path) -> tuple[tuple[str, ...] | None, str]:
    """The labels and answer format a merged `nerft export` folder records, if it is one
    (exports whose record names no answer format wrote JSON lines)."""
    if not ExportDir.holds_export(folder):
        return None, "json"
    try:
        data = ExportDir(folder).read_task()
    except ExportDirError as e:
        raise InferenceError(str(e)) from e
    labels, answer_format = data.get("labels"), data.get("answer_format")
    answer_format = answer_format if isinstance(answer_format, str) else "json"
    where = ExportDir(folder).task_file
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise InferenceError(f"{where}: field labels must be a list of names")
    if answer_format not in ANSWER_FORMATS:
        raise InferenceError(f"{where}: field answer_format must be one of {', '.join(ANSWER_FORMATS)}")
    return tuple(labels), answer_format


def _looks_like_path(source: str) -> bool:
    """A source the user meant as a folder: relative or absolute path syntax, not a hub id."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source \
        or source.endswith("/")


def _load_run(run: RunDir, trust_remote_code: bool):
    from nerft.model import load_model_and_tokenizer, resolve_model

    try:
        model_cfg, labels, weights = run.model_config(), run.labels(), run.weights()
    except RunDirError as e:
        raise InferenceError(str(e)) from e
    # model_cfg.trust_remote_code is what training was allowed; it is never taken from the
    # file: a model that needs its own code fails to load with a hint to pass the flag.
    source = model_cfg.source
    if (weights / "config.json").is_file():  # full fine-tuning saved the whole model
        tokenizer_folder = weights if (weights / "tokenizer_config.json").is_file() else \
            resolve_model(source, trust_remote_code=trust_remote_code)
        model, tokenizer = load_model_and_tokenizer(str(weights), dtype=model_cfg.dtype,
                                                    trust_remote_code=trust_remote_code,
                                                    tokenizer_folder=tokenizer_folder)
        return model, tokenizer, labels
    if not (weights / "adapter_config.json").is_file():
        raise InferenceError(f"{weights}: neither an adapter (adapter_config.json) nor a model "
                             "(config.json)")
    from peft import PeftModel

    base, tokenizer = load_model_and_tokenizer(source, dtype=model_cfg.dtype,
                                               trust_remote_code=trust_remote_code)
    with warnings.catch_warnings():  # peft calls an API this transformers deprecates: not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(base, weights)
    # Merged weights run as fast as the base model: no extra adapter matmuls per layer.
    return model.merge_and_unload().eval(), tokenizer, labels


# --- sentences in, spans out --------------------------------------------------------------

def read_sentences(path: Path) -> Iterator[tuple[str, str]]:
    """(id, text) from a .jsonl file (a "text" field per row) or a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: no such file")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8").removeprefix("\ufeff").splitlines()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InferenceError(f"{path}:{line}: not UTF-8 text (byte {e.start}); convert the file "
                             "to UTF-8 first") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            yield f"{path.stem}:{lineno}", line
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InferenceError(f"{path}:{lineno}: not JSON ({e.msg}, column {e.colno})") from e
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InferenceError(f"{path}:{lineno}: expected an object with a string \"text\" field")
        yield str(row.get("id", f"{path.stem}:{lineno}")), row["text"]


def predict_rows(generator: AnswerGenerator, rows: list[tuple[str, str]],
                 options: DecodeOptions | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """Generate, then parse with the task's own parser: the one path from sentences to
    spans that `nerft predict`, `nerft eval` and training validation share."""
    texts = [t for _, t in rows]
    answers = generator.decode(texts, options, progress).answers
    out = []
    for (i, t), a in zip(rows, answers):
        parsed = generator.task.parse_answer(a, t)
        out.append(Prediction(i, t, parsed.spans, a, parsed))
    return out


def predict(model, tokenizer, task: Task, rows: list[tuple[str, str]], *, batch_size: int = 16,
            constrained: bool = True, progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """Predictions for (id, text) rows, in order, with a generator built for this call."""
    return predict_rows(AnswerGenerator(model, tokenizer, task), rows,
                        DecodeOptions(batch_size=batch_size, constrained=constrained), progress)
