import json
import random

import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from nerft.data.example import Example, Span
from nerft.data.conll import read_conll
from nerft.eval import EvalResult, evaluate
from nerft.eval.metrics import answer_rates, score_corpus
from nerft.task.prompt import NO_ENTITY, parse_answer

TEXT = "ABCDEFGHIJKLMNOPQRST"


def sp(start, end, label, text=TEXT):
    return Span(start, end, label, text[start:end])


# One sentence with one case of each kind of mistake:
#   G1 = P1 exact; G2/P2 boundary; G3/P3 label; G4/P4 boundary+label; P6 spurious; G5 missed.
GOLD = [sp(0, 3, "PER"), sp(5, 8, "LOC"), sp(10, 12, "ORG"), sp(14, 16, "PER"), sp(18, 20, "LOC")]
PRED = [sp(0, 3, "PER"), sp(5, 9, "LOC"), sp(10, 12, "PER"), sp(13, 16, "ORG"), sp(16, 18, "ORG")]


def test_strict_counts_only_exact_span_and_label():
    s = score_corpus([GOLD], [PRED], "strict")
    assert (s.micro.tp, s.micro.fp, s.micro.fn) == (1, 4, 4)
    assert (s.micro.precision, s.micro.recall, s.micro.f1) == pytest.approx((0.2, 0.2, 0.2))
    per = {k: (v.support, v.predicted, v.tp, v.fp, v.fn, v.f1) for k, v in s.per_label.items()}
    assert per == {"LOC": (2, 1, 0, 1, 2, 0.0), "ORG": (1, 2, 0, 2, 1, 0.0),
                   "PER": (2, 2, 1, 1, 1, 0.5)}
    assert s.macro.f1 == pytest.approx(0.5 / 3)
    assert s.macro.precision == pytest.approx(0.5 / 3)


def test_partial_accepts_overlap_with_same_label():
    s = score_corpus([GOLD], [PRED], "partial")
    assert (s.micro.tp, s.micro.fp, s.micro.fn) == (2, 3, 3)
    assert s.micro.f1 == pytest.approx(0.4)
    loc = s.per_label["LOC"]
    assert (loc.precision, loc.recall) == (1.0, 0.5)
    assert loc.f1 == pytest.approx(2 / 3)
    assert s.macro.f1 == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)


def test_type_free_ignores_label_but_not_boundaries():
    s = score_corpus([GOLD], [PRED], "type_free")
    assert (s.micro.tp, s.micro.fp, s.micro.fn) == (2, 3, 3)
    assert (s.micro.precision, s.micro.recall) == pytest.approx((0.4, 0.4))
    # The PER prediction on the ORG span counts for ORG's recall and PER's precision.
    per, org = s.per_label["PER"], s.per_label["ORG"]
    assert (per.tp, per.fp, per.precision, per.recall) == (1, 0, 1.0, 0.5)
    assert (org.tp, org.fp, org.precision, org.recall) == (1, 2, 0.0, 1.0)


def test_partial_uses_each_gold_and_prediction_once_largest_overlap_first():
    text = "ABCDEFGH"
    gold = [Span(0, 6, "PER", text[0:6])]
    pred = [Span(0, 2, "PER", text[0:2]), Span(2, 6, "PER", text[2:6])]
    s = score_corpus([gold], [pred], "partial")
    assert (s.micro.tp, s.micro.fp, s.micro.fn) == (1, 1, 0)
    # One prediction across two golds pairs with the one it overlaps more.
    gold = [Span(0, 4, "PER", text[0:4]), Span(4, 8, "PER", text[4:8])]
    pred = [Span(2, 8, "PER", text[2:8])]
    s = score_corpus([gold], [pred], "partial")
    assert (s.micro.tp, s.micro.fp, s.micro.fn) == (1, 0, 1)


def test_duplicate_prediction_is_a_false_positive():
    gold = [sp(0, 3, "PER")]
    s = score_corpus([gold], [[sp(0, 3, "PER"), sp(0, 3, "PER")]], "strict")
    assert (s.micro.tp, s.micro.fp, s.micro.precision, s.micro.recall) == (1, 1, 0.5, 1.0)
    # type_free prefers the same-label prediction when two share the gold span.
    s = score_corpus([gold], [[sp(0, 3, "ORG"), sp(0, 3, "PER")]], "type_free")
    assert (s.per_label["PER"].fp, s.per_label["ORG"].fp) == (0, 1)


def test_zero_division_gives_zero():
    s = score_corpus([[]], [[]], "strict")
    assert (s.micro.precision, s.micro.recall, s.micro.f1, s.macro.f1) == (0.0, 0.0, 0.0, 0.0)
    assert s.per_label == {}
    s = score_corpus([[]], [[sp(0, 2, "PER")]], "partial")
    assert (s.micro.precision, s.micro.recall, s.micro.f1, s.micro.fp) == (0.0, 0.0, 0.0, 1)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 gold examples but 1 predictions"):
        evaluate([Example("a", TEXT), Example("b", TEXT)], [[]])
    with pytest.raises(ValueError, match="unknown matching mode"):
        score_corpus([[]], [[]], "loose")


