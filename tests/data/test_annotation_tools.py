"""Label Studio and doccano in and out: the files nerft writes for them, and their exports read
back by `nerft data prepare`.

The exports here are written by hand in the shapes the tools document and write: Label
Studio's JSON export (a list of tasks with `annotations`; an annotation accepted unchanged
from a prediction carries the prediction's result with `origin: prediction`), doccano's
sequence-labeling JSONL (`label: [[start, end, label]]`, or `entities` with relations on).
"""

import json

import pytest

from annotation_exports import doccano_export, label_studio_export
from corpus_fixtures import RESUME, RESUME_MAP, conll_text, read_jsonl, stats_of
from nerft.data.annotation_formats import (PreAnnotated, codepoint_offset, config_path,
                                           utf16_offset, write_for_tool)
from nerft.data.example import Example, Rejection, Span
from nerft.data.prepared import PreparedData
from nerft.data.readers import DataError, detect_format, read_file

# Label Studio's own editor test ("NER - Emoji - Text") selects `test` here and expects
# start 21, end 25: code points, not the browser's UTF-16 offsets (22, 26).
LS_EMOJI_TEXT, LS_EMOJI_SPAN = "🐱 Warning: This is a test text", (21, 25)
# doccano issue 2290: in this text doccano stores `firetrucks` as [22, 32), Python's [19, 29).
DOCCANO_EMOJI_TEXT = "👨🏻‍🚒 firemen drive firetrucks"
DOCCANO_UNITS, DOCCANO_POINTS = (22, 32), (19, 29)


def rows_and_notes(path, fmt=None):
    _, rows = read_file(path, fmt)
    rows = list(rows)
    return [r for r in rows if isinstance(r, Example)], [r for r in rows if isinstance(r, Rejection)]


def span_tuples(ex):
    return [(s.start, s.end, s.label, s.text) for s in ex.entities]


# --- offsets ------------------------------------------------------------------------------------

def test_offsets_are_what_each_tool_writes_around_characters_outside_the_bmp(tmp_path):
    # Label Studio: code points, so nerft's offsets go out and come back unchanged.
    start, end = LS_EMOJI_SPAN
    assert LS_EMOJI_TEXT[start:end] == "test"
    out = tmp_path / "ls.json"
    write_for_tool(out, [PreAnnotated("e:1", LS_EMOJI_TEXT, [Span(start, end, "X", "test")])],
                   "label-studio", ["X"], "run")
    (task,) = json.loads(out.read_text(encoding="utf-8"))
    assert task["predictions"][0]["result"][0]["value"] == {
        "start": 21, "end": 25, "text": "test", "labels": ["X"]}
    export = tmp_path / "ls-export.json"
    export.write_text(json.dumps(label_studio_export(out), ensure_ascii=False), encoding="utf-8")
    (ex,), _ = rows_and_notes(export)
    assert span_tuples(ex) == [(21, 25, "X", "test")]

    # doccano: UTF-16 code units, converted both ways.
    s, e = DOCCANO_POINTS
    assert DOCCANO_EMOJI_TEXT[s:e] == "firetrucks"
    assert (utf16_offset(DOCCANO_EMOJI_TEXT, s), utf16_offset(DOCCANO_EMOJI_TEXT, e)) == DOCCANO_UNITS
    out = tmp_path / "doccano.jsonl"
    write_for_tool(out, [PreAnnotated("e:2", DOCCANO_EMOJI_TEXT, [Span(s, e, "X", "firetrucks")])],
                   "doccano", ["X"], "run")
    assert read_jsonl(out)[0]["label"] == [[22, 32, "X"]]
    export = tmp_path / "doccano-export.jsonl"
    export.write_text(doccano_export(out), encoding="utf-8")
    (ex,), _ = rows_and_notes(export)
    assert span_tuples(ex) == [(19, 29, "X", "firetrucks")]

    # A CJK Extension B character (𠮷, U+20BB7) is two UTF-16 units as well.
    text = "𠮷野家开到了东京"
    assert [utf16_offset(text, i) for i in (0, 1, 6, 8)] == [0, 2, 7, 9]
    assert [codepoint_offset(text, u) for u in (0, 2, 7, 9)] == [0, 1, 6, 8]
    assert codepoint_offset(text, 1) is None  # between the two halves of 𠮷
    assert codepoint_offset(text, 12) == 11  # past the end stays past the end


