"""`nerft export`: the adapter (or a merged transformers folder) with its task record and a
model card, in an `ExportDir`.

The export is built in a folder beside `out` and renamed into place only after its own check
passed, so a failed export never leaves a folder that looks usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nerft.export import ExportCheckFailed, ExportError
from nerft.export.card import card_text, check_scores
from nerft.export.parity import PROBE_SENTENCES, ParityReport, check_parity, reference_outputs
from nerft.export.run_source import RunSource, read_run
from nerft.export.task_file import stop_token_ids, task_record
from nerft.export_dir import ExportDir, ExportDirError
from nerft.task.prompt import Task

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ExportResult:
    out: Path
    kind: str  # adapter | merged
    parity: ParityReport | None = None
    gguf_parity: ParityReport | None = None
    files: list[str] = field(default_factory=list)


def export_run(run: Path, out: Path, *, merge: bool = False, dtype: str = "auto",
               probes: int = 4, gguf: str | None = None, trust_remote_code: bool = False,
               log=lambda message: None) -> ExportResult:
    """Export `run` to `out` (which must not exist yet, or be empty)."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    src = read_run(run, trust_remote_code=trust_remote_code)
    if gguf is not None and src.head == "tagger":
        raise ExportError(f"--gguf: {run} has a tagging head (method.head tagger), which "
                          "llama.cpp cannot run (it only generates); export without --gguf "
                          "(the adapter, or --merge for transformers)")
    check_scores(src)  # a bad score file fails now, not after the merge
    out = Path(out)
    try:
        with ExportDir.create(out) as folder:
            if merge or not src.is_adapter:
                result = _export_merged(src, folder, out.name, dtype, probes, gguf, log)
            else:
                result = _export_adapter(src, folder, out.name, log)
    except ExportDirError as e:
        raise ExportError(str(e)) from None
    result.out = out
    result.files = ExportDir(out).files()
    return result


def _load_run_model(src: RunSource):
    """(model, tokenizer) as the run uses it, in float32 on CPU: an unmerged PeftModel for
    adapters (the parity reference the merged copy is checked against)."""
    from nerft.models.loader import load_model

    model, tokenizer, _ = load_model(str(src.run), merge=False, dtype="float32", device="cpu",
                                     trust_remote_code=src.trust_remote_code)
    return model, tokenizer


def _probe_texts(src: RunSource, probes: int) -> list[str]:
    return (src.validation_texts(probes) or list(PROBE_SENTENCES))[:max(1, probes)]


def _export_adapter(src: RunSource, out: ExportDir, name: str, log) -> ExportResult:
    """The adapter files as trained (byte for byte), with the task record and the model card."""
    from nerft.models.base import resolve_model
    from transformers import AutoTokenizer, GenerationConfig

    folder = resolve_model(src.base, trust_remote_code=src.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = None
    out.copy_adapter(src.weights, skip=src.record_files)  # validation scores: in the card
    task = src.task or Task(src.labels, src.answer_format)
    out.write_task(task_record(task, tokenizer, generation, base_model=src.base, head=src.head))
    out.write_card(card_text(src, kind="adapter", task=task, parity=None, name=name))
    log(f"adapter from {src.weights} with {out.task_file.name} and {out.card.name}")
    return ExportResult(out.path, "adapter")


def _export_merged(src: RunSource, out: ExportDir, name: str, dtype: str, probes: int,
                   gguf: str | None, log) -> ExportResult:
    from transformers import (AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer,
                              GenerationConfig)

    model, tokenizer = _load_run_model(src)
    task = src.task or Task(src.labels, src.answer_format)
    texts = _probe_texts(src, probes)
    log(f"reference answers of the run on {len(texts)} sentences")
    reference = reference_outputs(model, tokenizer, task, texts)
    if src.is_adapter:
        model = model.merge_and_unload()
    saved_dtype = _saved_dtype(src, dtype)
    tagger = src.head == "tagger"  # its head and tags travel in config.json; it generates nothing
    generation = getattr(model, "generation_config", None)  # a token classifier has none
    stops = stop_token_ids(tokenizer, generation)
    if not tagger:
        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id, eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1],
            do_sample=False)
    model.to(getattr(torch, saved_dtype)).save_pretrained(out.path)
    tokenizer.save_pretrained(out.path)
    # `nerft predict/eval/serve OUT` read the label set and the answer format from here.
    out.write_task(task_record(task, tokenizer, getattr(model, "generation_config", None),
                               base_model=src.base, head=src.head))
    del model
    auto = AutoModelForTokenClassification if tagger else AutoModelForCausalLM
    log(f"reloading {name} with {auto.__name__}.from_pretrained alone")
    reloaded = auto.from_pretrained(out.path, dtype=torch.float32).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(out.path)
    _check_tokenizer(tokenizer, reloaded_tok, texts, task)
    report = check_parity(reference, reloaded, reloaded_tok, task, texts, saved_dtype)
    log(f"check passed: {report.line()}")
    gguf_report = None
    if gguf is not None:
        from nerft.export.gguf import load_gguf, write_gguf_files

        del reloaded
        log(f"converting to GGUF ({gguf}) with llama.cpp's convert_hf_to_gguf.py")
        file = write_gguf_files(out, task, [reloaded_tok.convert_ids_to_tokens(i) for i in stops], gguf)
        log(f"reloading {file.name} with transformers (gguf_file=)")
        gguf_model, gguf_tok = load_gguf(file)
        _check_tokenizer(tokenizer, gguf_tok, texts, task)
        gguf_report = check_parity(reference, gguf_model, gguf_tok, task, texts, gguf)
        log(f"GGUF check passed: {gguf_report.line()}")
    out.write_card(card_text(src, kind="merged", task=task, parity=report, gguf_parity=gguf_report,
                             name=name))
    return ExportResult(out.path, "merged", report, gguf_report)


def _saved_dtype(src: RunSource, dtype: str) -> str:
    """`auto`: the dtype the base model ships in (its config.json), float32 when it says none."""
    if dtype != "auto":
        return dtype
    from nerft.models.base import resolve_model

    config = json.loads((resolve_model(src.base) / "config.json").read_text(encoding="utf-8"))
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return name if name in DTYPES else "float32"


def _check_tokenizer(original, reloaded, texts: list[str], task: Task) -> None:
    from nerft.task.chat import render_prompt

    for text in texts:
        a = original(render_prompt(original, task, text), add_special_tokens=False)["input_ids"]
        b = reloaded(render_prompt(reloaded, task, text), add_special_tokens=False)["input_ids"]
        if a != b:
            raise ExportCheckFailed(f"export check failed: the saved tokenizer or chat template encodes "
                              f"{text!r} differently from the run's")