def test_answer_rates_count_format_and_hallucination():
    s = "小明在北京工作"
    answers = [
        parse_answer('{"entity_text":"小明","entity_label":"人名"}\n'
                     '{"entity_text":"上海","entity_label":"地名"}', s),  # one hallucinated
        parse_answer("小明是人名", s),  # not in the format
        parse_answer(NO_ENTITY, s),
        parse_answer('{"entity_text":"北京","entity_label":"城市"}', s, ("人名", "地名")),
    ]
    r = answer_rates(answers)
    assert (r.answers, r.well_formed, r.parse_rate) == (4, 3, 0.75)
    assert (r.mentions, r.hallucinated) == (3, 1)
    assert r.hallucination_rate == pytest.approx(1 / 3)
    assert r.issues == {"malformed": 1, "not_in_text": 1, "unknown_label": 1}


def test_evaluate_round_trips_through_metrics_json(tmp_path):
    s = "小明在北京工作"
    gold = [Example("x:1", s, [Span(0, 2, "人名", "小明"), Span(3, 5, "地名", "北京")])]
    answer = parse_answer('{"entity_text":"小明","entity_label":"人名"}', s)
    result = evaluate(gold, [answer.spans], [answer])
    assert result.scores["strict"].micro.recall == 0.5
    assert result.answers.parse_rate == 1.0
    path = result.write_json(tmp_path / "metrics.json")
    assert json.loads(path.read_text(encoding="utf-8"))["scores"]["strict"]["micro"]["tp"] == 1
    assert EvalResult.from_json(path) == result
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        EvalResult.from_json(tmp_path / "bad.json")


# ---------------------------------------------------------------- agreement with seqeval

def _ccfbdci(shared_data, rows=2000):
    examples = []
    with open(shared_data / "ccfbdci" / "ccfbdci.jsonl", encoding="utf-8") as f:
        for i, line in zip(range(rows), f):
            row = json.loads(line)
            spans = [Span(e["start_idx"], e["end_idx"], e["entity_label"], e["entity_text"])
                     for e in row["entities"]]
            examples.append(Example(f"ccfbdci:{i + 1}", row["text"], spans))
    return examples


def _msra_test(shared_data):
    rows = list(read_conll(shared_data / "MSRA" / "msra_test_bio"))
    examples = [r for r in rows if isinstance(r, Example)]
    assert len(examples) == len(rows) == 3442
    return examples


def _perturb(ex: Example, labels: list[str], rng: random.Random) -> list[Span]:
    """Drop, shift, relabel and invent entities; keep the result representable as BIO."""
    n = len(ex.text)
    out = []
    for s in ex.entities:
        start, end, label = s.start, s.end, s.label
        roll = rng.random()
        if roll < 0.1:
            continue
        if roll < 0.2:
            start, end = (start + 1, end) if end - start > 1 else (start, end + 1)
        elif roll < 0.3:
            start, end = start - 1, end - 1
        elif roll < 0.4:
            label = labels[(labels.index(label) + 1) % len(labels)]
        out.append((start, end, label))
    for _ in range(rng.choice((0, 0, 1, 2))):
        start = rng.randrange(n)
        out.append((start, start + rng.choice((1, 2, 3)), rng.choice(labels)))
    spans, last_end = [], 0
    for start, end, label in sorted(out):
        if start >= last_end and 0 <= start < end <= n:
            spans.append(Span(start, end, label, ex.text[start:end]))
            last_end = end
    return spans


def _bio(n: int, spans: list[Span]) -> list[str]:
    tags = ["O"] * n
    for s in spans:
        assert all(t == "O" for t in tags[s.start:s.end]), f"overlapping spans at {s}"
        tags[s.start:s.end] = [f"B-{s.label}"] + [f"I-{s.label}"] * (s.end - s.start - 1)
    return tags


@pytest.mark.parametrize("corpus", ["ccfbdci", "msra"])
def test_strict_scores_equal_seqeval_on_real_data(shared_data, corpus):
    golds = _ccfbdci(shared_data) if corpus == "ccfbdci" else _msra_test(shared_data)
    labels = sorted({s.label for ex in golds for s in ex.entities})
    rng = random.Random(20240601)
    preds = [_perturb(ex, labels, rng) for ex in golds]
    y_true = [_bio(len(ex.text), ex.entities) for ex in golds]
    y_pred = [_bio(len(ex.text), p) for ex, p in zip(golds, preds)]

    ours = score_corpus([ex.entities for ex in golds], preds, "strict")
    assert 0.5 < ours.micro.f1 < 0.9  # the perturbation really does change things
    # With clean BIO (every entity opens with B-), seqeval's default conlleval-style decoding
    # and its strict IOB2 mode read exactly the spans written, so both must agree with us.
    for kwargs in ({}, {"mode": "strict", "scheme": IOB2}):
        assert ours.micro.precision == pytest.approx(precision_score(y_true, y_pred, **kwargs), abs=1e-9)
        assert ours.micro.recall == pytest.approx(recall_score(y_true, y_pred, **kwargs), abs=1e-9)
        assert ours.micro.f1 == pytest.approx(f1_score(y_true, y_pred, **kwargs), abs=1e-9)
        report = classification_report(y_true, y_pred, output_dict=True, **kwargs)
        per_label = {k: v for k, v in report.items() if not k.endswith(" avg")}
        assert set(per_label) == set(ours.per_label)
        for label, theirs in per_label.items():
            mine = ours.per_label[label]
            assert mine.support == theirs["support"]
            assert mine.precision == pytest.approx(theirs["precision"], abs=1e-9)
            assert mine.recall == pytest.approx(theirs["recall"], abs=1e-9)
            assert mine.f1 == pytest.approx(theirs["f1-score"], abs=1e-9)
        assert ours.macro.f1 == pytest.approx(report["macro avg"]["f1-score"], abs=1e-9)
