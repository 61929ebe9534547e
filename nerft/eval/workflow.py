"""`nerft eval`: predict a split with one or two models, score, and write the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nerft.data.example import Example, read_examples, write_jsonl
from nerft.data.prepared import PreparedData
from nerft.eval import EvalResult, evaluate
from nerft.errors import NerftError


class EvalInputError(NerftError):
    """Bad data or model reference: one line, exit code 2."""


@dataclass
class ModelEval:
    name: str
    result: EvalResult
    predictions: list[dict]
    seconds: float
    unseen_labels: tuple[str, ...] = ()  # labels of the data the model was never asked for


def load_split(data: Path, split: str, limit: int | None) -> tuple[list[Example], tuple[str, ...] | None]:
    """Examples of a prepared folder's split (or a canonical JSONL file), and its label set."""
    data = Path(data)
    path = PreparedData(data).split(split) if data.is_dir() else data
    if not path.is_file():
        raise EvalInputError(f"{path}: not found; pass a folder from `nerft data prepare` or a "
                             "canonical .jsonl file")
    try:
        examples = list(read_examples(path))[:limit]
    except (json.JSONDecodeError, KeyError) as e:
        raise EvalInputError(f"{path}: not canonical JSONL ({e}); run `nerft data prepare` on it") from None
    if not examples:
        raise EvalInputError(f"{path}: no rows")
    for n, ex in enumerate(examples, 1):
        for span in ex.entities:
            if not (0 <= span.start < span.end <= len(ex.text)) or ex.text[span.start:span.end] != span.text:
                raise EvalInputError(
                    f"{path}:{n}: entity {span.text!r} [{span.start}, {span.end}) does not match "
                    "the text; run `nerft data prepare` on the file to check and repair it")
            if not span.label:
                raise EvalInputError(f"{path}:{n}: an entity has an empty label")
    prepared = PreparedData.of_split_file(path)
    return examples, prepared[0].labels if prepared else None


def evaluate_model(model_ref: str, examples: list[Example], labels: tuple[str, ...] | None, *,
                   name: str, batch_size: int = 16, constrained: bool = True,
                   progress=None, trust_remote_code: bool = False) -> ModelEval:
    """Score a model on examples. A run keeps the label set it was trained with (another data
    folder must not change its task); `labels` (the data's) are for models without one."""
    import time

    from nerft.infer.generate import DecodeOptions
    from nerft.infer.predict import decoder_for, predict_rows
    from nerft.models.loader import load_model

    model, tokenizer, task = load_model(model_ref, fallback_labels=labels,
                                        trust_remote_code=trust_remote_code)
    in_data = labels or tuple(sorted({s.label for ex in examples for s in ex.entities}))
    unseen = tuple(lb for lb in in_data if lb not in task.labels)
    started = time.perf_counter()
    preds = predict_rows(decoder_for(model, tokenizer, task), [(ex.id, ex.text) for ex in examples],
                         DecodeOptions(batch_size=batch_size, constrained=constrained), progress)
    seconds = time.perf_counter() - started
    result = evaluate(examples, [p.entities for p in preds], [p.parsed for p in preds])
    predictions = [{**p.to_dict(), "gold": [s.to_dict() for s in ex.entities]}
                   for ex, p in zip(examples, preds)]
    return ModelEval(name, result, predictions, seconds, unseen)


def write_outputs(evals: list[ModelEval], out_dir: Path, title: str) -> tuple[Path, Path]:
    from nerft.eval import render_report

    out_dir.mkdir(parents=True, exist_ok=True)
    for i, ev in enumerate(evals):
        suffix = "" if i == 0 else f"-{_slug(ev.name)}"
        ev.result.write_json(out_dir / f"metrics{suffix}.json")
        write_jsonl(out_dir / f"predictions{suffix}.jsonl", ev.predictions)
    return render_report({ev.name: ev.result for ev in evals}, out_dir, title=title)


def model_name(ref: str) -> str:
    path = Path(ref)
    return path.name if path.exists() else ref


def distinct_model_names(ref_a: str, ref_b: str) -> tuple[str, str]:
    """Names for two models side by side: their folder names, with as many parent folders as it
    takes to tell two different folders of the same name apart (`g-off/runs/cluener-640` against
    `g-on/runs/cluener-640`); the same model twice is "A (name)" and "B (name)"."""
    a, b = model_name(ref_a), model_name(ref_b)
    if a != b:
        return a, b
    parts_a, parts_b = Path(ref_a).resolve().parts, Path(ref_b).resolve().parts
    if Path(ref_a).exists() and Path(ref_b).exists() and parts_a != parts_b:
        for k in range(2, max(len(parts_a), len(parts_b)) + 1):
            tail_a, tail_b = "/".join(parts_a[-k:]), "/".join(parts_b[-k:])
            if tail_a != tail_b:
                return tail_a, tail_b
    return f"A ({a})", f"B ({b})"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
