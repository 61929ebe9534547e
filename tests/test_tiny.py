"""The real Qwen tokenizer and the tiny random Qwen2 that the rest of the tests stand on."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from nerft.cache import cache_root, is_complete
from tiny import DEFAULT_SYSTEM_PROMPT, qwen_tokenizer, tiny_qwen2

CHINESE = [
    "菲律宾总统埃斯特拉达２号透过马尼拉当地电台宣布说，军方已经营救出了１１名菲律宾人质。",
    "张三在北京大学读书，2024年毕业。",
    "“引号”、《书名号》与 English words 混排；还有emoji😀和换行\n结束。",
]


@pytest.fixture(scope="module")
def tok():
    return qwen_tokenizer()


def test_special_tokens_have_qwen_ids(tok):
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # In text, a control token is one id, not a string of bytes.
    assert tok("<|im_start|>user")["input_ids"] == [151644, 872]


def test_vocabulary_is_the_real_qwen_bpe(tok):
    assert len(tok) == 151665  # 151,643 ranks + the 22 Qwen2.5 control tokens
    assert tok("你好")["input_ids"] == [108386]
    assert tok("123")["input_ids"] == [16, 17, 18]  # Qwen2 splits digits one by one


def test_tokenizer_is_cached_for_the_next_call(tok):
    folder = cache_root() / "qwen-tokenizer"
    assert is_complete(folder) and (folder / "tokenizer.json").is_file()


@pytest.mark.parametrize("text", CHINESE)
def test_chinese_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # whole words, not bytes


def test_chat_template_renders_chatml(tok):
    messages = [{"role": "system", "content": "抽取实体。"},
                {"role": "user", "content": "张三在北京。"},
                {"role": "assistant", "content": "张三"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\n抽取实体。<|im_end|>\n"
        "<|im_start|>user\n张三在北京。<|im_end|>\n"
        "<|im_start|>assistant\n张三<|im_end|>\n")


def test_chat_template_default_system_and_generation_prompt(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")


def test_tiny_model_loads_like_a_real_model_and_generates():
    folder = tiny_qwen2()
    assert tiny_qwen2() == folder  # reused, not rebuilt
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == 151936
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4


def test_tiny_model_is_deterministic_per_seed(tmp_path):
    first = load_file(tiny_qwen2(tmp_path / "a", layers=1, seed=3) / "model.safetensors")
    again = load_file(tiny_qwen2(tmp_path / "b", layers=1, seed=3) / "model.safetensors")
    other = load_file(tiny_qwen2(tmp_path / "c", layers=1, seed=4) / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
