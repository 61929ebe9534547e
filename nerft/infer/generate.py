"""Batched greedy generation of answers, grouped by length, with a length-derived budget."""

from __future__ import annotations

import torch

from nerft.prompt import Task
from nerft.train.encode import end_of_turn_id, render_prompt


def answer_token_budget(text: str) -> int:
    """Upper bound on answer tokens for a sentence: a JSON line costs ~20 tokens plus the
    entity, and entities cannot outnumber characters, so this grows with the sentence."""
    return min(512, 32 + 2 * len(text))


@torch.no_grad()
def generate_answers(model, tokenizer, task: Task, texts: list[str], *, batch_size: int = 16,
                     logits_processor_factory=None) -> list[str]:
    """Greedy answers for `texts`, in input order.

    Rows are sorted by length so a batch pads little, left-padded so every row's next token
    sits at the same position, and each row stops at the end-of-turn token.
    `logits_processor_factory(batch_texts, prompt_len)` may add constraints per batch.
    """
    was_training = model.training
    model.eval()
    eot = end_of_turn_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch_texts = [texts[i] for i in idx]
            enc = tokenizer([render_prompt(tokenizer, task, t) for t in batch_texts],
                            return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs = {}
            if logits_processor_factory is not None:
                kwargs["logits_processor"] = logits_processor_factory(batch_texts, enc["input_ids"].shape[1])
            out = model.generate(**enc, max_new_tokens=max(answer_token_budget(t) for t in batch_texts),
                                 do_sample=False, eos_token_id=eot, pad_token_id=pad,
                                 temperature=None, top_p=None, top_k=None, **kwargs)
            new = out[:, enc["input_ids"].shape[1]:]
            for row, i in zip(new, idx):
                ids = row.tolist()
                if eot in ids:
                    ids = ids[:ids.index(eot)]
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return answers
