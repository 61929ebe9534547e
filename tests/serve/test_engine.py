"""What `nerft serve` can load: a run, an adapter export, a merged export; and the CLI's refusals."""

import json

import pytest
from typer.testing import CliRunner

from nerft.export.workflow import export_run
from nerft.infer.predict import InferenceError
from nerft.models.loader import load_model
from nerft.serve.engine import load_served, sentence_decoder

TEXTS = ["张三在北京大学读书。", "😀 李四昨天去了上海。"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_answers(tiny_lora_run):
    model, tokenizer, task = load_model(str(tiny_lora_run))
    return [d.answer for d in sentence_decoder(model, tokenizer, task, max_batch=4)(TEXTS)]


@pytest.mark.parametrize("merge", [False, True])
def test_exports_serve_the_run_answers(tiny_lora_run, tmp_path, run_answers, merge):
    out = export_run(tiny_lora_run, tmp_path / "export", merge=merge).out
    model, tokenizer, task, name = load_served(str(out))
    assert name == "export" and task.labels == ("地点", "人名", "地理实体", "组织")
    decoded = sentence_decoder(model, tokenizer, task, max_batch=4)(TEXTS)
    assert [d.answer for d in decoded] == run_answers
    for d in decoded:
        assert all(d.text[e.start:e.end] == e.text for e in d.entities) and d.prompt_tokens > 40

    record = json.loads((out / "task.json").read_text(encoding="utf-8"))
    record["system_prompt"] = "You are a helpful assistant."
    (out / "task.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InferenceError, match=r"task.json: field system_prompt differs"):
        load_served(str(out))


@pytest.fixture(scope="module")
def cli():
    from nerft.cli import app  # the real command, with its one error handler

    return lambda args: CliRunner().invoke(app, ["serve", *map(str, args)])


def test_vllm_backend_without_vllm_fails_in_one_line(cli, tiny_lora_run):
    import importlib.util

    result = cli([tiny_lora_run, "--backend", "vllm"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend vllm" in lines[0]
    if importlib.util.find_spec("vllm") is None:
        assert "not installed" in lines[0] and "pip install 'nerft[vllm]'" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["{run}", "--backend", "tgi"], "choose hf or vllm"),
    (["{missing}"], "no such run or model folder"),
    (["{run}", "--labels", " , "], "--labels is empty"),
])
def test_serve_refuses_bad_input_in_one_line(cli, tiny_lora_run, tmp_path, args, message):
    result = cli([a.format(run=tiny_lora_run, missing=tmp_path / "missing") for a in args])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
