import pytest

from nerft.data.example import Example, Span
from nerft.eval import evaluate
from nerft.eval.errors import ERROR_KINDS, ErrorItem, by_length, pair_spans, worst_examples

TEXT = "ABCDEFGHIJKLMNOPQRST"


def sp(start, end, label, text=TEXT):
    return Span(start, end, label, text[start:end])


# G1 = P1 exact; G2/P2 boundary; G3/P3 label; G4/P4 boundary+label; P6 spurious; G5 missed.
GOLD = [sp(0, 3, "PER"), sp(5, 8, "LOC"), sp(10, 12, "ORG"), sp(14, 16, "PER"), sp(18, 20, "LOC")]
PRED = [sp(0, 3, "PER"), sp(5, 9, "LOC"), sp(10, 12, "PER"), sp(13, 16, "ORG"), sp(16, 18, "ORG")]


def test_every_error_class_once():
    correct, errors = pair_spans(GOLD, PRED)
    assert correct == [(GOLD[0], PRED[0])]
    assert errors == [
        ErrorItem("boundary", GOLD[1], PRED[1]),
        ErrorItem("label", GOLD[2], PRED[2]),
        ErrorItem("boundary+label", GOLD[3], PRED[3]),
        ErrorItem("spurious", pred=PRED[4]),
        ErrorItem("missed", gold=GOLD[4]),
    ]


def test_each_gold_and_prediction_is_used_once():
    # Same span with a wrong label is paired before a same-label boundary error.
    gold = [sp(0, 4, "PER")]
    _, errors = pair_spans(gold, [sp(0, 3, "PER"), sp(0, 4, "ORG")])
    # (Errors are listed in sentence order.)
    assert errors == [ErrorItem("spurious", pred=sp(0, 3, "PER")),
                      ErrorItem("label", gold[0], sp(0, 4, "ORG"))]
    # A gold split in two: the larger piece is the boundary error, the other is spurious.
    _, errors = pair_spans(gold, [sp(0, 1, "PER"), sp(1, 4, "PER")])
    assert errors == [ErrorItem("spurious", pred=sp(0, 1, "PER")),
                      ErrorItem("boundary", gold[0], sp(1, 4, "PER"))]
    # Input order does not change the pairing.
    assert pair_spans(gold, [sp(1, 4, "PER"), sp(0, 1, "PER")])[1] == errors


def test_counts_and_confusion_matrix():
    result = evaluate([Example("s", TEXT, GOLD)], [PRED])
    assert result.errors.counts == dict.fromkeys(ERROR_KINDS, 1)
    cm = result.errors.confusion
    assert cm.labels == ["LOC", "ORG", "PER", "(none)"]
    assert cm.counts == [
        # LOC ORG PER none   (predicted)
        [1, 0, 0, 1],  # LOC: boundary error, missed
        [0, 0, 1, 0],  # ORG: labelled PER
        [0, 1, 1, 0],  # PER: correct, boundary+label as ORG
        [0, 1, 0, 0],  # (none): spurious ORG
    ]
    assert sum(map(sum, cm.counts)) == 6  # 1 correct + 5 errors, each once


def test_f1_by_sentence_length():
    short = Example("short", "ABCDE", [sp(0, 2, "PER", "ABCDE")])
    long_text = "X" * 25
    long = Example("long", long_text, [sp(0, 2, "PER", long_text), sp(5, 7, "LOC", long_text)])
    result = evaluate([short, long], [[sp(0, 2, "PER", "ABCDE")], [sp(0, 2, "PER", long_text)]])
    buckets = {b.name: b for b in result.errors.by_length}
    assert list(buckets) == ["0-19", "20-39", "40-79", "80-159", "160+"]
    assert (buckets["0-19"].sentences, buckets["0-19"].f1) == (1, 1.0)
    b = buckets["20-39"]
    assert (b.sentences, b.support, b.predicted, b.tp, b.precision, b.recall) == (1, 2, 1, 1, 1.0, 0.5)
    assert b.f1 == pytest.approx(2 / 3)
    assert buckets["160+"].sentences == 0 and buckets["160+"].f1 == 0.0
    with pytest.raises(ValueError, match="rise strictly from 0"):
        by_length(result.examples, (5, 10))


def test_worst_examples_most_errors_first_ties_by_id():
    golds = [Example("b", TEXT, [sp(0, 2, "PER")]), Example("a", TEXT, [sp(0, 2, "PER")]),
             Example("c", TEXT, GOLD), Example("d", TEXT, [sp(0, 2, "PER")])]
    preds = [[], [], PRED, [sp(0, 2, "PER")]]
    result = evaluate(golds, preds)
    assert [(r.id, len(r.errors)) for r in result.errors.worst] == [("c", 5), ("a", 1), ("b", 1)]
    assert worst_examples(result.examples, k=1)[0].id == "c"
    worst = result.errors.worst[0]
    assert worst.gold == sorted(GOLD) and worst.pred == sorted(PRED) and worst.correct == 1
