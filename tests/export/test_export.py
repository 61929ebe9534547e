"""`nerft export` on a tiny LoRA run: the adapter with its task, a merged folder that loads with
transformers alone and behaves like the run, and a self-check that catches a wrong export."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from nerft.export import ExportError
from nerft.export.parity import check_parity, reference_outputs
from nerft.infer.predict import predict
from nerft.models.loader import load_model
from nerft.task.prompt import Task

IM_END, END_OF_TEXT = 151_645, 151_643


@pytest.fixture(scope="module")
def cli():
    from nerft.cli import app  # the real command, with its one error handler

    runner = CliRunner()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda args: runner.invoke(app, ["export", *map(str, args)])
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def merged(cli, tiny_lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "merged"
    result = cli([tiny_lora_run, "--out", out, "--merge"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_adapter_export_carries_the_task_and_card(cli, tiny_lora_run, tmp_path, tiny_model_dir):
    out = tmp_path / "adapter"
    result = cli([tiny_lora_run, "--out", out])
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (tiny_lora_run / "best" / "adapter_model.safetensors").read_bytes()
    task = json.loads((out / "task.json").read_text(encoding="utf-8"))
    expected = Task(("地点", "人名", "地理实体", "组织"))
    assert task["labels"] == list(expected.labels) and task["system_prompt"] == expected.system_prompt
    assert task["stop_tokens"][:2] == ["<|im_end|>", "<|endoftext|>"]
    assert task["stop_token_ids"][:2] == [IM_END, END_OF_TEXT]
    assert task["answer_format"] == "json" and task["answer"]["no_entity"] == "没有找到任何实体"
    assert task["base_model"] == str(tiny_model_dir) and "<|im_start|>" in task["chat_template"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nbase_model: ") and "validation entity F1" in card and "0.2500" in card
    assert json.loads((tiny_lora_run / "run.json").read_text())["data_sha256"]["val.jsonl"] in card


def test_merged_export_loads_with_transformers_alone(merged, tiny_lora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out, output = merged
    assert "check passed" in output and "answers identical on 3/3" in output
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not hasattr(model, "peft_config") and tokenizer.chat_template
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert eos[:2] == [IM_END, END_OF_TEXT]
    # Same entities as the run itself on sentences it was not checked on.
    texts = [("a", "王五在广州的中山大学工作。"), ("b", "我们明天去南京看长江。")]
    run_preds = predict(*load_model(str(tiny_lora_run)), texts)
    export_preds = predict(*load_model(str(out)), texts)  # labels from nerft.json
    assert [p.answer for p in run_preds] == [p.answer for p in export_preds]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Export check" in card and "max |Δlogit|" in card
    assert "nerft serve merged " in card and ".tmp" not in card  # the final folder's name
    umask = os.umask(0)
    os.umask(umask)
    # Not the private 0600 that temporary folders and some writers leave.
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}


def test_self_check_rejects_a_model_that_differs(merged, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = merged
    tokenizer = AutoTokenizer.from_pretrained(out)
    task = Task(("地点", "人名", "地理实体", "组织"))
    texts = ["张三在北京大学读书。", "李四昨天去了上海。"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = reference_outputs(model, tokenizer, task, texts)
    assert check_parity(reference, model, tokenizer, task, texts, "float32").max_logit_diff == 0
    # What a broken merge leaves behind: the base weights without the adapter.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with pytest.raises(ExportError, match=r"export check failed: max \|Δlogit\| [0-9.e+-]+ \(allowed 1.00e-03"):
        check_parity(reference, base, tokenizer, task, texts, "float32")


def test_export_errors(cli, tiny_lora_run, tmp_path, merged):
    result = cli([tmp_path / "nothing", "--out", tmp_path / "x"])
    assert result.exit_code == 2 and "not a `nerft train` run directory" in result.output
    out, _ = merged
    result = cli([tiny_lora_run, "--out", out])
    assert result.exit_code == 2 and "already exists and is not empty" in result.output
    result = cli([tiny_lora_run, "--out", tmp_path / "y", "--gguf", "q4"])
    assert result.exit_code == 2 and "choose one of f16, q8_0, q3_k_m" in result.output


def test_full_fine_tuning_run_exports_as_a_model_folder(cli, tiny_lora_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "full"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # what full fine-tuning leaves: every weight may have moved
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(run / "best")  # no tokenizer: the base model's is used
    for name in ("config.yaml", "run.json"):
        (run / name).write_bytes((tiny_lora_run / name).read_bytes())
    out = tmp_path / "export"
    result = cli([run, "--out", out])  # no adapter to keep: always a merged-style folder
    assert result.exit_code == 0, result.output
    assert "exported merged" in result.output and "answers identical on 3/3" in result.output
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    name = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(reloaded.state_dict()[name], model.state_dict()[name])


@pytest.fixture
def run_copy(tiny_lora_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_lora_run, run)
    return run


def test_a_merged_export_carries_one_task_record(merged):
    from nerft.export_dir import ExportDir

    out, _ = merged
    # One file says what the model does: predict, eval and serve all read task.json.
    assert not (out / "nerft.json").exists()
    record = ExportDir(out).read_task()
    assert record["labels"] == ["地点", "人名", "地理实体", "组织"]
    assert "task.json" in (out / "README.md").read_text(encoding="utf-8")


def test_a_link_out_of_the_run_is_refused_not_followed(cli, run_copy, tmp_path):
    """Issue 28 item 16: a symbolic link in the run's weights would have been copied as the
    file it points to (anywhere on the machine) into a folder made readable by all."""
    secret = tmp_path / "secret.txt"
    secret.write_text("private", encoding="utf-8")
    (run_copy / "best" / "notes.txt").symlink_to(secret)
    out = tmp_path / "export"
    result = cli([run_copy, "--out", out])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert f"{run_copy / 'best' / 'notes.txt'} is a symbolic link" in line and "Traceback" not in line
    assert not out.exists() and not list(tmp_path.glob(".export*"))
    assert secret.read_text(encoding="utf-8") == "private"


def test_a_score_without_a_number_fails_before_the_merge(cli, run_copy, tmp_path):
    """Issue 28 item 12: `precision: null` in the run's test scores used to fail with a
    traceback while writing the card, after the whole merge and check."""
    (run_copy / "eval-test").mkdir()
    (run_copy / "eval-test" / "metrics.json").write_text(json.dumps(
        {"sentences": 3, "scores": {"strict": {"micro": {"f1": 0.5, "precision": None, "recall": 0.5}}}}),
        encoding="utf-8")
    result = cli([run_copy, "--out", tmp_path / "export", "--merge"])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "precision None, not a number" in line and f"nerft eval {run_copy} --data DIR" in line
    assert "reference answers" not in line  # refused before any model was loaded
    assert not (tmp_path / "export").exists()
