"""`python -m bench.loop` on the tiny model: serve a run, correct two answers in the web page
(headless Chromium), prepare the feedback, train a child with init_from, gate it with
`nerft compare`; every step recorded, and no sentence of the data in the results."""

import json
import os
import subprocess
import sys
from pathlib import Path

from nerft.config import load_config
from nerft.data.example import Example, Span, read_examples, write_jsonl
from nerft.train.workflow import train

REPO = Path(__file__).resolve().parents[1]

ROWS = [
    ("张三在北京工作。", [(0, 2, "人名"), (3, 5, "地点")]),
    ("李四去了上海。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("华为在深圳发布新手机。", [(0, 2, "组织"), (3, 5, "地点")]),
    ("天气很好。", []),
    ("王五昨天回到广州。", [(0, 2, "人名"), (6, 8, "地点")]),
    ("小米的总部在北京。", [(0, 2, "组织"), (6, 8, "地点")]),
]
UNSEEN = [  # what users send; the gold annotation plays the annotator
    ("赵六住在杭州西湖边。", [(0, 2, "人名"), (4, 6, "地点")]),
    ("腾讯位于深圳南山。", [(0, 2, "组织"), (4, 6, "地点")]),
    ("陈七和刘八在成都见面。", [(0, 2, "人名"), (3, 5, "人名"), (6, 8, "地点")]),
]


def _examples(prefix, rows):
    return [Example(f"{prefix}:{i}", t, [Span(s, e, lb, t[s:e]) for s, e, lb in spans])
            for i, (t, spans) in enumerate(rows)]


def test_loop_corrects_in_the_page_and_gates_the_child(tmp_path, tiny_model_dir):
    demo = tmp_path / "demo"  # what `nerft demo --out` leaves: data/ and run/
    (demo / "data").mkdir(parents=True)
    for split in ("train", "val", "test"):
        write_jsonl(demo / "data" / f"{split}.jsonl", (ex.to_dict() for ex in _examples(split, ROWS)))
    (demo / "data" / "stats.json").write_text(json.dumps({"labels": ["人名", "地点", "组织"]}),
                                              encoding="utf-8")
    train(load_config(REPO / "configs" / "demo-cpu.yaml", [
        f"model.source={tiny_model_dir}", f"data.dir={demo / 'data'}",
        f"training.output_dir={demo / 'run'}", "training.max_steps=2", "eval.eval_steps=2",
        "tracking.swanlab=off"]))
    unseen = tmp_path / "unseen.jsonl"
    write_jsonl(unseen, (ex.to_dict() for ex in _examples("unseen", UNSEEN)))

    work, out = tmp_path / "work", tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench.loop", "--demo", str(demo), "--sentences", str(unseen),
         "--work", str(work), "--out", str(out), "--name", "t", "--set", "training.epochs=1"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    r = json.loads((out / "t.json").read_text(encoding="utf-8"))

    # The page sent what the annotator meant: the first two wrong answers, corrected to gold.
    assert len(r["corrections"]) == 2
    assert all(c["status"].startswith("correction stored") for c in r["corrections"])
    feedback = [json.loads(line) for line in (work / "logs" / "feedback.jsonl").open(encoding="utf-8")]
    wrong = _examples("unseen", UNSEEN)[:2]  # a random tiny model gets none right
    assert [row["text"] for row in feedback] == [ex.text for ex in wrong]
    for row, ex in zip(feedback, wrong):
        assert [(e["start"], e["end"], e["label"]) for e in row["entities"]] == [
            (s.start, s.end, s.label) for s in ex.entities]

    assert r["prepare"]["totals"]["read"] == 2 == r["prepare"]["totals"]["kept"]
    assert len(list(read_examples(work / "data" / "feedback" / "train.jsonl"))) == 2
    child = r["child"]
    assert child["new_rows"] == 2 and child["replay_rows"] == 1  # round(2 * 0.3 / 0.7)
    assert child["validation_rows_from"] == str((demo / "data" / "val.jsonl").resolve())

    steps = {s["step"]: s for s in r["steps"]}
    assert steps["train (init_from)"]["exit_code"] == 0
    gate = r["gate"]
    assert gate["exit_code"] in (0, 1) and gate["passed"] == (gate["exit_code"] == 0)
    assert sum("strict F1" in line for line in gate["lines"]) == 2  # the demo's test + corrected

    written = (out / "t.json").read_text(encoding="utf-8") + (out / "t.md").read_text(encoding="utf-8")
    assert not any(text in written for text, _ in ROWS + UNSEEN)  # counts only, never the text
    assert "| gate (nerft compare) |" in written