def test_doccano_offset_inside_a_character_is_rejected_naming_the_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"id": 1, "text": "😀北京", "label": [[1, 4, "地点"]]},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    exs, (rej,) = rows_and_notes(f)
    assert exs == [] and rej.line == 1 and rej.reason == "span_splits_character"
    assert "label[0].'start_offset' = 1" in rej.detail and "grapheme" in rej.detail


# --- round trips: a prepared corpus out to the tool and back ------------------------------------

@pytest.fixture
def prepared_corpus(tmp_path, cli):
    """A prepared corpus (résumé sentences, Chinese names) plus rows with an emoji and a CJK
    Extension B character before an entity."""
    src = tmp_path / "resume.char.bmes"
    src.write_text(conll_text(RESUME, "BMES"), encoding="utf-8")
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"id": "x1", "text": "😀王建国去了杭州。", "entities": [
            {"start": 1, "end": 4, "label": "人名", "text": "王建国"},
            {"start": 6, "end": 8, "label": "地点", "text": "杭州"}]},
        {"id": "x2", "text": "𠮷野家的刘晓梅🎉在东京开会。", "entities": [
            {"start": 4, "end": 7, "label": "人名", "text": "刘晓梅"},
            {"start": 9, "end": 11, "label": "地点", "text": "东京"}]},
    ]), encoding="utf-8")
    out = tmp_path / "prepared"
    res = cli("data", "prepare", src, extra, "--out", out, "--label-map", RESUME_MAP)
    assert res.exit_code == 0, res.output
    data = PreparedData.open(out)
    rows = [ex for split in ("train", "val", "test") for ex in data.rows(split)]
    assert len(rows) == len(RESUME) + 2
    return rows, data.labels


def as_set(rows):
    return {(ex.text, tuple(span_tuples(ex))) for ex in rows}


@pytest.mark.parametrize("tool", ["label-studio", "doccano", "doccano-relations"])
def test_prepared_corpus_round_trips_through_the_tool(tmp_path, cli, prepared_corpus, tool):
    rows, labels = prepared_corpus
    fmt = "doccano" if tool.startswith("doccano") else tool
    tasks = tmp_path / ("tasks.json" if fmt == "label-studio" else "tasks.jsonl")
    config = write_for_tool(tasks, [PreAnnotated(ex.id, ex.text, ex.entities, 0.9, {"rank": i})
                                    for i, ex in enumerate(rows, 1)], fmt, labels, "resume-run")
    assert config == config_path(tasks, fmt) and config.is_file()
    export = tmp_path / ("export.json" if fmt == "label-studio" else "export.jsonl")
    if fmt == "label-studio":
        export.write_text(json.dumps(label_studio_export(tasks), ensure_ascii=False, indent=2),
                          encoding="utf-8")
    else:
        export.write_text(doccano_export(tasks, with_relations=tool.endswith("relations")),
                          encoding="utf-8")
    assert detect_format(export) == fmt

    back = tmp_path / "back"
    res = cli("data", "prepare", export, "--out", back)
    assert res.exit_code == 0, res.output
    data = PreparedData.open(back)
    again = [ex for split in ("train", "val", "test") for ex in data.rows(split)]
    assert as_set(again) == as_set(rows)  # the same sentences with the same spans
    stats = stats_of(back)
    assert stats["totals"] == {"read": len(rows), "kept": len(rows), "rejected": 0,
                               "duplicates": 0, "repaired": 0}
    # Labels pass through as the config named them (no built-in renaming).
    assert set(stats["labels"]) == {s.label for ex in rows for s in ex.entities}


