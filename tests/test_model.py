"""Model sources: local folders, GGUF files, unreachable hubs, remote code, and the demo model."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nerft.cache import is_complete
from nerft.models.base import ModelSourceError, load_model_and_tokenizer, resolve_model
from tiny import qwen_tokenizer, tiny_qwen2

SENTENCES = ["张三在北京大学读书。", "菲律宾总统埃斯特拉达２号透过马尼拉当地电台宣布说。",
             "没有找到任何实体", "上海浦东新区2024年GDP增长5.2%，外滩<tool_call>"]


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_qwen2()


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NERFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(".nerft-complete"))
    return dest


def test_local_folder_resolves_to_itself(tiny):
    assert resolve_model(str(tiny)) == tiny


def test_folder_without_weights_says_what_is_missing(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="no weights"):
        resolve_model(str(folder))


def test_unknown_source_lists_what_is_accepted():
    with pytest.raises(ModelSourceError, match="hub id .* or 'demo'"):
        resolve_model("not a model")


def test_load_local_model_fp32_on_cpu_and_dtype_override(tiny):
    model, tokenizer = load_model_and_tokenizer(str(tiny))
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    model, _ = load_model_and_tokenizer(str(tiny), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ModelSourceError, match="dtype 'fp8'"):
        load_model_and_tokenizer(str(tiny), dtype="fp8")


# --- GGUF --------------------------------------------------------------------------------------
# Reading the metadata of a GGUF with the full 151,936-token vocabulary takes the `gguf` library
# 15-30 s per pass on 2 cores, so this test writes one with the first 10,000 Qwen BPE ranks plus
# the three ChatML tokens: same code path, a fraction of the time. The full-size path is covered
# by the slow demo test.
KEPT_RANKS = 10_000
CONTROL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def small_qwen_vocab() -> tuple[list[str], list[str], object]:
    """Tokens and merges of the first KEPT_RANKS Qwen ranks (a valid BPE on its own), + ChatML."""
    full = qwen_tokenizer()
    by_id = {i: t for t, i in full.get_vocab().items()}
    tokens = [by_id[i] for i in range(KEPT_RANKS)] + list(CONTROL)
    kept = set(tokens)
    merges = json.loads(full.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    # Byte-level tokens never contain a space, so "left right" splits unambiguously.
    merges = [m for m in merges if kept.issuperset([*m.split(" "), m.replace(" ", "")])]
    return tokens, merges, full


def write_gguf(model, tokens: list[str], merges: list[str], chat_template: str, path: Path) -> None:
    """Write a float32 GGUF of a Qwen2 model the way llama.cpp lays one out (names via `gguf`)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny qwen2")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in CONTROL else gguf.TokenType.NORMAL
                            for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a tied model has no output.weight: that is how the file says "tied"
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")),
                          tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_source_converts_once_and_matches_the_original(tmp_path, private_cache):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokens, merges, full = small_qwen_vocab()
    torch.manual_seed(0)
    original = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True)).eval()
    gguf_file = tmp_path / "tiny.gguf"
    write_gguf(original, tokens, merges, full.chat_template, gguf_file)

    folder = resolve_model(str(gguf_file))
    assert is_complete(folder) and folder.is_relative_to(private_cache)
    assert json.loads((folder / "config.json").read_text()).get("quantization_config") is None
    start = time.perf_counter()
    assert resolve_model(str(gguf_file)) == folder  # cached by content hash
    assert time.perf_counter() - start < 2

    converted, tokenizer = load_model_and_tokenizer(str(gguf_file))
    assert converted.config.tie_word_embeddings and converted.config.num_hidden_layers == 2
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    assert tokenizer.eos_token == "<|im_end|>"
    for text in ["Hello world, this is a test.", "def main():\n    return 42"]:
        expected = full(text)["input_ids"]
        assert max(expected) < KEPT_RANKS  # so the cut-down vocabulary must give the same ids
        assert tokenizer(text)["input_ids"] == expected
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello world"}],
                                        add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))


# --- hubs that cannot be reached -----------------------------------------------------------------

def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_hub_id_fails_fast_when_offline_mode_is_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelSourceError) as err:
        resolve_model("Qwen/Qwen2-0.5B")
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "nerft model fetch demo" in message
    assert "\n" not in message


def test_hub_id_fails_fast_without_network(monkeypatch):
    if _hub_reachable():
        pytest.skip("huggingface.co is reachable from here")
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match=r"cannot reach the Hugging Face hub for "
                                               r"'Qwen/Qwen2-0.5B'.*nerft model fetch demo"):
        resolve_model("Qwen/Qwen2-0.5B")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("offline", ["1", None])
def test_hub_model_already_in_the_hf_cache_needs_no_network(tiny, tmp_path, monkeypatch, offline):
    from huggingface_hub import constants

    if offline is None and _hub_reachable():
        pytest.skip("huggingface.co is reachable from here")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--nerft-test--tiny-qwen2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = _copy(tiny, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline == "1")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model("nerft-test/tiny-qwen2") == snapshot


