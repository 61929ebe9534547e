"""`nerft compare`: a regression gate between two models on the same sentences.

Both models decode every sentence of every data set with the same decoder settings; strict
F1 is compared per data set and per label. A paired bootstrap over sentences (the same
resampled sentences scored for both models) gives a 95% interval for "B minus A" in F1
points, so a change a few sentences could flip is visibly not a win. The gate itself reads the
point estimate: B fails when its F1 is lower than A's by more than `max_drop` points on any
data set.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nerft.data.example import Example, Span
from nerft.eval.metrics import ACCEPT, f1_of, greedy_match, ratio, score_corpus

STRICT = ACCEPT["strict"]


def sentence_counts(golds: Sequence[Sequence[Span]], preds: Sequence[Sequence[Span]]) -> list[tuple[int, int, int]]:
    """(matched, predicted, gold) strict counts per sentence: what the bootstrap resamples."""
    return [(len(greedy_match(g, p, STRICT)), len(p), len(g)) for g, p in zip(golds, preds)]


def f1_from(counts: Sequence[tuple[int, int, int]]) -> float:
    tp = sum(c[0] for c in counts)
    return f1_of(ratio(tp, sum(c[1] for c in counts)), ratio(tp, sum(c[2] for c in counts)))


def paired_bootstrap(a: list[tuple[int, int, int]], b: list[tuple[int, int, int]], *,
                     resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(share of resamples where B beats A, low, high): the 2.5/97.5 percentiles of
    F1(B) - F1(A), in points, over `resamples` resamplings of the sentences (both models
    scored on the same draw)."""
    n = len(a)
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(100 * (f1_from([b[i] for i in idx]) - f1_from([a[i] for i in idx])))
    diffs.sort()
    low = diffs[int(0.025 * (resamples - 1))]
    high = diffs[int(round(0.975 * (resamples - 1)))]
    return sum(d > 0 for d in diffs) / resamples, low, high


@dataclass
class DataSetComparison:
    name: str
    sentences: int
    f1_a: float  # strict micro F1, points
    f1_b: float
    ci_low: float  # 95% paired bootstrap interval of f1_b - f1_a, points
    ci_high: float
    b_better_share: float
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        return self.f1_b - self.f1_a


def compare_predictions(name: str, examples: list[Example], preds_a: list[list[Span]],
                        preds_b: list[list[Span]], *, resamples: int = 1000,
                        seed: int = 0) -> DataSetComparison:
    golds = [ex.entities for ex in examples]
    a, b = sentence_counts(golds, preds_a), sentence_counts(golds, preds_b)
    share, low, high = paired_bootstrap(a, b, resamples=resamples, seed=seed)
    labels_a = score_corpus(golds, preds_a, "strict").per_label
    labels_b = score_corpus(golds, preds_b, "strict").per_label
    per_label = {}
    for label in sorted(set(labels_a) | set(labels_b)):
        fa = labels_a[label].f1 if label in labels_a else 0.0
        fb = labels_b[label].f1 if label in labels_b else 0.0
        support = (labels_a.get(label) or labels_b[label]).support
        per_label[label] = {"support": support, "f1_a": 100 * fa, "f1_b": 100 * fb,
                            "delta": 100 * (fb - fa)}
    return DataSetComparison(name, len(examples), 100 * f1_from(a), 100 * f1_from(b), low, high,
                             share, per_label)


@dataclass
class Verdict:
    passed: bool
    reason: str  # one line, printed by the command


def gate(results: list[DataSetComparison], max_drop: float, name_a: str, name_b: str) -> Verdict:
    drops = [r for r in results if r.f1_a - r.f1_b > max_drop]
    if drops:
        worst = max(drops, key=lambda r: r.f1_a - r.f1_b)
        return Verdict(False, f"FAIL: {name_b} is {worst.f1_a - worst.f1_b:.2f} F1 points below "
                       f"{name_a} on {worst.name} ({worst.f1_b:.2f} vs {worst.f1_a:.2f}, 95% CI "
                       f"of the change [{worst.ci_low:+.2f}, {worst.ci_high:+.2f}]); "
                       f"allowed drop {max_drop:g}")
    worst = min(results, key=lambda r: r.delta)
    return Verdict(True, f"PASS: {name_b} is within {max_drop:g} F1 points of {name_a} on every "
                   f"data set (smallest change {worst.delta:+.2f} on {worst.name}, 95% CI "
                   f"[{worst.ci_low:+.2f}, {worst.ci_high:+.2f}])")


def write_report(out: Path, name_a: str, name_b: str, results: list[DataSetComparison],
                 verdict: Verdict, max_drop: float) -> tuple[Path, Path]:
    """compare.json (everything) and compare.md (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"a": name_a, "b": name_b, "max_drop": max_drop, "passed": verdict.passed,
            "reason": verdict.reason,
            "data_sets": [{**r.__dict__, "delta": r.delta} for r in results]}
    (out / "compare.json").write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    lines = [f"# {name_b} against {name_a}", "", verdict.reason, "",
             "Strict micro F1 in points; the interval is a 95% paired bootstrap over sentences "
             "(1000 resamples) of B minus A.", "",
             "| data set | sentences | A | B | B - A | 95% CI | B better in |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in results:
        lines.append(f"| {r.name} | {r.sentences} | {r.f1_a:.2f} | {r.f1_b:.2f} | {r.delta:+.2f} "
                     f"| [{r.ci_low:+.2f}, {r.ci_high:+.2f}] | {r.b_better_share:.0%} |")
    for r in results:
        lines += ["", f"## {r.name}: per label", "", "| label | gold | A | B | B - A |",
                  "|---|---:|---:|---:|---:|"]
        for label, s in r.per_label.items():
            lines.append(f"| {label} | {s['support']} | {s['f1_a']:.2f} | {s['f1_b']:.2f} "
                         f"| {s['delta']:+.2f} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "compare.json", out / "compare.md"


def predict_data_sets(model_ref: str, data_sets: list[tuple[str, list[Example]]], *,
                      batch_size: int = 16, constrained: bool = True,
                      fallback_labels: tuple[str, ...] | None = None,
                      trust_remote_code: bool = False) -> list[list[list[Span]]]:
    """Spans each data set's sentences get from one model (loaded once, then released). A run
    keeps its own labels; `fallback_labels` (the data's) are for a model that has none."""
    from nerft.infer.generate import DecodeOptions
    from nerft.infer.predict import decoder_for, predict_rows
    from nerft.models.loader import load_model

    model, tokenizer, task = load_model(model_ref, fallback_labels=fallback_labels,
                                        trust_remote_code=trust_remote_code)
    generator = decoder_for(model, tokenizer, task)
    options = DecodeOptions(batch_size=batch_size, constrained=constrained)
    out = []
    for _, examples in data_sets:
        decoded = predict_rows(generator, [(ex.id, ex.text) for ex in examples], options)
        out.append([d.entities for d in decoded])
    del model, generator
    return out
