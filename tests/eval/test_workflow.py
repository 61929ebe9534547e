"""`nerft eval`'s data side: a split of a prepared folder comes with the label order prepare
recorded (asked of PreparedData), a loose canonical file with none."""

import json

import pytest

from nerft.data.prepare import prepare, write_prepared
from nerft.eval.workflow import EvalInputError, load_split

ROWS = [("张三在北京工作。", [(0, 2, "人名"), (3, 5, "地点")]), ("李四去了上海。", [(0, 2, "人名"), (4, 6, "地点")]),
        ("王五是华为的工程师。", [(0, 2, "人名"), (3, 5, "组织")]), ("今天下雨。", []),
        ("赵六住在杭州。", [(0, 2, "人名"), (4, 6, "地点")]), ("孙七加入了腾讯。", [(0, 2, "人名"), (5, 7, "组织")])]


def test_a_prepared_split_brings_its_labels_and_a_loose_file_none(tmp_path):
    corpus = tmp_path / "mine.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": t, "entities": [
        {"start": s, "end": e, "label": lb, "text": t[s:e]} for s, e, lb in ents]}, ensure_ascii=False) + "\n"
        for i, (t, ents) in enumerate(ROWS)), encoding="utf-8")
    out = tmp_path / "data"
    stats = write_prepared(prepare([corpus]), out, ratios=(0.34, 0.33, 0.33), seed=42)
    examples, labels = load_split(out, "test", None)
    assert labels == tuple(stats["labels"]) and len(examples) == stats["splits"]["test"]["rows"] > 0
    assert load_split(out / "test.jsonl", "test", None)[1] == labels  # the file itself, same folder
    assert load_split(corpus, "test", 1)[1] is None and len(load_split(corpus, "test", 1)[0]) == 1
    with pytest.raises(EvalInputError, match=f"{tmp_path / 'val.jsonl'}: not found"):
        load_split(tmp_path, "val", None)
