"""Opt-in request log, POST /v1/feedback, and the corrections read back by `nerft data prepare`."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

SENTENCES = ["张三在北京大学读书。", "李四昨天去了上海。", "王五和赵六在长江边散步。"]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def logged_server(start_server, logs):
    return start_server(["--log-requests", str(logs / "requests.jsonl"),
                         "--feedback", str(logs / "feedback.jsonl")])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_logging_and_feedback_are_off_by_default(server):
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health["logging"] == {"requests": None, "feedback": None}
    answer = requests.post(server.url + "/v1/ner", json={"text": SENTENCES[0]}, timeout=60)
    assert answer.status_code == 200 and answer.json()["request_id"]
    refused = requests.post(server.url + "/v1/feedback",
                            json={"text": SENTENCES[0], "entities": []}, timeout=10)
    assert refused.status_code == 503
    assert "--feedback FILE.jsonl" in refused.json()["detail"]


def test_every_answer_is_logged_with_the_id_the_client_got(logged_server, logs):
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda t: requests.post(logged_server.url + "/v1/ner",
                                                        json={"text": t}, timeout=120),
                                SENTENCES * 2))
    assert all(a.status_code == 200 for a in answers)
    ids = {a.json()["request_id"] for a in answers}
    assert ids == {a.headers["X-Request-Id"] for a in answers} and len(ids) == 6
    rows = {r["request_id"]: r for r in read_jsonl(logs / "requests.jsonl")}  # every line whole
    assert ids <= set(rows)
    for a in answers:
        row = rows[a.json()["request_id"]]
        assert row["results"] == a.json()["results"]
        assert row["model"] == a.json()["model"] and row["time"].endswith("Z")


def post_feedback(server, body):
    return requests.post(server.url + "/v1/feedback", json=body, timeout=10)


@pytest.mark.parametrize("body, status, field", [
    ({"text": "张三在北京。", "entities": [{"text": "张三", "label": "人物"}]}, 422,
     "entities[0].label: '人物' is not one of the model's labels"),
    ({"text": "张三在北京。", "entities": [{"text": "上海", "label": "地点"}]}, 422,
     "entities[0].text: '上海' is not in the text"),
    ({"text": "张三在北京。", "entities": [{"text": "北京", "label": "地点", "start": 4, "end": 6}]},
     422, "entities[0].text: text[4:6] is '京。', not '北京'"),
    ({"text": "张三在北京。", "entities": [{"text": "北京", "label": "地点", "start": 5, "end": 9}]},
     422, "entities[0].start: [5, 9) is outside the text"),
    ({"text": "张三在北京。", "entities": [{"text": "北京", "label": "地点", "start": 3}]}, 422,
     "entities[0]: give both start and end"),
    ({"text": "张三在北京。", "entities": [{"text": "张三", "label": "人名"},
                                       {"text": "张三在", "label": "人名", "start": 0, "end": 3}]},
     422, "entities[1]: [0, 3) overlaps"),
    ({"entities": []}, 422, "request_id: give request_id"),
    ({"request_id": "nope", "entities": []}, 404, "request_id: 'nope' is unknown"),
    ({"text": "张三", "entities": [{"text": "张三", "label": "人名", "score": 1}]}, 422,
     "Extra inputs are not permitted"),
])
def test_bad_feedback_names_the_field(logged_server, logs, body, status, field):
    before = (logs / "feedback.jsonl").read_bytes()
    response = post_feedback(logged_server, body)
    assert response.status_code == status, response.text
    assert field in str(response.json()["detail"])
    assert (logs / "feedback.jsonl").read_bytes() == before  # nothing stored


def test_corrections_become_training_rows(logged_server, logs, tmp_path):
    answer = requests.post(logged_server.url + "/v1/ner", json={"texts": SENTENCES[:2]},
                           timeout=60).json()
    rid = answer["request_id"]
    stored = [
        # by request id and index, offsets found from the entity text
        post_feedback(logged_server, {"request_id": rid, "index": 1, "entities": [
            {"text": "李四", "label": "人名"}, {"text": "上海", "label": "地点"}]}),
        # a first correction of sentence 0 ...
        post_feedback(logged_server, {"request_id": rid, "entities": [
            {"text": "张三", "label": "人名"}]}),
        # ... replaced by a later one, sent by text with explicit offsets
        post_feedback(logged_server, {"text": SENTENCES[0], "entities": [
            {"text": "张三", "label": "人名", "start": 0, "end": 2},
            {"text": "北京大学", "label": "组织", "start": 3, "end": 7}]}),
        post_feedback(logged_server, {"text": SENTENCES[2], "entities": [
            {"text": "王五", "label": "人名"}, {"text": "赵六", "label": "人名"},
            {"text": "长江", "label": "地理实体"}]}),
        post_feedback(logged_server, {"text": "今天天气很好。", "entities": []}),  # nothing to find
    ]
    assert [r.status_code for r in stored] == [200] * 5, [r.text for r in stored]
    assert stored[0].json()["entities"] == [{"start": 0, "end": 2, "label": "人名", "text": "李四"},
                                            {"start": 6, "end": 8, "label": "地点", "text": "上海"}]
    rows = read_jsonl(logs / "feedback.jsonl")
    assert len(rows) == 5 and rows[0]["request_id"] == rid and rows[2]["request_id"] is None

    out = tmp_path / "prepared"
    done = subprocess.run([sys.executable, "-m", "nerft", "data", "prepare",
                           str(logs / "feedback.jsonl"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    prepared = [r for split in ("train", "val", "test") for r in read_jsonl(out / f"{split}.jsonl")]
    by_text = {r["text"]: r for r in prepared}
    assert len(prepared) == len(by_text) == 4
    ents = {t: [(e["start"], e["end"], e["label"]) for e in r["entities"]] for t, r in by_text.items()}
    assert ents == {SENTENCES[0]: [(0, 2, "人名"), (3, 7, "组织")],  # the later correction won
                    SENTENCES[1]: [(0, 2, "人名"), (6, 8, "地点")],
                    SENTENCES[2]: [(0, 2, "人名"), (3, 5, "人名"), (6, 8, "地理实体")],
                    "今天天气很好。": []}
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    counts = stats["inputs"][0]
    assert counts["format"] == "canonical"
    assert (counts["read"], counts["kept"], counts["rejected"], counts["duplicates"]) == (5, 4, 0, 1)
    superseded = [r for r in read_jsonl(out / "rejected.jsonl")
                  if r["reason"] == "superseded_duplicate"]
    assert len(superseded) == 1 and superseded[0]["line"] == 2


def test_size_cap_stops_logging_but_not_serving(start_server, tmp_path):
    log = tmp_path / "requests.jsonl"
    capped = start_server(["--log-requests", str(log), "--log-max-mb", "0.001"])  # 1,048 bytes
    for text in SENTENCES * 4:
        answer = requests.post(capped.url + "/v1/ner", json={"text": text}, timeout=60)
        assert answer.status_code == 200
    size = log.stat().st_size
    assert 0 < size <= 1048
    assert all(json.loads(line) for line in log.read_text(encoding="utf-8").splitlines())
    health = requests.get(capped.url + "/health", timeout=10).json()
    assert health["logging"]["requests"]["full"] is True
    assert capped.output().count("reached its cap of 1048 bytes") == 1


def test_page_correction_reaches_the_feedback_log(logged_server, logs, browser):
    """Remove every entity the model gave, add two by selecting text, relabel one, send."""
    from selenium.webdriver.common.by import By

    from bench.live import Page

    sentence = "小明在广州的长隆乐园玩。"
    page = Page(browser, logged_server.url, timeout=60)
    page.find(sentence)
    page.remove_all()
    assert browser.find_element(By.ID, "result").text == sentence

    page.add(0, 2, "人名")
    page.add(3, 5, "地理实体")
    page.click_mark(1)  # change the label of 广州: click it, choose 地点
    page.choose('#fix-labels button[data-label="地点"]')
    page.add(6, 10, "组织")
    assert [(m["start"], m["label"]) for m in page.marks()] == [(0, "人名"), (3, "地点"), (6, "组织")]

    assert "correction stored" in page.send()
    row = read_jsonl(logs / "feedback.jsonl")[-1]
    assert row["text"] == sentence and row["request_id"]
    assert row["entities"] == [{"start": 0, "end": 2, "label": "人名", "text": "小明"},
                               {"start": 3, "end": 5, "label": "地点", "text": "广州"},
                               {"start": 6, "end": 10, "label": "组织", "text": "长隆乐园"}]
