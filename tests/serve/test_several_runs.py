"""Several runs from one server (`nerft serve A B`): one copy of the base weights, each run's
answers equal to its own `nerft predict`, requests routed by name, refusals in one line."""

import inspect
import json
import shutil

import pytest
import requests
import yaml
from typer.testing import CliRunner

from nerft.infer.predict import predict
from nerft.models.loader import load_model
from nerft.serve.engine import load_runs

TEXTS = ["张三在北京大学读书。", "😀 李四昨天去了上海。", "我们明天去南京看长江。",
         "联合国秘书长访问了日内瓦。"]
ROWS = [(str(i), t) for i, t in enumerate(TEXTS)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def own_predictions(tiny_lora_run, second_lora_run):
    """What `nerft predict` answers with each run alone (its adapter merged, as predict loads it)."""
    return {run.name: predict(*load_model(str(run)), ROWS) for run in (tiny_lora_run, second_lora_run)}


def test_two_runs_share_the_base_weights_and_answer_as_their_own_predict(
        tiny_lora_run, second_lora_run, own_predictions):
    runs = load_runs([str(tiny_lora_run), str(second_lora_run)], max_batch=4)
    assert [r.name for r in runs] == [tiny_lora_run.name, second_lora_run.name]
    a, b = (own_predictions[r.name] for r in runs)
    assert [d.answer for d in a] != [d.answer for d in b], "the two runs must answer differently"
    # Interleaved, as the batching worker would call them: each call switches to its adapter.
    for run in runs + runs[::-1]:
        got = run.decode(TEXTS)
        assert [d.answer for d in got] == [d.answer for d in own_predictions[run.name]], run.name
        assert [d.entities for d in got] == [d.entities for d in own_predictions[run.name]]

    # One model object behind both decoders, with the base weights once and both adapters.
    peft_model, other = (inspect.getclosurevars(r.decode).nonlocals["model"] for r in runs)
    assert peft_model is other and set(peft_model.peft_config) == {"default", "run1"}
    alone = load_model(str(tiny_lora_run)).model  # merged: the base model's size
    base_bytes = sum(p.numel() * p.element_size() for p in alone.parameters())
    storages = {}
    for p in peft_model.parameters():
        storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    adapter_bytes = sum(p.numel() * p.element_size() for n, p in peft_model.named_parameters()
                        if "lora_" in n)
    assert adapter_bytes > 0
    # Every tensor counted once: the base weights once plus the two adapters, not two bases.
    assert sum(storages.values()) <= base_bytes + adapter_bytes
    assert sum(storages.values()) < 1.5 * base_bytes


@pytest.fixture(scope="module")
def cli():
    from nerft.cli import app

    return lambda args: CliRunner().invoke(app, ["serve", *map(str, args)])


def _variant(run, tmp_path, name, edit_config=None, full=False):
    """A copy of `run` with its config edited, or with full fine-tuned weights in best/."""
    copy = tmp_path / name
    shutil.copytree(run, copy)
    if edit_config:
        config = yaml.safe_load((copy / "config.yaml").read_text(encoding="utf-8"))
        edit_config(config)
        (copy / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if full:
        shutil.rmtree(copy / "best")
        (copy / "best").mkdir()
        (copy / "best" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return copy


@pytest.mark.parametrize("variant, message", [
    (dict(edit_config=lambda c: c["model"].update(source="Qwen/Qwen2.5-7B-Instruct")),
     "have different base models"),
    (dict(edit_config=lambda c: c["data"].update(answer_format="compact")),
     "have different answer formats"),
    (dict(full=True), "is full fine-tuned weights, not an adapter"),
])
def test_runs_that_cannot_share_a_process_are_refused_in_one_line(cli, tiny_lora_run, tmp_path,
                                                                   variant, message):
    other = _variant(tiny_lora_run, tmp_path, "other-run", **variant)
    result = cli([tiny_lora_run, other])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert message in lines[0] and "other-run" in lines[0]
    if "different" in message:
        assert str(tiny_lora_run) in lines[0]  # both runs named


def test_same_name_twice_and_labels_with_several_runs_are_refused(cli, tiny_lora_run, tmp_path):
    twin = tmp_path / "x" / tiny_lora_run.name
    shutil.copytree(tiny_lora_run, twin)
    result = cli([tiny_lora_run, twin])
    assert result.exit_code == 2 and "would both be served as" in result.stderr
    result = cli([tiny_lora_run, twin, "--labels", "人名"])
    assert result.exit_code == 2 and "--labels applies to one served model" in result.stderr


def test_one_server_answers_for_each_run_by_name(two_run_server, tiny_lora_run, second_lora_run,
                                                 own_predictions):
    url, a, b = two_run_server.url, tiny_lora_run.name, second_lora_run.name
    models = requests.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [a, b]

    def ner(**fields):
        return requests.post(url + "/v1/ner", json={"texts": TEXTS, **fields}, timeout=120)

    expected = {name: [[e.to_dict() for e in d.entities] for d in rows]
                for name, rows in own_predictions.items()}
    for fields, name in [({}, a), ({"run": a}, a), ({"run": b}, b)]:
        body = ner(**fields).json()
        assert body["model"] == name
        assert [r["entities"] for r in body["results"]] == expected[name], fields
    wrong = ner(run="nope")
    assert wrong.status_code == 422
    assert f"run: 'nope' is not served here; choose one of {a}, {b}" in wrong.json()["detail"]

    from openai import OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    for name in (a, b):
        reply = client.chat.completions.create(model=name, messages=[{"role": "user",
                                                                      "content": TEXTS[1]}])
        assert reply.model == name
        assert reply.choices[0].message.content == own_predictions[name][1].answer
    with pytest.raises(UnprocessableEntityError, match="model: 'gpt-4' is not served here"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])

    task_b = requests.get(url + "/v1/task", params={"run": b}, timeout=10).json()
    assert task_b["model"] == b and task_b["runs"] == [a, b]

    # A correction of run b's answer is recorded for run b.
    answered = ner(run=b).json()
    stored = requests.post(url + "/v1/feedback", json={
        "request_id": answered["request_id"], "index": 0,
        "entities": [{"text": "张三", "label": "人名"}]}, timeout=10)
    assert stored.status_code == 200, stored.text
    row = json.loads(two_run_server.feedback_log.read_text(encoding="utf-8").splitlines()[-1])
    assert row["model"] == b and row["text"] == TEXTS[0]
    mismatch = requests.post(url + "/v1/feedback", json={
        "request_id": answered["request_id"], "run": a, "entities": []}, timeout=10)
    assert mismatch.status_code == 422 and "answered by" in mismatch.json()["detail"]

    assert two_run_server.metric("nerft_run_sentences_total") >= 4 * len(TEXTS)
    text = requests.get(url + "/metrics", timeout=10).text
    assert f'nerft_run_sentences_total{{run="{b}"}}' in text