def test_label_config_lists_the_run_labels(tmp_path):
    out = tmp_path / "t.json"
    config = write_for_tool(out, [], "label-studio", ["人名", "地点", 'A&"B'], "r")
    xml = config.read_text(encoding="utf-8")
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    labels = root.find("Labels")
    assert labels.get("name") == "label" and labels.get("toName") == "text"
    assert [x.get("value") for x in labels.findall("Label")] == ["人名", "地点", 'A&"B']
    assert root.find("Text").get("value") == "$text"
    assert json.loads(out.read_text(encoding="utf-8")) == []
    doccano_labels = write_for_tool(tmp_path / "d.jsonl", [], "doccano", ["人名", "地点"], "r")
    assert json.loads(doccano_labels.read_text(encoding="utf-8")) == [{"text": "人名"}, {"text": "地点"}]


# --- Label Studio: which annotation counts -------------------------------------------------------

def annotation(aid, created, spans, cancelled=False, text="张三在北京工作。"):
    return {"id": aid, "created_at": created, "was_cancelled": cancelled, "result": [
        {"id": f"r{aid}-{k}", "from_name": "label", "to_name": "text", "type": "labels",
         "origin": "manual", "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]}}
        for k, (s, e, label) in enumerate(spans)]}


def test_label_studio_latest_live_annotation_wins_and_the_rest_are_counted(tmp_path, cli):
    text = "张三在北京工作。"
    with_choice = annotation(41, "2026-12-01T10:00:00Z", [(0, 2, "人名")], text="赵六在深圳。")
    with_choice["result"].append({"id": "c", "from_name": "mood", "to_name": "text",
                                  "type": "choices", "value": {"choices": ["neutral"]}})
    tasks = [
        {"id": 1, "data": {"text": text}, "annotations": [
            annotation(11, "2026-12-01T10:00:00Z", [(0, 2, "人名")]),
            annotation(12, "2026-12-02T10:00:00Z", [(0, 2, "人名"), (3, 5, "地点")]),
            annotation(13, "2026-12-03T10:00:00Z", [], cancelled=True)]},
        {"id": 2, "data": {"text": "李四去了上海。"}, "annotations": [],
         "predictions": [{"model_version": "r", "result": []}]},
        {"id": 3, "data": {"text": "王五在广州。"},
         "annotations": [annotation(31, "2026-12-01T10:00:00Z", [], cancelled=True)]},
        {"id": 4, "data": {"text": "赵六在深圳。"}, "annotations": [with_choice]},
        {"id": 5, "data": {"text": "钱七在南京。"},
         "annotations": [annotation(51, "2026-12-01T10:00:00Z", [(0, 2, "人名")], text="钱七在南京。")]},
    ]
    export = tmp_path / "project-1-at-2026-12-03.json"
    export.write_text(json.dumps(tasks, ensure_ascii=False, indent=2), encoding="utf-8")
    exs, notes = rows_and_notes(export)
    by_text = {ex.text: ex for ex in exs}
    assert span_tuples(by_text[text]) == [(0, 2, "人名", "张三"), (3, 5, "地点", "北京")]
    assert [(n.line, n.reason, n.action) for n in notes] == [
        (1, "other_annotations", "repaired"), (2, "not_annotated", "dropped"),
        (3, "annotation_cancelled", "dropped"), (4, "ignored_results", "repaired")]
    assert "annotation (12)" in notes[0].detail and "2 other (1 cancelled)" in notes[0].detail
    assert "predictions are not labels" in notes[1].detail and "choices" in notes[3].detail

    out = tmp_path / "out"
    res = cli("data", "prepare", export, "--out", out)
    assert res.exit_code == 0, res.output
    stats = stats_of(out)
    assert stats["totals"] == {"read": 5, "kept": 3, "rejected": 2, "duplicates": 0, "repaired": 2}
    assert stats["dropped_by_reason"] == {"not_annotated": 1, "annotation_cancelled": 1}
    rejected = read_jsonl(PreparedData(out).rejected)
    assert {r["reason"] for r in rejected} >= {"not_annotated", "annotation_cancelled"}


# --- bad input -----------------------------------------------------------------------------------

def test_bad_label_studio_and_doccano_input_names_file_line_and_field(tmp_path, cli):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"data": {"text": "张三"},\n   "annotations": [}\n]\n', encoding="utf-8")
    res = cli("data", "prepare", broken, "--out", tmp_path / "o1")
    assert res.exit_code == 2 and f"{broken}:3: not valid JSON" in res.output

    tasks = [{"id": 7, "data": {"sentence": "张三在北京。"}, "annotations": []},
             {"id": 8, "data": {"text": "李四在上海。"}, "annotations": [
                 {"id": 1, "result": [{"type": "labels", "from_name": "label", "to_name": "text",
                                       "value": {"start": "0", "end": 2, "labels": ["人名"]}}]}]}]
    export = tmp_path / "ls.json"
    export.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    _, (first, second) = rows_and_notes(export)
    assert (first.line, first.reason) == (1, "missing_field")
    assert "task 1: missing field data.'text'" in first.detail and "sentence" in first.detail
    assert (second.line, second.reason) == (2, "bad_type")
    assert "annotations[0].result[0].value.'start' should be int" in second.detail
    res = cli("data", "prepare", export, "--out", tmp_path / "o2", "--strict")
    assert res.exit_code == 2 and f"{export}:1: missing_field: task 1" in res.output

    doccano = tmp_path / "d.jsonl"
    doccano.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": 1, "text": "张三在北京。", "label": [[0, 2, "人名"], [3, 5]]},
        {"id": 2, "text": "好评", "label": ["positive"]},
        {"id": 3, "text": "王五在广州。", "entities": [{"id": 1, "start_offset": 0, "label": "人名"}],
         "relations": []},
    ]) + "\n", encoding="utf-8")
    _, notes = rows_and_notes(doccano, "doccano")
    assert [(n.line, n.reason) for n in notes] == [(1, "bad_type"), (2, "bad_type"), (3, "missing_field")]
    assert "label[1] should be [start, end, label]" in notes[0].detail
    assert "text-classification" in notes[1].detail
    assert "entities[0].'end_offset'" in notes[2].detail


