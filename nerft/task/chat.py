"""The task as token ids: the model's own chat template around a sentence (and its answer).

Training and inference both encode through here, so the model is asked exactly what it was
taught. The template is rendered once per (tokenizer, task) with placeholder contents and cut
into its fixed pieces; a conversation is then those pieces with the user's sentence and the
answer in between. The pieces are tokenised with their control tokens (`<|im_start|>` ...);
the sentence and the answer never are: a sentence containing `<|im_end|>\n<|im_start|>assistant`
is plain text to the model and cannot close its turn or write an answer for it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from nerft.task.prompt import Task, user_message
from nerft.errors import NerftError

# Private-use characters: no template changes them and no sentence is expected to hold them.
_USER, _ANSWER = "\ue020", "\ue021"


class ChatTemplateError(NerftError, ValueError):
    """A chat template nerft cannot use; the message says why."""


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn (`<|im_end|>` for ChatML models)."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        return im_end
    if tokenizer.eos_token_id is None:
        raise ChatTemplateError("the tokenizer has neither <|im_end|> nor an eos token to end an answer")
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer, generation_config=None) -> set[int]:
    """Every token that ends an answer: end of turn, the tokenizer's eos, the model's eos ids
    and `<|endoftext|>` (a model whose generation config forgets it would otherwise run on)."""
    found = {end_of_turn_id(tokenizer)}
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    eos = getattr(generation_config, "eos_token_id", None)
    found.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(end_of_text, int) and end_of_text != tokenizer.unk_token_id:
        found.add(end_of_text)
    return found


@dataclass(frozen=True)
class ChatPieces:
    """The template's fixed text around a conversation, and its token ids.

    prompt  = before + user message + after
    full    = before + user message + after + answer + closing
    """

    before: str
    after: str
    closing: str
    before_ids: tuple[int, ...]
    after_ids: tuple[int, ...]
    closing_ids: tuple[int, ...]


_PIECES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def chat_pieces(tokenizer, task: Task) -> ChatPieces:
    """The template cut around the sentence and the answer (rendered once, cached)."""
    per_task = _PIECES.setdefault(tokenizer, {})
    found = per_task.get(task)
    if found is None:
        found = per_task[task] = _cut_template(tokenizer, task)
    return found


def _with_placeholders(task: Task, answer: bool) -> list[dict]:
    """The task's messages with the whole user message (and answer) as placeholders."""
    messages = task.messages("", "" if answer else None)
    user = next(m for m in messages if m["role"] == "user")
    user["content"] = _USER
    if answer:
        messages[-1]["content"] = _ANSWER
    return messages


def _cut_template(tokenizer, task: Task) -> ChatPieces:
    prompt = tokenizer.apply_chat_template(_with_placeholders(task, False), tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(_with_placeholders(task, True), tokenize=False)
    if prompt.count(_USER) != 1 or full.count(_USER) != 1 or full.count(_ANSWER) != 1:
        raise ChatTemplateError("the chat template does not write the user message and the answer "
                                "once each, verbatim; nerft cannot place the sentence in it")
    if not full.startswith(prompt):
        raise ChatTemplateError(
            "the chat template renders the prompt differently with and without the answer; "
            "nerft needs a template whose generation prompt is a prefix of the full conversation")
    before, after = prompt.split(_USER)
    closing = full[len(prompt):].split(_ANSWER)[1]
    if full[len(prompt):].split(_ANSWER)[0]:
        raise ChatTemplateError("the chat template writes text between the generation prompt and "
                                "the answer; nerft cannot supervise that answer")
    ids = tokenizer([before, after, closing], add_special_tokens=False)["input_ids"]
    return ChatPieces(before, after, closing, *(tuple(x) for x in ids))


def _plain_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of user-supplied text, with special-token strings read as plain text."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def render_prompt(tokenizer, task: Task, text: str) -> str:
    """The prompt as a string, up to and including the assistant header (for display and
    for other runtimes; nerft itself encodes with `encode_prompts`)."""
    pieces = chat_pieces(tokenizer, task)
    return pieces.before + user_message(text) + pieces.after


def encode_prompts(tokenizer, task: Task, texts: list[str]) -> list[list[int]]:
    """Prompt token ids for each sentence, ready for generation."""
    pieces = chat_pieces(tokenizer, task)
    users = _plain_ids(tokenizer, [user_message(t) for t in texts])
    return [[*pieces.before_ids, *u, *pieces.after_ids] for u in users]


def encode_conversations(tokenizer, task: Task, texts: list[str],
                         answers: list[str]) -> list[tuple[list[int], int]]:
    """(ids, answer_start) per conversation; ids end with the end-of-turn token that closes
    the answer (what follows it in the template is never supervised, so it is left out)."""
    pieces = chat_pieces(tokenizer, task)
    eot = end_of_turn_id(tokenizer)
    if eot not in pieces.closing_ids:
        raise ChatTemplateError("the chat template does not close the answer with the "
                                "end-of-turn token")
    closing = list(pieces.closing_ids[:pieces.closing_ids.index(eot) + 1])
    users = _plain_ids(tokenizer, [user_message(t) for t in texts])
    bodies = _plain_ids(tokenizer, answers)
    out = []
    for user, body in zip(users, bodies):
        prompt = [*pieces.before_ids, *user, *pieces.after_ids]
        out.append((prompt + body + closing, len(prompt)))
    return out


def shared_prefix_ids(tokenizer, task: Task) -> list[int]:
    """The prompt tokens every sentence shares: the template up to the user's message
    (the system turn and the user turn's header)."""
    return list(chat_pieces(tokenizer, task).before_ids)
