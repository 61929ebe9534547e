"""Tokenise conversations with the model's own chat template and mask everything but the answer.

Every row is rendered by `tokenizer.apply_chat_template` (never a hand-written template), then
tokenised once with offsets so that the prompt/answer boundary is found by character position.
The supervised part is the answer plus the template's end-of-turn token and nothing after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerft.data.example import Example
from nerft.prompt import Task, format_answer

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


class EncodingError(Exception):
    pass


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn (`<|im_end|>` for ChatML models)."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end is not None:
        return im_end
    if tokenizer.eos_token_id is None:
        raise EncodingError("the tokenizer has neither <|im_end|> nor an eos token to end an answer")
    return tokenizer.eos_token_id


def render_prompt(tokenizer, task: Task, text: str) -> str:
    """The prompt string up to and including the assistant header, ready for generation."""
    return tokenizer.apply_chat_template(task.messages(text), tokenize=False,
                                         add_generation_prompt=True)


def encode_examples(tokenizer, task: Task, examples: list[Example], max_length: int,
                    batch_size: int = 512) -> tuple[list[Encoded], EncodeReport]:
    """Encode examples for training; rows longer than `max_length` are dropped and counted,
    never truncated, because truncation would cut the answer the model has to learn."""
    eot = end_of_turn_id(tokenizer)
    report = EncodeReport()
    out: list[Encoded] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        prompts = [render_prompt(tokenizer, task, ex.text) for ex in chunk]
        fulls = [tokenizer.apply_chat_template(task.messages(ex.text, format_answer(ex.entities)),
                                               tokenize=False) for ex in chunk]
        batch = tokenizer(fulls, add_special_tokens=False, return_offsets_mapping=True)
        for ex, prompt, full, ids, offsets in zip(chunk, prompts, fulls, batch["input_ids"],
                                                  batch["offset_mapping"]):
            enc = _mask_prompt(ex, prompt, full, ids, offsets, eot)
            if len(enc) > max_length:
                report.too_long.append(ex.id)
                continue
            out.append(enc)
    report.kept = len(out)
    return out, report


def _mask_prompt(ex: Example, prompt: str, full: str, ids: list[int], offsets, eot: int) -> Encoded:
    if not full.startswith(prompt):
        raise EncodingError(
            "the chat template renders the prompt differently with and without the answer; "
            "nerft needs a template whose generation prompt is a prefix of the full conversation")
    boundary = len(prompt)
    answer_start = next((t for t, (s, _) in enumerate(offsets) if s >= boundary), len(ids))
    if answer_start < len(ids) and answer_start > 0 and offsets[answer_start - 1][1] > boundary:
        raise EncodingError(f"{ex.id}: a token straddles the prompt/answer boundary")
    end = next((t for t in range(answer_start, len(ids)) if ids[t] == eot), None)
    if end is None:
        raise EncodingError(f"{ex.id}: the rendered answer does not end with the end-of-turn token")
    ids = ids[:end + 1]
    labels = [IGNORE] * answer_start + ids[answer_start:]
    return Encoded(ex.id, ids, labels, answer_start)
