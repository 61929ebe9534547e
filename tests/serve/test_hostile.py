"""`nerft serve` against hostile requests over real HTTP (issue 28 items 1-5, 8): each is
refused cheaply with a status and a field name, and the service keeps answering everyone else."""

import json
import subprocess
import sys
import threading
import time

import pytest
import requests

from bench.load import chunked_upload
from tests.serve.conftest import API_KEY, FEEDBACK_KEYS


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile-logs")


@pytest.fixture(scope="module")
def open_server(start_server, logs):
    """No key, on 127.0.0.1: the default limits but a small compute budget; feedback on."""
    return start_server(["--max-request-chars", "600",
                         "--feedback", str(logs / "open.jsonl"),
                         "--log-requests", str(logs / "requests.jsonl")])


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_feedback_flood_is_refused_and_health_keeps_answering(open_server):
    """Item 1: the trigger took O(N^3) on the event loop; now 413 at once, by the feedback
    route's own body cap, and under that cap by the limit of entities a correction."""
    url = open_server.url
    flood = json.dumps({"text": "a" * 20000, "entities": [{"text": "a", "label": "人名"}] * 20000},
                       ensure_ascii=False, separators=(",", ":")).encode()
    under_cap = json.dumps({"text": "a" * 2000, "entities": [{"text": "a", "label": "人名"}] * 1000},
                           ensure_ascii=False, separators=(",", ":")).encode()
    answers = {}

    def send():
        for name, body in (("flood", flood), ("under_cap", under_cap)):
            answers[name] = requests.post(url + "/v1/feedback", data=body, timeout=60,
                                          headers={"Content-Type": "application/json"})

    sender = threading.Thread(target=send)
    sender.start()
    for _ in range(5):
        assert requests.get(url + "/health", timeout=2).status_code == 200
    sender.join(60)
    assert answers["flood"].status_code == 413, answers["flood"].text
    assert "request body of" in answers["flood"].json()["detail"]
    assert answers["under_cap"].status_code == 413, answers["under_cap"].text
    assert "entities: 1000 in one correction; the limit is 256" in answers["under_cap"].json()["detail"]
    long_text = requests.post(url + "/v1/feedback", timeout=10,
                              json={"text": "a" * 2001, "entities": []})
    assert long_text.status_code == 413 and "text: 2001 characters" in long_text.json()["detail"]
    # The largest correction allowed: 256 entities placed in 300 characters, quickly.
    started = time.monotonic()
    full = requests.post(url + "/v1/feedback", timeout=10,
                         json={"text": "a" * 300, "entities": [{"text": "a", "label": "人名"}] * 256})
    assert full.status_code == 200, full.text
    assert [e["start"] for e in full.json()["entities"]] == list(range(256))
    assert time.monotonic() - started < 3


def too_large_count(url: str, sample: str) -> float:
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_chunked_body_over_the_cap_is_refused_as_it_arrives(open_server):
    """Item 2: no Content-Length, 1.5x the cap, never finished: 413, not a wait for the end."""
    cap = 4096 + 64 * (6 * 2000 + 16)
    refused = 'nerft_requests_total{route="/v1/ner",status="413"}'
    before = too_large_count(open_server.url, refused)
    status, body = chunked_upload(open_server.url, int(1.5 * cap))
    assert status == 413, body
    assert f"the limit is {cap}" in body and "chunks" in body
    assert too_large_count(open_server.url, refused) == before + 1  # counted in /metrics
    assert requests.get(open_server.url + "/health", timeout=5).status_code == 200


def test_text_that_cannot_be_encoded_is_refused_naming_the_field(open_server):
    """Item 3: a lone surrogate passed validation and failed every request batched with it."""
    url = open_server.url
    raw = b'{"texts": ["\\u5f20\\u4e09\\u5728\\u5317\\u4eac\\u3002", "\\ud800"]}'
    bad = requests.post(url + "/v1/ner", data=raw, timeout=30,
                        headers={"Content-Type": "application/json"})
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"].startswith("texts[1]: character 0 (U+D800) is a lone surrogate")
    chat = requests.post(url + "/v1/chat/completions", timeout=30,
                         headers={"Content-Type": "application/json"},
                         data=b'{"model": "m", "messages": [{"role": "user", "content": "\\udc00"}]}')
    assert chat.status_code == 422 and "messages[-1].content" in chat.json()["error"]["message"]
    good = requests.post(url + "/v1/ner", json={"text": "张三在北京。"}, timeout=60)
    assert good.status_code == 200


