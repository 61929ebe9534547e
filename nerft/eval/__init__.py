"""The evaluation stage: gold and predicted spans in, scores, error analysis and reports out.

`evaluate` is the one entry point; `EvalResult` is what it returns and what `metrics.json`
holds, so a saved run can be loaded back with `EvalResult.from_json` and compared.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from nerft.atomic import write_text
from nerft.data.example import Example, Span
from nerft.eval.errors import ErrorAnalysis, ExampleRecord, analyse, build_records
from nerft.eval.metrics import MODES, AnswerRates, ModeScores, answer_rates, score_corpus
from nerft.task.prompt import ParsedAnswer

__all__ = ["EvalResult", "evaluate", "render_report", "summary_table", "MODES"]


@dataclass
class EvalResult:
    """Scores under every matching mode, answer rates, error analysis and per-sentence records."""

    sentences: int
    scores: dict[str, ModeScores]
    errors: ErrorAnalysis
    examples: list[ExampleRecord] = field(default_factory=list)
    answers: AnswerRates | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    def write_json(self, path: Path) -> Path:
        """Write `metrics.json` (or any path) atomically."""
        path = Path(path)
        write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        return cls(
            sentences=d["sentences"],
            scores={m: ModeScores.from_dict(s) for m, s in d["scores"].items()},
            errors=ErrorAnalysis.from_dict(d["errors"]),
            examples=[ExampleRecord.from_dict(r) for r in d.get("examples", [])],
            answers=AnswerRates(**d["answers"]) if d.get("answers") else None,
        )

    @classmethod
    def from_json(cls, path: Path) -> "EvalResult":
        """Load a `metrics.json` written by `write_json`."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a metrics.json written by nerft eval ({e!r}); "
                             "re-run the evaluation to regenerate it") from e


def evaluate(golds: Sequence[Example], preds: Sequence[Sequence[Span]],
             answers: Sequence[ParsedAnswer] | None = None, worst: int = 10) -> EvalResult:
    """Score `preds[i]` against `golds[i].entities`; `answers`, when given, adds answer rates."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold examples but {len(preds)} predictions: "
                         "predictions must be given for every example, in the same order")
    if answers is not None and len(answers) != len(golds):
        raise ValueError(f"{len(golds)} gold examples but {len(answers)} parsed answers")
    gold_spans = [ex.entities for ex in golds]
    scores = {m: score_corpus(gold_spans, preds, m) for m in MODES}
    records = build_records(golds, preds)
    if answers is not None:
        for rec, ans in zip(records, answers):
            rec.issues = [f"{i.kind}: {i.detail}" for i in ans.issues]
    return EvalResult(
        sentences=len(golds),
        scores=scores,
        errors=analyse(records, k=worst),
        examples=records,
        answers=answer_rates(answers) if answers is not None else None,
    )


def __getattr__(name: str):
    # The report pulls in matplotlib and rich; load it only when someone asks for it.
    if name in ("render_report", "summary_table"):
        from nerft.eval import report

        return getattr(report, name)
    raise AttributeError(f"module 'nerft.eval' has no attribute {name!r}")
