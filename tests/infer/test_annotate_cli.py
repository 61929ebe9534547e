"""`nerft select` / `nerft predict` --format label-studio|doccano: the model's guesses go to the
annotation tool as pre-annotations, and the tool's export (every guess accepted unchanged)
comes back through `nerft data prepare` as the same sentences and spans.

The learned run knows its training sentences by heart, so it finds real entities in them; the
same sentences behind an emoji or a CJK Extension B character put characters that take two
UTF-16 units before those entities."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch
from typer.testing import CliRunner

from annotation_exports import doccano_export, label_studio_export, read_jsonl
from nerft.data.example import read_examples
from nerft.data.prepared import PreparedData


@pytest.fixture(scope="module")
def cli():
    from nerft.cli import app  # the real command, with its one error handler

    runner = CliRunner()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda *args: runner.invoke(app, [str(a) for a in args])
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def unlabeled(learned_run, tmp_path_factory):
    """Six sentences the run knows, and three of them behind characters outside the BMP."""
    _, data, _ = learned_run
    known = [ex.text for ex in read_examples(data / "train.jsonl")][:6]
    texts = known + ["😀" + known[0], "🎉🎉" + known[1], "𠮷" + known[2]]
    path = tmp_path_factory.mktemp("annotate") / "unlabeled.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path, texts


def prepared_rows(folder):
    data = PreparedData.open(folder)
    return {ex.text: [(s.start, s.end, s.label, s.text) for s in ex.entities]
            for split in ("train", "val", "test") for ex in data.rows(split)}


def test_select_to_label_studio_and_back(cli, learned_run, unlabeled, tmp_path):
    run, _, _ = learned_run
    path, texts = unlabeled
    tasks_file = tmp_path / "tasks.json"
    res = cli("select", run, "--input", path, "--top", len(texts), "--format", "label-studio",
              "--out", tasks_file)
    assert res.exit_code == 0, res.output
    tasks = json.loads(tasks_file.read_text(encoding="utf-8"))
    assert sorted(t["data"]["text"] for t in tasks) == sorted(texts)
    assert [t["data"]["rank"] for t in tasks] == list(range(1, len(texts) + 1))
    predictions = [t["predictions"][0] for t in tasks]
    assert {p["model_version"] for p in predictions} == {run.name}
    scores = [p["score"] for p in predictions]
    assert all(0.0 < s <= 1.0 for s in scores) and scores == sorted(scores)  # closest calls first

    # The pre-annotations: code-point offsets that slice the sentence to the region's text.
    sent = {}
    for task, prediction in zip(tasks, predictions):
        text = task["data"]["text"]
        regions = [r["value"] for r in prediction["result"]]
        assert all(text[v["start"]:v["end"]] == v["text"] for v in regions)
        sent[text] = sorted((v["start"], v["end"], v["labels"][0], v["text"]) for v in regions)
    assert sum(map(len, sent.values())) >= len(texts)  # it knows these: real guesses to correct
    assert sent["😀" + texts[0]] and all(s > 0 for s, *_ in sent["😀" + texts[0]])

    config = ET.parse(tmp_path / "tasks.label-config.xml").getroot()
    run_labels = json.loads((run / "run.json").read_text(encoding="utf-8"))["labels"]
    assert [x.get("value") for x in config.find("Labels").findall("Label")] == run_labels

    export = tmp_path / "project-3-at-2026-12-03-10-00.json"
    export.write_text(json.dumps(label_studio_export(tasks_file), ensure_ascii=False),
                      encoding="utf-8")
    res = cli("data", "prepare", export, "--out", tmp_path / "corrected")
    assert res.exit_code == 0, res.output
    assert prepared_rows(tmp_path / "corrected") == sent


def test_predict_to_doccano_and_back(cli, learned_run, unlabeled, tmp_path):
    run, _, _ = learned_run
    path, texts = unlabeled
    canonical, tasks_file = tmp_path / "preds.jsonl", tmp_path / "tasks.jsonl"
    res = cli("predict", run, "--input", path, "--output", canonical)
    assert res.exit_code == 0, res.output
    res = cli("predict", run, "--input", path, "--output", tasks_file, "--format", "doccano")
    assert res.exit_code == 0, res.output
    preds = {r["text"]: sorted((e["start"], e["end"], e["label"], e["text"]) for e in r["entities"])
             for r in read_jsonl(canonical)}
    rows = {r["text"]: r["label"] for r in read_jsonl(tasks_file)}
    assert rows.keys() == preds.keys() and sum(map(len, preds.values())) >= len(texts)
    # doccano counts UTF-16 units: after "🎉🎉" every offset is two more than Python's.
    shifted = "🎉🎉" + texts[1]
    assert preds[shifted]
    assert sorted(rows[shifted]) == [[s + 2, e + 2, label] for s, e, label, _ in preds[shifted]]
    labels = json.loads((tmp_path / "tasks.labels.json").read_text(encoding="utf-8"))
    run_labels = json.loads((run / "run.json").read_text(encoding="utf-8"))["labels"]
    assert labels == [{"text": name} for name in run_labels]

    for relations in (False, True):
        export = tmp_path / f"doccano-export-{relations}.jsonl"
        export.write_text(doccano_export(tasks_file, with_relations=relations), encoding="utf-8")
        res = cli("data", "prepare", export, "--out", tmp_path / f"back-{relations}")
        assert res.exit_code == 0, res.output
        assert prepared_rows(tmp_path / f"back-{relations}") == preds


def test_format_needs_a_known_tool_and_a_file(cli, tmp_path):
    res = cli("predict", "demo", "张三在北京。", "--format", "doccano")
    assert res.exit_code == 2 and "--format doccano writes a file: give --output" in res.output
    res = cli("select", "demo", "--input", tmp_path / "x.txt", "--out", tmp_path / "o.json",
              "--format", "prodigy")
    assert res.exit_code == 2 and "--format prodigy: choose jsonl, label-studio, doccano" in res.output
