"""`nerft predict` end to end on a tiny run directory: one sentence, a text file, stdin."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nerft.models.loader import load_model

LABELS = ["地点", "人名", "地理实体", "组织"]
SENTENCE = "国会外有大约200名警察驻守，防止抗议人群闯入国会。"


@pytest.fixture(scope="module")
def cli():
    from nerft.cli import app  # the real command, with its one error handler

    runner = CliRunner()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer model: threads only add synchronisation
    yield lambda args, stdin=None: runner.invoke(app, ["predict", *map(str, args)], input=stdin)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """What `nerft train` leaves behind: config, run.json, and a LoRA adapter in best/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("run")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               task_type="CAUSAL_LM"))
        with torch.no_grad():  # a non-zero B so the adapter really changes the model
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    lora.save_pretrained(run / "best")
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"dir": "data/gone"}, "model": {"source": str(tiny_model_dir), "dtype": "float32"}}),
        encoding="utf-8")
    (run / "run.json").write_text(json.dumps({"labels": LABELS}, ensure_ascii=False), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_model(str(run_dir))


def test_load_model_reads_the_run(loaded, tiny_model_dir):
    model, _, task = loaded
    assert task.labels == tuple(LABELS)
    base, _, zero_shot = load_model(str(tiny_model_dir), labels=["人名", "地点"])
    assert zero_shot.labels == ("人名", "地点")
    # The adapter is merged into the weights, so the run's model differs from its base.
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])


