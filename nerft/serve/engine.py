"""What the service decodes with: the model a reference names, and the one function the batching
worker calls (sentences in, answers and spans out)."""

from __future__ import annotations

from pathlib import Path

from nerft.infer.generate import AnswerGenerator, DecodeOptions
from nerft.infer.predict import Decoded, predict_rows
from nerft.models.loader import load_model
from nerft.task.prompt import Task

__all__ = ["Decoded", "load_served", "sentence_decoder"]


def load_served(ref: str, labels: tuple[str, ...] | None = None):
    """(model, tokenizer, task, name) for a run directory, a `nerft export` folder or a model source.

    An export's `task.json` gives the labels; its system prompt must be the one this nerft
    builds from them, or the service would prompt the model differently from its training
    (`nerft.models.loader` checks it).
    """
    path = Path(ref).expanduser()
    name = path.resolve().name if path.exists() else ref
    model, tokenizer, task = load_model(ref, labels=labels)
    return model, tokenizer, task, name


def sentence_decoder(model, tokenizer, task: Task, *, max_batch: int):
    """decode(texts) -> [Decoded]: greedy constrained answers, as `nerft predict` gives them
    (the same `predict_rows`).

    The generator is safe to share (callers take turns on its lock); the batching worker is
    what lets concurrent requests share one decode call.
    """
    generator = AnswerGenerator(model, tokenizer, task)
    options = DecodeOptions(batch_size=max_batch, constrained=True)

    def decode(texts: list[str]) -> list[Decoded]:
        return predict_rows(generator, [(str(i), t) for i, t in enumerate(texts)], options)

    return decode
