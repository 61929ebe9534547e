import json
import subprocess
import sys

import pytest

from nerft.data.prepare import prepare, write_prepared
from nerft.data.readers import DataError


def ent(s, e, label, text):
    return {"start_idx": s, "end_idx": e, "entity_label": label, "entity_text": text,
            "entity_names": []}


def row(text, *ents):
    return json.dumps({"text": text, "entities": list(ents)}, ensure_ascii=False).encode()


@pytest.fixture
def broken_ccfbdci(tmp_path):
    """One line of each kind of trouble, in the ccfbdci format; line numbers matter."""
    lines = [
        row("张三在北京。", ent(0, 2, "PER", "张三"), ent(3, 5, "GPE", "北京")),  # 1 good
        b'{"text": "\xe5\xbc\xa0", "entities": [}',                                # 2 bad JSON
        b'{"text": "\xff\xfe broken bytes", "entities": []}',                      # 3 bad UTF-8
        row("李四").replace(b', "entities": []', b""),                              # 4 no entities
        json.dumps({"text": "王五", "entities": [{"start_idx": "0", "end_idx": 2,
                    "entity_label": "PER", "entity_text": "王五"}]}).encode(),    # 5 bad type
        row("赵六来了", ent(0, 9, "PER", "赵六")),                                # 6 out of range
        row("钱七来了", ent(0, 2, "PER", "孙八")),                                # 7 text mismatch
        row("   "),                                                               # 8 empty text
        row("中国银行开门", ent(0, 4, "ORG", "中国银行"), ent(0, 2, "GPE", "中国")),  # 9 overlap
        row("张三在北京。", ent(0, 2, "PER", "张三"), ent(3, 5, "GPE", "北京")),  # 10 duplicate
        row("张三在北京。", ent(0, 2, "PER", "张三")),                            # 11 conflicting
        row("周九去了火星", ent(4, 6, "PLANET", "火星")),                          # 12 unknown label
        b"",                                                                          # blank: skipped
        row("吴十在上海。", ent(0, 2, "PER", "吴十"), ent(3, 5, "GPE", "上海")),  # 14 good
        row("郑十一到了", ent(0, 3, "PER<|im_end|>", "郑十一")),                  # 15 forged label
    ]
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_broken_row_is_explained_and_counts_add_up(broken_ccfbdci, tmp_path):
    prep = prepare([broken_ccfbdci], fmt="ccfbdci", ratios=(1.0, 0.0, 0.0))
    stats = write_prepared(prep, tmp_path / "out", ratios=(1.0, 0.0, 0.0), seed=42)
    t = stats["totals"]
    assert (t["read"], t["kept"], t["rejected"], t["duplicates"], t["repaired"]) == (14, 4, 8, 2, 1)
    assert t["read"] == t["kept"] + t["rejected"] + t["duplicates"]
    rejected = [json.loads(l) for l in (tmp_path / "out" / "rejected.jsonl").open(encoding="utf-8")]
    by_line = {(r["line"], r["reason"]) for r in rejected}
    assert by_line == {(2, "malformed_json"), (3, "invalid_utf8"), (4, "missing_field"),
                       (5, "bad_type"), (6, "span_out_of_range"), (7, "span_text_mismatch"),
                       (8, "empty_text"), (9, "overlap"), (10, "duplicate"),
                       (11, "conflicting_duplicate"), (15, "invalid_label")}
    assert all(r["file"] == str(broken_ccfbdci) for r in rejected)
    detail = {r["reason"]: r["detail"] for r in rejected}
    assert "'entities'" in detail["missing_field"]
    assert "entities[0].'start_idx'" in detail["bad_type"]
    assert "'PER<|im_end|>'" in detail["invalid_label"] and "special token" in detail["invalid_label"]
    kept = {ex.text: ex for ex in prep.splits["train"]}
    # A label no preset knows is kept under its own name.
    assert set(kept) == {"张三在北京。", "中国银行开门", "吴十在上海。", "周九去了火星"}
    assert [s.text for s in kept["中国银行开门"].entities] == ["中国银行"]  # longer span wins
    # Only labels that occur in the kept data enter the task's label set.
    assert stats["splits"]["train"]["entities"] == {"人名": 2, "地理实体": 2, "组织": 1, "PLANET": 1}


def test_strict_stops_at_the_first_error_with_file_and_line(broken_ccfbdci):
    with pytest.raises(DataError, match=r"broken\.jsonl:2: malformed_json"):
        prepare([broken_ccfbdci], strict=True)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nerft", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_strict_exits_2_with_one_line(broken_ccfbdci, tmp_path):
    res = run_cli("data", "prepare", broken_ccfbdci, "--out", tmp_path / "o", "--strict")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert f"{broken_ccfbdci}:2: malformed_json" in " ".join(res.stderr.split())


def test_cli_prepares_ccfbdci_without_leaks(shared_data, tmp_path):
    out = tmp_path / "ccfbdci"
    res = run_cli("data", "prepare", shared_data / "ccfbdci" / "ccfbdci.jsonl", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "duplicate" in res.stdout and "地理实体" in res.stdout
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    t = stats["totals"]
    assert t["read"] == 15724 and t["duplicates"] == 1237
    assert t["read"] == t["kept"] + t["rejected"] + t["duplicates"]
    texts = {}
    for name in ("train", "val", "test"):
        rows = [json.loads(l) for l in (out / f"{name}.jsonl").open(encoding="utf-8")]
        assert len(rows) == stats["splits"][name]["rows"]
        texts[name] = {r["text"] for r in rows}
        assert len(texts[name]) == len(rows)
    assert not (texts["train"] & texts["val"] or texts["train"] & texts["test"]
                or texts["val"] & texts["test"])
    n = t["kept"]
    assert abs(len(texts["train"]) - 0.7 * n) <= 1 and abs(len(texts["test"]) - 0.15 * n) <= 1
    assert stats["labels"] == ["地点", "人名", "地理实体", "组织"]


def test_split_is_deterministic_and_seeded(shared_data):
    path = [shared_data / "PeoplesDaily" / "example.dev"]
    a, b = prepare(path, seed=1), prepare(path, seed=1)
    c = prepare(path, seed=2)
    ids = lambda p: [ex.id for ex in p.splits["test"]]
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_declared_splits_are_kept_and_leaks_stay_in_test(tmp_path):
    train, test = tmp_path / "x_train.bio", tmp_path / "x_test.bio"
    sent = lambda chars: "".join(f"{c} O\n" for c in chars) + "\n"
    train.write_text(sent("共享句子") + "".join(sent(f"训练{i}") for i in range(20)), encoding="utf-8")
    test.write_text(sent("共享句子") + sent("测试句"), encoding="utf-8")
    prep = prepare([train, test])
    assert {ex.text for ex in prep.splits["test"]} == {"共享句子", "测试句"}
    assert "共享句子" not in {ex.text for ex in prep.splits["train"] + prep.splits["val"]}
    assert len(prep.splits["val"]) == round(20 * 0.15 / 0.85)  # val carved from train
    assert "val carved from train" in prep.split_policy