def test_full_model_in_best_loads_with_the_base_tokenizer(tmp_path, run_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "full"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(run / "best")  # no tokenizer
    for name in ("config.yaml", "run.json"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    model, tokenizer, task = load_model(str(run), labels=["人名"])
    assert task.labels == ("人名",)  # explicit labels win over run.json
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151_645 and not hasattr(model, "peft_config")


def test_unknown_answer_format_fails_before_any_weights_load(tmp_path, run_dir):
    from nerft.infer.predict import InferenceError

    run = tmp_path / "odd-format"
    run.mkdir()  # no best/ or final/: the format check must come first to name config.yaml
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    config["data"]["answer_format"] = "xml"
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (run / "run.json").write_bytes((run_dir / "run.json").read_bytes())
    with pytest.raises(InferenceError, match=r"config\.yaml: data\.answer_format 'xml' is not one of json, compact"):
        load_model(str(run))


def test_one_sentence_prints_its_entities(cli, run_dir, loaded):
    from nerft.infer.predict import predict as predict_rows

    # This random adapter finds nothing in the first sentence and an "entity" in the second.
    texts = [SENTENCE, "张三在北京大学读书。"]
    expected = predict_rows(*loaded, [("x", t) for t in texts])
    assert not expected[0].entities and expected[1].entities
    for text, pred in zip(texts, expected):
        result = cli([run_dir, text])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(text + "\n")
        assert ("no entity found" in result.stdout) == (not pred.entities)
        for e in pred.entities:
            assert f"│ {e.start:>5} │ {e.end:>3} │ {e.label}" in result.stdout and e.text in result.stdout


def test_text_file_to_jsonl(cli, run_dir, tmp_path):
    lines = [SENTENCE, "张三在北京大学读书。", "", '他说"你好"。']
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    result = cli([run_dir, "--input", source, "--output", out, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == [t for t in lines if t]
    assert [r["id"] for r in rows] == ["in:1", "in:2", "in:4"]
    for r in rows:
        assert set(r) == {"id", "text", "entities", "answer"} and r["answer"]
        for e in r["entities"]:
            assert r["text"][e["start"]:e["end"]] == e["text"] and e["label"] in LABELS


def test_jsonl_input_and_unconstrained(cli, run_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "text": "张三在北京。", "entities": []}, ensure_ascii=False)
                      + "\n", encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    result = cli([run_dir, "-i", source, "-o", out, "--no-constrain"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["id"] == "a" and row["text"] == "张三在北京。"


def test_stdin_sentences(cli, run_dir):
    result = cli([run_dir, "-"], stdin="张三在北京。\n\n李四去了上海。\n")
    assert result.exit_code == 0, result.output
    assert "stdin:1" in result.stdout and "stdin:3" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["{missing}", "句子"], "no such run or model folder"),
    (["./runs/typo", "句子"], "no such run or model folder"),
    (["{run}", "  "], "the sentence is empty"),
    (["{run}", "--input", "{latin1}"], "not UTF-8"),
    (["{run}", "句子", "--output", "{tmp}"], "is a folder"),
    (["{run}"], "give either a sentence"),
    (["{run}", "句子", "--input", "x.txt"], "give either a sentence"),
    (["{run}", "--input", "{run}/nothing.jsonl"], "no such file"),
    (["{run}", "句子", "--labels", " , "], "--labels is empty"),
])
def test_errors_are_one_line_with_exit_code_2(cli, run_dir, tmp_path, args, message):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("张三\n".encode() + "café\n".encode("latin-1"))
    args = [a.format(run=run_dir, missing=tmp_path / "missing", latin1=latin1, tmp=tmp_path)
            for a in args]
    result = cli(args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


CUSTOM_CODE = """
import os, pathlib
pathlib.Path(os.environ["NERFT_REMOTE_CODE_SENTINEL"]).touch()
from transformers import Qwen2Config, Qwen2ForCausalLM

class CustomConfig(Qwen2Config):
    pass

class CustomModel(Qwen2ForCausalLM):
    config_class = CustomConfig
"""


def test_a_shared_run_directory_runs_no_code(cli, run_dir, tiny_model_dir, tmp_path, monkeypatch):
    """A downloaded run whose best/ points its config at a Python file, and whose config.yaml
    says trust_remote_code: true, must not run that file unless the user passes the flag."""
    from transformers import AutoModelForCausalLM

    sentinel = tmp_path / "code-ran"
    monkeypatch.setenv("NERFT_REMOTE_CODE_SENTINEL", str(sentinel))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    run = tmp_path / "hostile"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(run / "best")
    config = json.loads((run / "best" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.CustomConfig", "AutoModelForCausalLM": "evil.CustomModel"}
    (run / "best" / "config.json").write_text(json.dumps(config))
    (run / "best" / "evil.py").write_text(CUSTOM_CODE)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"source": str(tiny_model_dir), "trust_remote_code": True}}))
    (run / "run.json").write_bytes((run_dir / "run.json").read_bytes())
    result = cli([run, "张三在北京。"])
    assert result.exit_code == 0, result.output
    assert not sentinel.exists()


def run_eval(*args):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nerft", "eval", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_eval_keeps_the_run_s_labels_on_other_data(run_dir, tmp_path):
    data = tmp_path / "other"
    data.mkdir()
    rows = [{"id": "1", "text": "张三在北京。", "entities": [
        {"start": 0, "end": 2, "label": "人名", "text": "张三"},
        {"start": 3, "end": 5, "label": "城市", "text": "北京"}]}]
    (data / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (data / "stats.json").write_text(json.dumps({"labels": ["人名", "城市"]}, ensure_ascii=False))
    rc, out = run_eval(run_dir, "--data", data, "--out", tmp_path / "report")
    assert rc == 0, out[-2000:]
    assert "warning" in out and "城市" in out
    (pred,) = [json.loads(x) for x in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    assert all(e["label"] in LABELS for e in pred["entities"])  # the task it was trained on


def test_eval_refuses_spans_that_do_not_match_their_text(run_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "text": "张三在北京。", "entities": [
        {"start": 0, "end": 2, "label": "人名", "text": "北京"}]}, ensure_ascii=False) + "\n")
    rc, out = run_eval(run_dir, "--data", bad)
    assert rc == 2 and "bad.jsonl:1" in out and "does not match" in out
