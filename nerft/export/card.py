"""The model card (README.md) of an export: what the model is, what it was trained on, how good it
is, and how to run it with the exact task. Every number comes from the run's own files."""

from __future__ import annotations

import json
from pathlib import Path

from nerft.config import is_tagger
from nerft.export import ExportError
from nerft.export.gguf import ADAPTER_TYPE
from nerft.export.run_source import RunSource
from nerft.export_dir import GRAMMAR_FILE, MODELFILE, TASK_FILE, ExportDir
from nerft.task.prompt import Task


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_scores(src: RunSource) -> None:
    """The card quotes the latest `nerft eval` test scores; a recorded F1 whose precision or
    recall is missing is refused before any export work, with what to do."""
    test = src.scores().get("test")
    if not test or not _is_number(test.get("f1")):
        return
    for key in ("precision", "recall"):
        if not _is_number(test.get(key)):
            raise ExportError(f"{src.run}: the test scores of its latest `nerft eval` have "
                              f"{key} {test.get(key)!r}, not a number; run `nerft eval "
                              f"{src.run} --data DIR` again before exporting")


def _score_lines(scores: dict) -> list[str]:
    lines = []
    val = scores.get("validation")
    if val:
        f1 = val.get("eval_f1", val.get("f1"))
        lines.append(f"- validation entity F1 (strict micro, training-time subset, step "
                     f"{val.get('step', '?')}): **{f1:.4f}**" if _is_number(f1)
                     else "- validation: scores.json without an F1")
    test = scores.get("test")
    if test and _is_number(test.get("f1")):
        lines.append(f"- test entity F1 (strict micro, `nerft eval` on {test.get('sentences')} "
                     f"sentences): **{test['f1']:.4f}** (P {test['precision']:.4f}, R {test['recall']:.4f})")
    return lines or ["- no scores recorded in the run (run `nerft eval RUN --data DIR` before exporting)"]


def card_text(src: RunSource, *, kind: str, task: Task, parity, gguf_parity=None,
              name: str) -> str:
    """The text of the export's model card; `name` is the folder name the export will have."""
    info = src.info
    method = src.method or {"kind": "lora"}
    how = "token-classification" if is_tagger(src.head) else "token-classification-by-generation"
    tags = ["ner", how, "nerft", "lora" if kind == "adapter" else "merged"]
    front = ["---", f"base_model: {json.dumps(src.base)}",
             f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
             "language: [zh]", f"tags: [{', '.join(tags)}]", "---", ""]
    data_hashes = info.get("data_sha256") or {}
    body = [
        f"# NER model exported from `{src.run.name}` ({kind})", "",
        f"Fine-tuned by nerft from `{src.base}` to extract {', '.join(task.labels)} entities from "
        "Chinese sentences. The exact task (system prompt, user message, answer format, stop "
        f"tokens, chat template) is in `{TASK_FILE}`; prompt the model with it and nothing else.", "",
        "## Scores", *_score_lines(src.scores()), "",
        "## Training", f"- method: `{json.dumps(method, ensure_ascii=False)}`",
        f"- weights exported: `{src.weights.name}/` of the run",
        f"- data folder: `{info.get('data_dir') or src.data_dir}`",
        *[f"- `{file}` sha256 `{digest}`" for file, digest in sorted(data_hashes.items())],
    ]
    if "seed" in info or info.get("git_commit"):
        body.append(f"- seed {info.get('seed', '?')}, git commit `{info.get('git_commit')}`")
    if info.get("versions"):
        body.append(f"- versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items() if v)}")
    body.append("")
    if parity is not None:
        body += ["## Export check",
                 f"The merged weights were reloaded with `{'AutoModelForTokenClassification' if src.head == 'tagger' else 'AutoModelForCausalLM'}.from_pretrained` and "
                 f"compared with the run's base model + adapter on {parity.sentences} validation "
                 f"sentences: {parity.line()}.", ""]
    if gguf_parity is not None:
        body += _gguf_section(ExportDir(Path(name)), kind, gguf_parity)
    answer_note = (
        f"Answer format ({task.answer_format}): one entity per line, "
        f"`{task.format_record()['line']}`, in sentence order, or the phrase "
        f"`{task.pieces.no_entity}`. nerft decodes greedily with a constraint that keeps every entity "
        "text a substring of the sentence and every label in the label set.")
    if is_tagger(src.head):
        attention = (" The backbone's causal mask is lifted: every token sees the whole sentence."
                     if src.head == "tagger-bidirectional" else "")
        answer_note = (f"A tagging head (method.head {src.head}): the sentence's tokens alone go in "
                       "(no prompt), one BIO tag per token comes out (the tags are in "
                       "`config.json`'s `id2label`), and nerft reads the entities from the tags "
                       f"(`nerft.task.bio`); nothing is generated.{attention}")
    body += ["## Use", "```bash",
             f"nerft serve {name}      # HTTP API, web page, OpenAI-compatible endpoint",
             f"nerft predict {name} \"张三在北京工作。\"" if kind == "merged" else
             "# the adapter applies to the base model named above", "```", "",
             answer_note, ""]
    return "\n".join(front + body)


def _gguf_section(export: ExportDir, kind: str, report) -> list[str]:
    """How the GGUF files were checked, and how to run them with and without the grammar."""
    if kind == "adapter":
        model = export.base_gguf(report.dtype).name
        adapter = export.adapter_gguf(ADAPTER_TYPE).name
        made = (f"`{model}` (the base model) and `{adapter}` (the LoRA adapter), made by llama.cpp's "
                "`convert_hf_to_gguf.py` and `convert_lora_to_gguf.py`, were reloaded: the base by "
                "transformers (`gguf_file=`), the adapter applied as llama.cpp applies it (alpha / r "
                "from the GGUF)")
        lora = f" --lora {adapter}"
    else:
        model, lora = export.gguf(report.dtype).name, ""
        made = f"`{model}`, made by llama.cpp's `convert_hf_to_gguf.py`, was reloaded with transformers (`gguf_file=`)"
    if report.dtype not in ("f16", "q8_0"):
        made += f" (quantized to {report.dtype} by llama.cpp's `llama-quantize`)"
    heading = ["## Export check"] if kind == "adapter" else []
    return [*heading, f"{made}: same token ids for every checked prompt; {report.line()}.", "",
            "## llama.cpp / Ollama",
            "Constrained (the answer keeps the trained format and known labels): llama.cpp with the grammar,",
            "given nerft's prompt (system turn, `文本:SENTENCE` user turn, assistant header) in prompt.txt,",
            "ended by one more newline (llama-completion drops a prompt file's last one):",
            "```bash",
            f"llama-completion -m {model}{lora} -no-cnv --no-display-prompt --temp 0 "
            f"--grammar-file {GRAMMAR_FILE} -n BUDGET -f prompt.txt",
            "```",
            "BUDGET: nerft's answer budget, 48 + 6 tokens per character of the sentence.",
            f"Unconstrained: Ollama applies no GBNF grammar (its `format` takes a JSON schema only), so "
            f"its answers can break the format or name text that is not in the sentence. `{MODELFILE}` "
            "carries the chat template, the system prompt, the stop tokens and nerft's answer budget "
            "(`num_predict`); the user message is the bare sentence:",
            "```bash", f"ollama create nerft-ner -f {MODELFILE}   # then: ollama run nerft-ner '张三在北京工作。'",
            "```",
            f"`nerft.export.grammar.answer_grammar(task, sentence)` writes the per-sentence grammar, which "
            "also keeps entity texts inside the sentence, as nerft's own decoding does.", ""]
