"""`nerft export`: the adapter (or a merged transformers folder) with its task record and a
model card, in an `ExportDir`.

The export is built in a folder beside `out` and renamed into place only after its own check
passed, so a failed export never leaves a folder that looks usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import torch

from nerft.config import is_tagger
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
               probes: int = 4, gguf: str | None = None, gguf_adapter: bool = False,
               trust_remote_code: bool = False, log=lambda message: None) -> ExportResult:
    """Export `run` to `out` (which must not exist yet, or be empty).

    `gguf`: also a GGUF of that type, of the merged model, or with `gguf_adapter` of the base
    model with the LoRA in a GGUF of its own."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if gguf is not None:
        from nerft.export.gguf import check_type

        check_type(gguf)
    if gguf_adapter and (gguf is None or merge):
        raise ExportError("--gguf-adapter goes with --gguf TYPE (the base model's type) and "
                          "without --merge: it keeps the adapter apart from the base model")
    src = read_run(run, trust_remote_code=trust_remote_code)
    if gguf is not None and is_tagger(src.head):
        raise ExportError(f"--gguf: {run} has a tagging head (method.head tagger), which "
                          "llama.cpp cannot run (it only generates); export without --gguf "
                          "(the adapter, or --merge for transformers)")
    if gguf_adapter and not src.is_adapter:
        raise ExportError(f"--gguf-adapter: {src.weights} holds a whole model (a full or freeze "
                          "run), not a LoRA adapter; use --gguf alone")
    check_scores(src)  # a bad score file fails now, not after the merge
    out = Path(out)
    try:
        with ExportDir.create(out) as folder:
            if merge or not src.is_adapter or (gguf is not None and not gguf_adapter):
                result = _export_merged(src, folder, out.name, dtype, probes, gguf, log)
            else:
                result = _export_adapter(src, folder, out.name, probes, gguf, log)
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


def _export_adapter(src: RunSource, out: ExportDir, name: str, probes: int, gguf: str | None,
                    log) -> ExportResult:
    """The adapter files as trained (byte for byte), with the task record and the model card;
    with `gguf`, also the base model and the adapter as GGUF files, checked against the run."""
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
    record = task_record(task, tokenizer, generation, base_model=src.base, head=src.head)
    out.write_task(record)
    gguf_report = None
    if gguf is not None:
        gguf_report = _adapter_gguf(src, out, folder, task, record["stop_tokens"], probes, gguf, log)
    out.write_card(card_text(src, kind="adapter", task=task, parity=None, gguf_parity=gguf_report,
                             name=name))
    log(f"adapter from {src.weights} with {out.task_file.name} and {out.card.name}")
    return ExportResult(out.path, "adapter", gguf_parity=gguf_report)


def _adapter_gguf(src: RunSource, out: ExportDir, base_folder: Path, task: Task,
                  stop_tokens: list[str], probes: int, gguf: str, log) -> ParityReport:
    """base-TYPE.gguf and adapter-f16.gguf, reloaded (the base by transformers, the LoRA as
    llama.cpp applies it) and compared with the run."""
    from nerft.export.gguf import (ADAPTER_TYPE, apply_adapter_gguf, check_adapter_convertible,
                                   convert, convert_adapter, load_gguf, write_ollama_files)

    check_adapter_convertible(out.adapter)  # before any slow step
    model, tokenizer = _load_run_model(src)
    task_texts = _probe_texts(src, probes)
    log(f"reference answers of the run on {len(task_texts)} sentences")
    reference = reference_outputs(model, tokenizer, task, task_texts)
    del model
    log(f"converting the base model to GGUF ({gguf}) and the adapter with llama.cpp's converters")
    base = convert(base_folder, out.base_gguf(gguf), gguf, log)
    adapter = convert_adapter(out.adapter, base_folder, out.adapter_gguf(ADAPTER_TYPE))
    write_ollama_files(out, task, stop_tokens, base, *_answer_budget(src, task_texts), adapter=adapter)
    log(f"reloading {base.name} with transformers (gguf_file=) and applying {adapter.name}")
    base_model, gguf_tok = load_gguf(base)
    _check_tokenizer(tokenizer, gguf_tok, task_texts, task)
    report = check_parity(reference, apply_adapter_gguf(base_model, adapter), gguf_tok, task,
                          task_texts, gguf)
    log(f"GGUF check passed: {report.line()}")
    return report


def _answer_budget(src: RunSource, texts: list[str]) -> tuple[int, str]:
    """(num_predict, what it is) for the Modelfile: nerft's per-sentence answer budget for the
    longest sentence of the run's prepared data, else of the sentences the export checks."""
    from nerft.data.prepared import PreparedData
    from nerft.data.split import SPLITS
    from nerft.infer.stopping import answer_token_budget

    longest, where = "", "the longest sentence of the run's data"
    if src.data_dir is not None:
        data = PreparedData(src.data_dir)
        for split in SPLITS:
            if data.split(split).is_file():
                longest = max(chain([longest], (ex.text for ex in data.rows(split))), key=len)
    if not longest:
        longest, where = max(texts, key=len), "the longest sentence the export checked (no run data at hand)"
    budget = answer_token_budget(longest)
    return budget, f"{budget} tokens for {where} ({len(longest)} characters)"


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
    tagger = is_tagger(src.head)  # its head and tags travel in config.json; it generates nothing
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
        from nerft.export.gguf import convert, load_gguf, write_ollama_files

        del reloaded
        log(f"converting to GGUF ({gguf}) with llama.cpp's convert_hf_to_gguf.py")
        file = convert(out.path, out.gguf(gguf), gguf, log)
        write_ollama_files(out, task, [reloaded_tok.convert_ids_to_tokens(i) for i in stops], file,
                           *_answer_budget(src, texts))
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
