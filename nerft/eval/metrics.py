"""Entity-level precision, recall and F1 under three matching modes, and answer-level rates.

Modes, each pairing a gold span with at most one prediction and a prediction with at most one
gold span:

- ``strict``: same start, end and label.
- ``partial``: same label and the spans overlap (share at least one character).
- ``type_free``: same start and end, any label.

Pairs are chosen greedily (see `greedy_match`), which for ``strict`` and ``type_free`` is
always a maximum matching; for ``partial`` it prefers the larger overlap and can, in rare
crossing cases, pair fewer spans than the best possible assignment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from nerft.data.example import Span
from nerft.task.prompt import ParsedAnswer

MODES = ("strict", "partial", "type_free")

# Issue kinds that stand for an entity the model did write, though it could not be placed.
MENTION_ISSUES = ("not_in_text", "extra_mention", "unknown_label")


def overlap(a: Span, b: Span) -> int:
    """Number of characters two spans share (0 when disjoint)."""
    return max(0, min(a.end, b.end) - max(a.start, b.start))


def greedy_match(
    gold: Sequence[Span],
    pred: Sequence[Span],
    accept: Callable[[Span, Span], bool],
    used_gold: set[int] | None = None,
    used_pred: set[int] | None = None,
) -> list[tuple[int, int]]:
    """Pair indices of `gold` and `pred` that `accept` allows, each index used at most once.

    Candidates are taken in order of larger overlap first, then same label first, then by the
    gold span's (start, end, label), the prediction's (start, end, label), and list position,
    so the result does not depend on how the lists are ordered. `used_gold` / `used_pred` are
    indices already taken by an earlier stage; they are updated in place.
    """
    used_gold = set() if used_gold is None else used_gold
    used_pred = set() if used_pred is None else used_pred
    candidates = []
    for gi, g in enumerate(gold):
        if gi in used_gold:
            continue
        for pi, p in enumerate(pred):
            if pi not in used_pred and accept(g, p):
                candidates.append((-overlap(g, p), g.label != p.label,
                                   g.start, g.end, g.label, p.start, p.end, p.label, gi, pi))
    candidates.sort()
    pairs = []
    for *_, gi, pi in candidates:
        if gi in used_gold or pi in used_pred:
            continue
        used_gold.add(gi)
        used_pred.add(pi)
        pairs.append((gi, pi))
    return pairs


ACCEPT: dict[str, Callable[[Span, Span], bool]] = {
    "strict": lambda g, p: (g.start, g.end, g.label) == (p.start, p.end, p.label),
    "partial": lambda g, p: g.label == p.label and overlap(g, p) > 0,
    "type_free": lambda g, p: (g.start, g.end) == (p.start, p.end),
}


def ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def f1_of(precision: float, recall: float) -> float:
    return ratio(2 * precision * recall, precision + recall)


@dataclass
class Counts:
    """Scores for one label or for the whole corpus (micro).

    `tp` counts gold mentions found, `fp` predictions that found nothing, `fn` gold mentions
    missed; `support` is the gold count and `predicted` the prediction count. Precision is
    `(predicted - fp) / predicted`, recall `tp / support`. Under ``type_free`` a label's found
    golds and its matched predictions can differ (a PER prediction on an ORG span counts for
    ORG's recall and PER's precision), so `tp + fp` need not equal `predicted` per label; in
    the other modes, and for micro totals, it always does.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    support: int = 0
    predicted: int = 0
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0

    def finish(self) -> "Counts":
        self.fn = self.support - self.tp
        self.precision = ratio(self.predicted - self.fp, self.predicted)
        self.recall = ratio(self.tp, self.support)
        self.f1 = f1_of(self.precision, self.recall)
        return self


@dataclass
class Macro:
    """Unweighted mean over the labels present in gold or predictions."""

    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0


@dataclass
class ModeScores:
    mode: str
    micro: Counts
    macro: Macro
    per_label: dict[str, Counts] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ModeScores":
        return cls(d["mode"], Counts(**d["micro"]), Macro(**d["macro"]),
                   {k: Counts(**v) for k, v in d["per_label"].items()})


def score_corpus(golds: Sequence[Sequence[Span]], preds: Sequence[Sequence[Span]],
                 mode: str) -> ModeScores:
    """Micro, macro and per-label scores of `preds` against `golds`, sentence by sentence."""
    if mode not in ACCEPT:
        raise ValueError(f"unknown matching mode {mode!r}; choose one of {', '.join(MODES)}")
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold sentences but {len(preds)} predicted ones")
    per_label: dict[str, Counts] = {}

    def at(label: str) -> Counts:
        return per_label.setdefault(label, Counts())

    for gold, pred in zip(golds, preds):
        for g in gold:
            at(g.label).support += 1
        for p in pred:
            at(p.label).predicted += 1
        used_pred: set[int] = set()
        for gi, pi in greedy_match(gold, pred, ACCEPT[mode], used_pred=used_pred):
            at(gold[gi].label).tp += 1
        for pi, p in enumerate(pred):
            if pi not in used_pred:
                at(p.label).fp += 1
    micro = Counts()
    for c in per_label.values():
        c.finish()
        micro.tp += c.tp
        micro.fp += c.fp
        micro.support += c.support
        micro.predicted += c.predicted
    micro.finish()
    labels = sorted(per_label)
    n = len(labels)
    macro = Macro(
        ratio(sum(per_label[x].precision for x in labels), n),
        ratio(sum(per_label[x].recall for x in labels), n),
        ratio(sum(per_label[x].f1 for x in labels), n),
    )
    return ModeScores(mode, micro, macro, {x: per_label[x] for x in labels})


@dataclass
class AnswerRates:
    """How well the raw answers kept to the format.

    `mentions` counts every entity the answers wrote that could be read as an object with both
    fields: the spans placed plus the ones that could not be placed (text not in the sentence,
    one mention too many, unknown label). `hallucinated` counts those whose text is not in the
    sentence at all.
    """

    answers: int = 0
    well_formed: int = 0
    parse_rate: float = 0.0
    mentions: int = 0
    hallucinated: int = 0
    hallucination_rate: float = 0.0
    issues: dict[str, int] = field(default_factory=dict)


def answer_rates(answers: Iterable[ParsedAnswer]) -> AnswerRates:
    """Parse rate, hallucination rate and issue counts by kind over parsed answers."""
    rates = AnswerRates()
    kinds: Counter[str] = Counter()
    for a in answers:
        rates.answers += 1
        rates.well_formed += a.well_formed
        rates.mentions += len(a.spans)
        for issue in a.issues:
            kinds[issue.kind] += 1
            rates.mentions += issue.kind in MENTION_ISSUES
        rates.hallucinated += len(a.hallucinated)
    rates.parse_rate = ratio(rates.well_formed, rates.answers)
    rates.hallucination_rate = ratio(rates.hallucinated, rates.mentions)
    rates.issues = dict(sorted(kinds.items()))
    return rates
