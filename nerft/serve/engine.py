"""What the service decodes with: the model a reference names, and the one function the batching
worker calls (sentences in, answers and spans out)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from nerft.data.example import Span
from nerft.export.task_file import TASK_FILE, read_task
from nerft.export_dir import ExportDir
from nerft.infer.generate import AnswerGenerator
from nerft.infer.predict import InferenceError, load_for_inference
from nerft.prompt import Task
from nerft.chat import encode_prompts


@dataclass
class Decoded:
    text: str
    answer: str
    entities: list[Span]
    prompt_tokens: int
    answer_tokens: int


def load_served(ref: str, labels: tuple[str, ...] | None = None):
    """(model, tokenizer, task, name) for a run directory, a `nerft export` folder or a model source.

    An export's `task.json` gives the labels; its system prompt must be the one this nerft
    builds from them, or the service would prompt the model differently from its training.
    """
    path = Path(ref).expanduser()
    name = path.resolve().name if path.exists() else ref
    if not (path.is_dir() and (path / TASK_FILE).is_file()):
        model, tokenizer, task = load_for_inference(ref, labels)
        return model, tokenizer, task, name
    try:
        record = read_task(path)
    except ValueError as e:
        raise InferenceError(str(e)) from e
    task = Task(tuple(labels or record["labels"]))
    if not labels and record.get("system_prompt") != task.system_prompt:
        raise InferenceError(f"{path / TASK_FILE}: field system_prompt differs from the one this "
                             "nerft builds for these labels; serve it with the nerft that exported it")
    if (ExportDir(path).adapter).is_dir():
        from peft import PeftModel

        from nerft.model import load_model_and_tokenizer

        base, tokenizer = load_model_and_tokenizer(record.get("base_model") or "")
        with warnings.catch_warnings():  # peft calls an API this transformers deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                    category=FutureWarning)
            model = PeftModel.from_pretrained(base, ExportDir(path).adapter).merge_and_unload().eval()
        return model, tokenizer, task, name
    model, tokenizer, _ = load_for_inference(str(path), task.labels)
    return model, tokenizer, task, name


def sentence_decoder(model, tokenizer, task: Task, *, max_batch: int):
    """decode(texts) -> [Decoded]: greedy constrained answers, as `nerft predict` gives them.

    The generator is safe to share (callers take turns on its lock); the batching worker is
    what lets concurrent requests share one decode call.
    """
    generator = AnswerGenerator(model, tokenizer, task)

    def decode(texts: list[str]) -> list[Decoded]:
        rows = generator.generate_ids(texts, batch_size=max_batch, constrained=True)
        prompts = encode_prompts(tokenizer, task, texts)
        out = []
        for text, row, prompt in zip(texts, rows, prompts):
            answer = tokenizer.decode(row, skip_special_tokens=True)
            out.append(Decoded(text, answer, task.parse_answer(answer, text).spans,
                               len(prompt), len(row) + 1))  # + the stop token
        return out

    return decode
