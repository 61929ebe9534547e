"""`nerft serve` over real HTTP: answers, offsets, limits, the OpenAI client, batching, shutdown."""

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from nerft.models.loader import load_model
from nerft.infer.predict import predict

# Emoji are one code point but two UTF-16 units: an offset bug shows up after them.
EMOJI_TEXT = "😀😀 张三 went to 北京大学 🎓 读书。"
TEXTS = [EMOJI_TEXT, "Hi 😀 张三在北京大学读书。", "我们明天去南京看长江。"]


@pytest.fixture(scope="module")
def expected(tiny_lora_run):
    """What `nerft predict` finds with the same run, in this process."""
    return predict(*load_model(str(tiny_lora_run)), [(str(i), t) for i, t in enumerate(TEXTS)])


def test_ner_matches_predict_with_code_point_offsets(server, expected):
    response = requests.post(server.url + "/v1/ner", json={"texts": TEXTS}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-run0" or body["model"].startswith("tiny-run")
    assert [r["text"] for r in body["results"]] == TEXTS
    assert [r["entities"] for r in body["results"]] == [[e.to_dict() for e in p.entities] for p in expected]
    emoji_entities = body["results"][0]["entities"]
    assert emoji_entities, "the tiny run finds an entity after the emoji in this sentence"
    for e in emoji_entities:
        assert EMOJI_TEXT[e["start"]:e["end"]] == e["text"]
        assert e["start"] > EMOJI_TEXT.index("🎓")  # counted in code points, not UTF-16 units
    one = requests.post(server.url + "/v1/ner", json={"text": TEXTS[1]}, timeout=60).json()
    assert one["results"] == [body["results"][1]]


@pytest.mark.parametrize("payload, raw, status, message", [
    ({"text": "长" * 201}, None, 413, "text 0 has 201 characters; the limit is 200"),
    ({"texts": ["张三"] * 5}, None, 413, "5 texts in one request; the limit is 4"),
    ({"text": "长" * 20_000}, None, 413, "request body of"),  # refused before it is parsed
    (None, b'{"text": "unterminated', 422, "JSON decode error"),
    ({"text": 5}, None, 422, "string"),
    ({"texts": "张三"}, None, 422, "list"),
    ({}, None, 422, 'give either "text"'),
    ({"text": "a", "texts": ["b"]}, None, 422, 'give either "text"'),
    ({"texts": []}, None, 422, '"texts" is empty'),
    ({"text": "a", "lang": "zh"}, None, 422, "Extra inputs are not permitted"),
])
def test_limits_and_bad_requests(server, payload, raw, status, message):
    kwargs = {"json": payload} if raw is None else {
        "data": raw, "headers": {"Content-Type": "application/json"}}
    response = requests.post(server.url + "/v1/ner", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert message in str(response.json())


def test_models_docs_and_task(server):
    models = requests.get(server.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"].startswith("tiny-run")
    task = requests.get(server.url + "/v1/task", timeout=10).json()
    assert task["labels"] == ["地点", "人名", "地理实体", "组织"]
    docs = requests.get(server.url + "/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/v1/ner", "/v1/chat/completions", "/health"} <= set(schema["paths"])


def test_openai_client_gets_the_constrained_answer(server, expected):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny-run", messages=[{"role": "system", "content": "ignored"},
                                    {"role": "user", "content": EMOJI_TEXT}])
    assert reply.choices[0].message.content == expected[0].answer
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens > 0
    # nerft's own user message ("文本:" + sentence) gives the same answer.
    again = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "文本:" + EMOJI_TEXT}])
    assert again.choices[0].message.content == expected[0].answer
    stream = client.chat.completions.create(model="tiny-run", stream=True,
                                            messages=[{"role": "user", "content": TEXTS[2]}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected[2].answer
    assert chunks[-1].choices[0].finish_reason == "stop"
    from openai import UnprocessableEntityError

    with pytest.raises(UnprocessableEntityError, match="no user message"):
        client.chat.completions.create(model="x", messages=[{"role": "system", "content": "hi"}])


def test_concurrent_requests_share_decode_calls(server):
    calls_before = server.metric("nerft_batch_sentences_count")
    sentences_before = server.metric("nerft_batch_sentences_sum")
    texts = [f"王{i}在广州工作。" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda t: requests.post(server.url + "/v1/ner", json={"text": t},
                                                          timeout=60), texts))
    assert [r.status_code for r in responses] == [200] * 8
    calls = server.metric("nerft_batch_sentences_count") - calls_before
    assert server.metric("nerft_batch_sentences_sum") - sentences_before == 8
    assert 1 <= calls < 8, f"8 concurrent requests took {calls} decode calls"
    assert server.metric("nerft_requests_total") > 8
    assert server.metric("nerft_request_seconds_count") > 8 and server.metric("nerft_queue_sentences") == 0


def test_api_key_guards_every_route_but_health(keyed_server, api_key):
    API_KEY = api_key
    url = keyed_server.url
    assert requests.get(url + "/health", timeout=10).status_code == 200
    for method, path in [("get", "/"), ("get", "/metrics"), ("get", "/v1/models"), ("get", "/docs"),
                         ("post", "/v1/ner"), ("post", "/v1/chat/completions")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            response = getattr(requests, method)(url + path, headers=headers, json={"text": "张三"}, timeout=10)
            assert response.status_code == 401, (path, headers)
            assert "API key" in response.json()["detail"]
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}):
        ok = requests.post(url + "/v1/ner", headers=headers, json={"text": "张三在北京。"}, timeout=60)
        assert ok.status_code == 200, ok.text
    assert requests.get(url + "/", auth=("any", API_KEY), timeout=10).status_code == 200  # browsers

    from openai import AuthenticationError, OpenAI

    reply = OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "张三在北京。"}])
    assert reply.choices[0].message.content
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "张三在北京。"}])


def test_full_queue_answers_503_with_retry_after(keyed_server, api_key):
    headers = {"Authorization": f"Bearer {api_key}"}
    texts = [f"李{i}昨天去了上海，又去了杭州。" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda t: requests.post(keyed_server.url + "/v1/ner", headers=headers,
                                                          json={"text": t}, timeout=120), texts))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}, codes
    busy = [r for r in responses if r.status_code == 503]
    assert all(int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["detail"] for r in busy)
    assert keyed_server.metric("nerft_errors_total", headers) >= len(busy)


def test_sigterm_answers_every_accepted_request(start_server):
    server = start_server(["--no-batching", "--max-batch", "4"])
    texts = [f"赵{i}和钱{i}在南京见面，然后去了上海。" for i in range(16)]
    results = {}

    def call(i):
        results[i] = requests.post(server.url + "/v1/ner", json={"texts": texts}, timeout=300)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while server.metric("nerft_requests_in_progress") < 7:  # 6 requests + this /metrics call
        assert time.monotonic() < deadline, "requests never all arrived"
        time.sleep(0.05)
    assert server.metric("nerft_queue_sentences") > 0, "shut down before the queue emptied"
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(300)
    assert [results[i].status_code for i in range(6)] == [200] * 6
    assert all(len(results[i].json()["results"]) == 16 for i in range(6))
    # uvicorn re-raises SIGTERM after its clean shutdown, so the exit status is the signal's.
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Waiting for connections to close" in server.output()
    assert "Application shutdown complete" in server.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/health", timeout=5)
