"""The service app over real HTTP with a stand-in decoder (uvicorn in a thread): what happens
when decoding is slow, when the client leaves, when the worker dies (issue 28 items 4, 7), and
the feedback bookkeeping on its own (items 1, 6, 13)."""

import json
import threading
import time
from dataclasses import dataclass

import pytest
import requests
import uvicorn

from bench.live import free_port
from nerft.task.prompt import Task
from nerft.serve.app import ServeSettings, create_app
from nerft.serve.feedback import Feedback, FeedbackEntity, FeedbackRequest

LABELS = ("地点", "人名", "地理实体", "组织")


@dataclass
class FakeDecoded:
    text: str
    answer: str = ""
    entities: tuple = ()
    prompt_tokens: int = 1
    answer_tokens: int = 1


class Running:
    """`create_app(decode, ...)` (or a ready `app`) served by uvicorn on a loopback port in this
    process."""

    def __init__(self, decode, app=None, **settings):
        self.app = app or create_app(decode, Task(LABELS), ServeSettings(model_name="fake", **settings))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",
                                                    port=int(self.url.rsplit(":", 1)[1]),
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture
def running():
    started = []

    def start(decode, **settings):
        started.append(Running(decode, **settings))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def slow_decode(calls, seconds):
    def decode(texts):
        calls.append(list(texts))
        time.sleep(seconds)
        return [FakeDecoded(t) for t in texts]
    return decode


def test_a_client_that_leaves_has_its_remaining_work_cancelled(running):
    calls = []
    service = running(slow_decode(calls, 0.2), max_batch=1, max_texts=16)
    texts = [f"张{i}在北京。" for i in range(12)]
    with pytest.raises(requests.Timeout):
        requests.post(service.url + "/v1/ner", json={"texts": texts}, timeout=0.5)
    time.sleep(1.5)
    decoded = len(calls)
    assert decoded < 8, f"{decoded} of 12 sentences decoded after the client left"
    time.sleep(0.5)
    assert len(calls) == decoded  # nothing more once cancelled
    assert requests.post(service.url + "/v1/ner", json={"text": "好"}, timeout=10).status_code == 200


def test_each_request_waits_at_most_the_request_timeout(running):
    service = running(slow_decode([], 1.0), request_timeout=0.3)
    started = time.monotonic()
    response = requests.post(service.url + "/v1/ner", json={"text": "张三在北京。"}, timeout=10)
    assert response.status_code == 504, response.text
    assert "--request-timeout" in response.json()["detail"]
    assert time.monotonic() - started < 0.9


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_says_503_when_the_worker_is_dead(running):
    def fatal(texts):
        raise SystemExit("the worker thread ends")  # not an Exception: nothing catches it

    service = running(fatal, request_timeout=0.5)
    assert requests.get(service.url + "/health", timeout=5).status_code == 200
    response = requests.post(service.url + "/v1/ner", json={"text": "张三"}, timeout=10)
    assert response.status_code == 504  # its answer never comes; the wait ends
    health = requests.get(service.url + "/health", timeout=5)
    assert health.status_code == 503 and "worker stopped" in health.json()["status"]
    again = requests.post(service.url + "/v1/ner", json={"text": "张三"}, timeout=10)
    assert again.status_code == 503 and "restart" in again.json()["detail"]


# --- feedback bookkeeping ------------------------------------------------------------------


def feedback(tmp_path, **kwargs) -> Feedback:
    return Feedback({"m": LABELS}, None, tmp_path / "feedback.jsonl", 2**20, **kwargs)


def test_placing_many_entities_without_offsets_is_fast(tmp_path):
    """Item 1: 2,000 entities "a" in 2,000 "a"s took O(N^3) steps (minutes); now milliseconds."""
    fb = feedback(tmp_path, max_text_chars=2000, max_entities=2000)
    started = time.perf_counter()
    spans = fb._place("a" * 2000, [FeedbackEntity(text="a", label="人名")] * 2000, LABELS)
    assert time.perf_counter() - started < 1.0
    assert [s.start for s in spans] == list(range(2000))
    mixed = fb._place("张三和张三和李四", [FeedbackEntity(text="张三", label="人名"),
                                      FeedbackEntity(text="李四", label="人名", start=6, end=8),
                                      FeedbackEntity(text="张三", label="人名")], LABELS)
    assert [(s.start, s.end) for s in mixed] == [(0, 2), (3, 5), (6, 8)]


def test_remembered_answers_are_bounded_in_bytes(tmp_path):
    """Item 6: at most recent_bytes of sentences (4 bytes a character) are kept for feedback."""
    fb = feedback(tmp_path, recent_bytes=4000)
    ids = [fb.record_answer(["字" * 100] * 2, [], "/v1/ner") for _ in range(20)]  # 800 bytes each
    assert fb._recent_size <= 4000 and list(fb._recent) == ids[-5:]
    with pytest.raises(Exception, match="unknown"):
        fb.correct(FeedbackRequest(request_id=ids[0], entities=[]))
    assert fb.correct(FeedbackRequest(request_id=ids[-1], entities=[]))["stored"]


def test_a_torn_last_line_does_not_swallow_the_next_row(tmp_path):
    """Item 13: a crash mid-write leaves a line without its newline; the next row starts anew."""
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"id": "feedback-1", "text": "张三在北', encoding="utf-8")  # torn
    fb = feedback(tmp_path)
    fb.correct(FeedbackRequest(text="李四在上海。", entities=[{"text": "李四", "label": "人名"}]))
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == '{"id": "feedback-1", "text": "张三在北' and lines[-1] == ""
    assert json.loads(lines[1])["text"] == "李四在上海。"