def test_the_compute_budget_of_one_request(open_server):
    """Item 4: characters per request, all texts together, are bounded (--max-request-chars)."""
    response = requests.post(open_server.url + "/v1/ner", json={"texts": ["长" * 300] * 3}, timeout=30)
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith("900 characters in one request; the limit is 600 "
                                                "(--max-request-chars)")


def test_corrections_are_checked_as_prepare_will_and_say_who_and_when(open_server, logs, tmp_path):
    """Item 5: whitespace-only text made `nerft data prepare` fail later; now refused at once."""
    url = open_server.url
    blank = requests.post(url + "/v1/feedback", json={"text": "  \u3000\t ", "entities": []},
                          timeout=10)
    assert blank.status_code == 422
    assert blank.json()["detail"].startswith("text: empty or only whitespace")
    stored = requests.post(url + "/v1/feedback", timeout=10, json={
        "text": "赵六在南京。", "entities": [{"text": "赵六", "label": "人名"}]})
    assert stored.status_code == 200, stored.text
    rows = [json.loads(line) for line in (logs / "open.jsonl").read_text("utf-8").splitlines()]
    assert all(r["text"].strip() for r in rows)
    assert rows[-1]["by"] is None and rows[-1]["time"].endswith("Z")
    done = subprocess.run([sys.executable, "-m", "nerft", "data", "prepare", str(logs / "open.jsonl"),
                           "--out", str(tmp_path / "prepared")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_feedback_keys_say_who_and_nobody_silently_replaces_another(keyed_server):
    """Item 5: with --feedback-key, the API key alone cannot write; a correction of a sentence
    another writer corrected needs "replace": true."""
    url = keyed_server.url + "/v1/feedback"
    alice, bob = (bearer(k) for k in FEEDBACK_KEYS)
    body = {"text": "孙七在广州。", "entities": [{"text": "孙七", "label": "人名"}]}
    refused = requests.post(url, json=body, headers=bearer(API_KEY), timeout=10)
    assert refused.status_code == 401 and "feedback key" in refused.json()["detail"]
    first = requests.post(url, json=body, headers=alice, timeout=10)
    assert first.status_code == 200, first.text
    again = requests.post(url, json={**body, "entities": []}, headers=alice, timeout=10)
    assert again.status_code == 200  # a writer may change their own mind
    clash = requests.post(url, json=body, headers=bob, timeout=10)
    assert clash.status_code == 409 and "already corrected by key-" in clash.json()["detail"]
    replaced = requests.post(url, json={**body, "replace": True}, headers=bob, timeout=10)
    assert replaced.status_code == 200 and replaced.json()["replaces"] == again.json()["id"]
    log_text = keyed_server.feedback_log.read_text("utf-8")
    rows = [json.loads(line) for line in log_text.splitlines()]
    assert [r["by"] for r in rows] == [first.json()["by"]] * 2 + [replaced.json()["by"]]
    assert rows[0]["by"] != rows[2]["by"] and rows[0]["by"].startswith("key-")
    assert not any(k in log_text for k in (*FEEDBACK_KEYS, API_KEY))  # fingerprints, never keys


def test_health_shows_log_paths_only_with_the_key(open_server, keyed_server, logs):
    """Item 8: /health needs no key, so it names the log files without their folders."""
    open_health = requests.get(open_server.url + "/health", timeout=5).json()
    assert open_health["logging"]["feedback"]["file"] == "open.jsonl"
    assert str(logs) not in json.dumps(open_health)
    anonymous = requests.get(keyed_server.url + "/health", timeout=5).json()
    assert anonymous["logging"]["feedback"]["file"] == "keyed.jsonl"
    keyed = requests.get(keyed_server.url + "/health", headers=bearer(API_KEY), timeout=5)
    assert keyed.json()["logging"]["feedback"]["file"] == str(keyed_server.feedback_log)


def test_without_a_key_only_loopback_host_names_are_answered(open_server, keyed_server):
    """Item 8: a DNS-rebinding page sends its own name as Host; refused when no key guards."""
    url = open_server.url
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        response = requests.post(url + "/v1/ner", json={"text": "张三"}, headers={"Host": host},
                                 timeout=10)
        assert response.status_code == 403, host
        assert "refused" in response.json()["detail"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert requests.get(url + "/v1/task", headers={"Host": host}, timeout=10).status_code == 200
    # With a key, the key is the guard: any Host.
    keyed = requests.get(keyed_server.url + "/v1/task", timeout=10,
                         headers={"Host": "nerft.example", **bearer(API_KEY)})
    assert keyed.status_code == 200
