"""Sentences in, entity spans out: the one decode -> spans path (`predict_rows`) that predict,
eval, training validation, serve, compare and select share, the one place that picks the
decoder for a model (`decoder_for`: generation, or the tagging head), and the sentence reader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from nerft.data.example import Span
from nerft.infer.generate import AnswerGenerator, DecodeOptions
from nerft.infer.tagger import TokenTagger, is_tagger
from nerft.models.loader import DEFAULT_LABELS, InferenceError, LoadedModel, load_model
from nerft.task.prompt import ParsedAnswer, Task

__all__ = ["DEFAULT_LABELS", "Decoded", "InferenceError", "decoder_for", "predict",
           "predict_rows", "read_sentences"]


@dataclass
class Decoded:
    """One sentence's answer, as the model wrote it and as the task parses it."""

    id: str
    text: str
    answer: str
    parsed: ParsedAnswer = field(repr=False)  # spans and parse issues, for scoring
    ids: list[int] = field(default_factory=list, repr=False)  # answer tokens, stop token removed
    prompt_tokens: int = 0

    @property
    def entities(self) -> list[Span]:
        return self.parsed.spans

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) + 1  # the stop token is generated too

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "entities": [e.to_dict() for e in self.entities],
                "answer": self.answer}


# --- sentences in, spans out --------------------------------------------------------------

def read_sentences(path: Path) -> Iterator[tuple[str, str]]:
    """(id, text) from a .jsonl file (a "text" field per row) or a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: no such file")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8").removeprefix("\ufeff").splitlines()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InferenceError(f"{path}:{line}: not UTF-8 text (byte {e.start}); convert the file "
                             "to UTF-8 first") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            yield f"{path.stem}:{lineno}", line
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InferenceError(f"{path}:{lineno}: not JSON ({e.msg}, column {e.colno})") from e
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InferenceError(f"{path}:{lineno}: expected an object with a string \"text\" field")
        yield str(row.get("id", f"{path.stem}:{lineno}")), row["text"]


def decoder_for(model, tokenizer, task: Task) -> AnswerGenerator | TokenTagger:
    """The decoder for a loaded model: its tagging head when it has one (method.head tagger),
    else generation. Callers pass what `load_model` gave: `decoder_for(*load_model(ref))`."""
    if is_tagger(model):
        return TokenTagger(model, tokenizer, task)
    return AnswerGenerator(model, tokenizer, task)


def predict_rows(generator: AnswerGenerator | TokenTagger, rows: list[tuple[str, str]],
                 options: DecodeOptions | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Decoded]:
    """(id, text) rows decoded, then parsed by the task: the one path from sentences to spans
    (predict, eval, training validation, serve, compare and select all come through here).
    A tagger's spans come with its answers and are taken as they are."""
    texts = [t for _, t in rows]
    raw = generator.decode(texts, options, progress)
    task = generator.task
    found = raw.spans if raw.spans is not None else [None] * len(texts)
    return [Decoded(i, t, answer, task.parse_answer(answer, t) if spans is None else ParsedAnswer(list(spans)),
                    ids, prompt)
            for (i, t), answer, ids, prompt, spans in zip(rows, raw.answers, raw.ids,
                                                           raw.prompt_tokens, found)]


def predict(model, tokenizer, task: Task, rows: list[tuple[str, str]], *, batch_size: int = 16,
            constrained: bool = True, progress: Callable[[int], None] | None = None) -> list[Decoded]:
    """Predictions for (id, text) rows, in order, with a decoder built for this call."""
    return predict_rows(decoder_for(model, tokenizer, task), rows,
                        DecodeOptions(batch_size=batch_size, constrained=constrained), progress)
