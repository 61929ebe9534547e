import json
from collections import Counter

import pytest

from nerft.data.example import Example, Rejection
from nerft.data.readers import DataError, detect_format, read_file


def examples_of(path, fmt=None):
    _, rows = read_file(path, fmt)
    rows = list(rows)
    return [r for r in rows if isinstance(r, Example)], [r for r in rows if isinstance(r, Rejection)]


# Counts from each corpus's README in ../shared/data.
@pytest.mark.parametrize("rel, fmt, rows, entities, label, label_count", [
    ("ccfbdci/ccfbdci.jsonl", "ccfbdci", 15724, 12581, "GPE", 4586),
    ("CLUENER2020/cluener_public/dev.json", "cluener", 1343, 3072, "address", 373),
    ("MSRA/msra_test_bio", "conll", 3442, 6190, "LOC", 2886),
    ("PeoplesDaily/example.dev", "conll", 2318, 3819, "ORG", 984),
])
def test_real_corpora_read_completely(shared_data, rel, fmt, rows, entities, label, label_count):
    path = shared_data / rel
    assert detect_format(path) == fmt
    exs, rejected = examples_of(path)
    assert rejected == []
    assert len(exs) == rows
    assert sum(len(e.entities) for e in exs) == entities
    assert Counter(s.label for e in exs for s in e.entities)[label] == label_count
    for e in exs:  # every span agrees with its sentence (end exclusive)
        for s in e.entities:
            assert e.text[s.start:s.end] == s.text


def test_cluener_inclusive_ends_become_exclusive(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"text": "浙商银行叶老桂", "label": {"name": {"叶老桂": [[4, 6]]},
                                                           "company": {"浙商银行": [[0, 3]]}}},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    (ex,), _ = examples_of(f)
    assert [(s.start, s.end, s.text) for s in ex.entities] == [(0, 4, "浙商银行"), (4, 7, "叶老桂")]


@pytest.mark.parametrize("sep, tags, expected", [
    ("\t", "B-LOC I-LOC O B-PER I-PER", [(0, 2, "LOC"), (3, 5, "PER")]),          # BIO, tabs
    (" ", "B-LOC E-LOC O S-PER O", [(0, 2, "LOC"), (3, 4, "PER")]),                # BIOES, spaces
    (" ", "B-ORG M-ORG E-ORG S-LOC O", [(0, 3, "ORG"), (3, 4, "LOC")]),            # BMES
])
def test_conll_tag_schemes(tmp_path, sep, tags, expected):
    chars = "北京在张三"
    f = tmp_path / "t.bio"
    f.write_text("\n".join(f"{c}{sep}{t}" for c, t in zip(chars, tags.split())) + "\n\n",
                 encoding="utf-8")
    (ex,), rej = examples_of(f)
    assert rej == [] and ex.text == chars
    assert [(s.start, s.end, s.label) for s in ex.entities] == expected


def test_conll_broken_sequence_is_repaired_and_reported(tmp_path):
    f = tmp_path / "t.bio"
    f.write_text("上 O\n海 I-LOC\n人 I-PER\n\n", encoding="utf-8")
    (ex,), notes = examples_of(f)
    assert [(s.start, s.end, s.label) for s in ex.entities] == [(1, 2, "LOC"), (2, 3, "PER")]
    assert [(n.action, n.reason, n.line) for n in notes] == [("repaired", "broken_tags", 1)] * 2
    assert "line 2: I-LOC" in notes[0].detail and "line 3: I-PER" in notes[1].detail


def test_conll_unknown_tag_names_its_line(tmp_path):
    f = tmp_path / "t.bio"
    f.write_text("上 O\n海 X-LOC\n\n好 O\n\n", encoding="utf-8")
    (ex,), (rej,) = examples_of(f)
    assert ex.text == "好"
    assert rej.reason == "unknown_tag" and rej.line == 1 and "line 2" in rej.detail
    assert "X-LOC" in rej.one_line() and str(f) in rej.one_line()


def test_unlabeled_file_and_unknown_format_are_clear_errors(tmp_path):
    f = tmp_path / "test.json"
    f.write_text('{"id": 0, "text": "没有标注"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no annotations"):
        read_file(f)
    g = tmp_path / "notes.txt"
    g.write_text("just prose\n", encoding="utf-8")
    with pytest.raises(DataError, match="--format"):
        read_file(g)
    with pytest.raises(DataError, match="no such file"):
        read_file(tmp_path / "missing.jsonl")
