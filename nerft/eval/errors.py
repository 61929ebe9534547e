"""Error analysis: what kind of mistake each wrong span is, and where the mistakes gather.

Pairing, per sentence, in four stages; each stage only sees the golds and predictions that no
earlier stage used, and pairs them with `greedy_match` (larger overlap first, then positions):

1. correct: same start, end and label;
2. ``label``: same start and end, different label;
3. ``boundary``: same label, overlapping but different spans;
4. ``boundary+label``: overlapping spans, different label.

What is left over is an error of its own: a prediction is ``spurious``, a gold span is
``missed``. Each pair in stages 2-4 is one error, so every gold and every prediction is counted
exactly once. A leftover usually overlaps nothing, but it may overlap a span that a better
partner already took (a gold split into two predictions gives one ``boundary`` pair and one
``spurious`` prediction).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from nerft.data.example import Example, Span
from nerft.eval.metrics import f1_of, greedy_match, overlap, ratio

ERROR_KINDS = ("boundary", "label", "boundary+label", "spurious", "missed")
NONE = "(none)"
# Sentence length (characters) at which each bucket starts; the last bucket is open-ended.
LENGTH_EDGES = (0, 20, 40, 80, 160)

_STAGES = (
    ("correct", lambda g, p: (g.start, g.end, g.label) == (p.start, p.end, p.label)),
    ("label", lambda g, p: (g.start, g.end) == (p.start, p.end) and g.label != p.label),
    ("boundary", lambda g, p: g.label == p.label and overlap(g, p) > 0),
    ("boundary+label", lambda g, p: g.label != p.label and overlap(g, p) > 0),
)


@dataclass(frozen=True)
class ErrorItem:
    """One mistake: a pair (`gold`, `pred`), or a lone spurious `pred` or missed `gold`."""

    kind: str
    gold: Span | None = None
    pred: Span | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "ErrorItem":
        return cls(d["kind"], _span(d.get("gold")), _span(d.get("pred")))


def _span(d: dict | None) -> Span | None:
    return None if d is None else Span(d["start"], d["end"], d["label"], d["text"])


@dataclass
class ExampleRecord:
    """One sentence as scored: gold, prediction, the pairs that were right and the errors."""

    id: str
    text: str
    gold: list[Span]
    pred: list[Span]
    correct: int = 0
    errors: list[ErrorItem] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)  # answer parse issues, "kind: detail"

    @classmethod
    def from_dict(cls, d: dict) -> "ExampleRecord":
        return cls(d["id"], d["text"], [_span(s) for s in d["gold"]],
                   [_span(s) for s in d["pred"]], d["correct"],
                   [ErrorItem.from_dict(e) for e in d["errors"]], list(d.get("issues", [])))


def pair_spans(gold: Sequence[Span], pred: Sequence[Span]) -> tuple[list[tuple[Span, Span]],
                                                                      list[ErrorItem]]:
    """Correct (gold, pred) pairs and classified errors for one sentence (see module doc)."""
    used_g: set[int] = set()
    used_p: set[int] = set()
    correct: list[tuple[Span, Span]] = []
    errors: list[ErrorItem] = []
    for kind, accept in _STAGES:
        for gi, pi in greedy_match(gold, pred, accept, used_g, used_p):
            if kind == "correct":
                correct.append((gold[gi], pred[pi]))
            else:
                errors.append(ErrorItem(kind, gold[gi], pred[pi]))
    errors += [ErrorItem("spurious", pred=p) for i, p in enumerate(pred) if i not in used_p]
    errors += [ErrorItem("missed", gold=g) for i, g in enumerate(gold) if i not in used_g]
    errors.sort(key=_error_order)
    return correct, errors


def _error_order(e: ErrorItem) -> tuple:
    s = e.gold or e.pred
    return (s.start, s.end, ERROR_KINDS.index(e.kind), e.pred.start if e.pred else -1)


@dataclass
class Confusion:
    """Gold label (rows) against predicted label (columns) over all pairs; `(none)` last."""

    labels: list[str]
    counts: list[list[int]]


@dataclass
class LengthBucket:
    """Strict micro scores over the sentences whose length lies in [low, high)."""

    name: str
    low: int
    high: int | None
    sentences: int = 0
    support: int = 0
    predicted: int = 0
    tp: int = 0
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0


@dataclass
class ErrorAnalysis:
    counts: dict[str, int]
    confusion: Confusion
    by_length: list[LengthBucket]
    worst: list[ExampleRecord]

    @classmethod
    def from_dict(cls, d: dict) -> "ErrorAnalysis":
        return cls(dict(d["counts"]), Confusion(**d["confusion"]),
                   [LengthBucket(**b) for b in d["by_length"]],
                   [ExampleRecord.from_dict(r) for r in d["worst"]])


def build_records(golds: Sequence[Example], preds: Sequence[Sequence[Span]]) -> list[ExampleRecord]:
    """Pair and classify every sentence."""
    records = []
    for ex, pred in zip(golds, preds):
        correct, errors = pair_spans(ex.entities, pred)
        records.append(ExampleRecord(ex.id, ex.text, sorted(ex.entities), sorted(pred),
                                     len(correct), errors))
    return records


def error_counts(records: Sequence[ExampleRecord]) -> dict[str, int]:
    c = Counter(e.kind for r in records for e in r.errors)
    return {k: c[k] for k in ERROR_KINDS}


def confusion_matrix(records: Sequence[ExampleRecord]) -> Confusion:
    """Counts of (gold label, predicted label) over every pair; missed and spurious use `(none)`."""
    cells: Counter[tuple[str, str]] = Counter()
    for r in records:
        # Correct pairs are not kept one by one; their gold label is what the diagonal needs.
        wrong_gold = Counter(e.gold for e in r.errors if e.gold is not None)
        for g in r.gold:
            if wrong_gold[g]:
                wrong_gold[g] -= 1
            else:
                cells[(g.label, g.label)] += 1
        for e in r.errors:
            cells[(e.gold.label if e.gold else NONE, e.pred.label if e.pred else NONE)] += 1
    labels = sorted({x for pair in cells for x in pair} - {NONE}) + [NONE]
    return Confusion(labels, [[cells[(g, p)] for p in labels] for g in labels])


def by_length(records: Sequence[ExampleRecord], edges: Sequence[int] = LENGTH_EDGES) -> list[LengthBucket]:
    """Strict micro P/R/F1 per sentence-length bucket; empty buckets are kept with zeros."""
    if not edges or edges[0] != 0 or list(edges) != sorted(set(edges)):
        raise ValueError(f"length bucket edges must rise strictly from 0, got {list(edges)}")
    buckets = []
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else None
        name = f"{low}-{high - 1}" if high is not None else f"{low}+"
        buckets.append(LengthBucket(name, low, high))
    for r in records:
        b = next(b for b in reversed(buckets) if len(r.text) >= b.low)
        b.sentences += 1
        b.support += len(r.gold)
        b.predicted += len(r.pred)
        b.tp += r.correct
    for b in buckets:
        b.precision = ratio(b.tp, b.predicted)
        b.recall = ratio(b.tp, b.support)
        b.f1 = f1_of(b.precision, b.recall)
    return buckets


def worst_examples(records: Sequence[ExampleRecord], k: int = 10) -> list[ExampleRecord]:
    """The `k` sentences with the most errors (at least one), ties broken by id as a string."""
    wrong = [r for r in records if r.errors]
    return sorted(wrong, key=lambda r: (-len(r.errors), r.id))[:k]


def analyse(records: Sequence[ExampleRecord], k: int = 10,
            edges: Sequence[int] = LENGTH_EDGES) -> ErrorAnalysis:
    """Error counts by kind, label confusion, F1 by length and the worst sentences."""
    return ErrorAnalysis(error_counts(records), confusion_matrix(records),
                         by_length(records, edges), worst_examples(records, k))