def test_cli_error_is_one_line_exit_2_no_traceback():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "nerft", "model", "fetch", "Qwen/Qwen2-0.5B"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_cli_prints_the_folder_of_a_local_model(tiny):
    done = subprocess.run([sys.executable, "-m", "nerft", "model", "fetch", str(tiny)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == str(tiny)


def test_modelscope_without_package_says_how_to_install():
    if importlib.util.find_spec("modelscope") is not None:
        pytest.skip("modelscope is installed")
    with pytest.raises(ModelSourceError, match="pip install modelscope"):
        resolve_model("modelscope:qwen/Qwen2-1.5B-Instruct")


# --- trust_remote_code ------------------------------------------------------------------------

CUSTOM_CODE = textwrap.dedent("""
    import os, pathlib
    pathlib.Path(os.environ["NERFT_REMOTE_CODE_SENTINEL"]).touch()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    class CustomConfig(Qwen2Config):
        pass

    class CustomModel(Qwen2ForCausalLM):
        config_class = CustomConfig
""")


def _with_remote_code(tiny: Path, dest: Path, model_type: str) -> Path:
    folder = _copy(tiny, dest)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "custom_qwen.CustomConfig",
                          "AutoModelForCausalLM": "custom_qwen.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_qwen.py").write_text(CUSTOM_CODE)
    return folder


def test_remote_code_is_not_run_unless_asked(tiny, tmp_path, monkeypatch):
    sentinel = tmp_path / "remote-code-ran"
    monkeypatch.setenv("NERFT_REMOTE_CODE_SENTINEL", str(sentinel))
    folder = _with_remote_code(tiny, tmp_path / "known", "qwen2")
    model, _ = load_model_and_tokenizer(str(folder))
    assert type(model).__name__ == "Qwen2ForCausalLM" and not sentinel.exists()

    folder = _with_remote_code(tiny, tmp_path / "unknown", "nerft_custom")
    with pytest.raises(ModelSourceError, match="--trust-remote-code"):
        load_model_and_tokenizer(str(folder))
    assert not sentinel.exists()


def test_remote_code_runs_when_asked(tiny, tmp_path):
    sentinel = tmp_path / "remote-code-ran"
    folder = _with_remote_code(tiny, tmp_path / "known", "qwen2")
    env = {**os.environ, "NERFT_REMOTE_CODE_SENTINEL": str(sentinel),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = ("from nerft.models.base import load_model_and_tokenizer\n"
              f"m, _ = load_model_and_tokenizer({str(folder)!r}, trust_remote_code=True)\n"
              "print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "CustomModel" and sentinel.exists()


# --- the real demo model (slow the first time: download + convert) -----------------------------

@pytest.mark.slow
def test_fetch_demo_gives_a_working_qwen2_chat_model():
    from nerft.models.base import fetch_demo

    folder = fetch_demo(progress=False)
    start = time.perf_counter()
    assert fetch_demo(progress=False) == folder
    assert time.perf_counter() - start < 1

    model, tokenizer = load_model_and_tokenizer("demo")
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("qwen2", 24, 896)
    assert cfg.vocab_size == 151936 and tokenizer.eos_token == "<|im_end|>"
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "用一句话介绍北京。"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()


@pytest.mark.slow
def test_demo_tokenizer_matches_the_tiny_models_tokenizer():
    """Tests run on the tiny tokenizer, the demo on the GGUF one: they must agree."""
    from nerft.models.base import fetch_demo

    demo = AutoTokenizer.from_pretrained(fetch_demo(progress=False))
    tiny = qwen_tokenizer()
    for text in SENTENCES:
        assert demo(text)["input_ids"] == tiny(text)["input_ids"]
    for messages in ([{"role": "user", "content": SENTENCES[0]}],
                     [{"role": "system", "content": "抽取实体"},
                      {"role": "user", "content": SENTENCES[1]},
                      {"role": "assistant", "content": '{"entity_text": "菲律宾"}'}]):
        for gen in (False, True):
            a = demo.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            b = tiny.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert a == b
            assert demo(a)["input_ids"] == tiny(b)["input_ids"]


def test_a_tagger_on_chat_weights_loads_without_the_new_head_report(tiny_model_dir, capfd):
    import logging

    from nerft.models.base import _ExpectedHeadReport, load_model_and_tokenizer

    load_model_and_tokenizer(str(tiny_model_dir), tags=["O", "B-x", "I-x"])
    assert "LOAD REPORT" not in capfd.readouterr().err  # the new head is expected: not news

    def report(*rows):
        lines = ["Qwen2ForTokenClassification LOAD REPORT from: x", "Key | Status | ", "----+---"]
        message = "\n".join(lines + [f"{key} | {status} | " for key, status in rows])
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message, None, None)

    quiet = _ExpectedHeadReport()
    assert not quiet.filter(report(("score.weight", "MISSING"), ("lm_head.weight", "UNEXPECTED")))
    # anything else a load report says still reaches the user
    assert quiet.filter(report(("score.weight", "MISSING"), ("model.layers.0.mlp.up_proj.weight", "MISSING")))
    assert quiet.filter(report(("score.weight", "MISMATCH")))
