"""Encode training conversations with answer-only labels.

Every row is the model's own chat template around the sentence and the gold answer
(`nerft.task.chat`, shared with inference); the supervised part is the answer plus the template's
end-of-turn token and nothing after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerft.task.chat import encode_conversations
from nerft.data.example import Example
from nerft.task.prompt import Task

IGNORE = -100


@dataclass
class Encoded:
    """One conversation: token ids, labels (-100 on the prompt) and where the answer starts."""

    id: str
    input_ids: list[int]
    labels: list[int]
    answer_start: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, key: str):
        # The Trainer's length-grouped sampler reads `example["input_ids"]`.
        return getattr(self, key)


@dataclass
class EncodeReport:
    kept: int = 0
    too_long: list[str] = field(default_factory=list)  # ids dropped because they exceed max_length


def encode_examples(tokenizer, task: Task, examples: list[Example], max_length: int,
                    batch_size: int = 512) -> tuple[list[Encoded], EncodeReport]:
    """Encode examples for training; rows longer than `max_length` are dropped and counted,
    never truncated, because truncation would cut the answer the model has to learn."""
    report = EncodeReport()
    out: list[Encoded] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        encoded = encode_conversations(tokenizer, task, [ex.text for ex in chunk],
                                       [task.format_answer(ex.entities) for ex in chunk])
        for ex, (ids, answer_start) in zip(chunk, encoded):
            if len(ids) > max_length:
                report.too_long.append(ex.id)
                continue
            out.append(Encoded(ex.id, ids, [IGNORE] * answer_start + ids[answer_start:], answer_start))
    report.kept = len(out)
    return out, report