def test_formats_are_told_by_content(tmp_path):
    ls = tmp_path / "a.json"
    ls.write_text('\ufeff\n [{"id": 1, "data": {"text": "张三"}, "annotations": []}]', encoding="utf-8")
    assert detect_format(ls) == "label-studio"
    json_min = tmp_path / "b.json"
    json_min.write_text(json.dumps([{"id": 1, "text": "张三", "label": [
        {"start": 0, "end": 2, "text": "张三", "labels": ["人名"]}]}], ensure_ascii=False),
        encoding="utf-8")
    with pytest.raises(DataError, match="not a Label Studio JSON export.*JSON-MIN"):
        detect_format(json_min)
    doccano = tmp_path / "c.jsonl"
    doccano.write_text('{"id": 3, "text": "张三", "label": [[0, 2, "人名"]], "Comments": []}\n',
                       encoding="utf-8")
    assert detect_format(doccano) == "doccano"
    relations = tmp_path / "d.jsonl"
    relations.write_text('{"id": 3, "text": "张三", "entities": [], "relations": []}\n', encoding="utf-8")
    assert detect_format(relations) == "doccano"
    cluener = tmp_path / "e.json"
    cluener.write_text('{"text": "张三", "label": {"name": {"张三": [[0, 1]]}}}\n', encoding="utf-8")
    assert detect_format(cluener) == "cluener"
