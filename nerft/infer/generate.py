"""Batched greedy generation of answers: length buckets, a shared system-prompt cache, a
per-row token budget, and (by default) constrained decoding.

The loop is ours rather than `model.generate`: it runs the decoder, then the output head on the
last position only; with constraints on, the head is applied to the few hundred tokens the
rows may write instead of all 151,936 (the head is most of a small model's step); rows that
finish leave the batch. See `AnswerGenerator` for the cache layout.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from nerft.infer.constrain import AnswerConstraint
from nerft.prompt import Task
from nerft.train.encode import end_of_turn_id, render_prompt


def answer_token_budget(text: str) -> int:
    """Upper bound on answer tokens for a sentence: a JSON line costs ~20 tokens plus the
    entity, and entities cannot outnumber characters, so this grows with the sentence."""
    return min(512, 32 + 2 * len(text))


def shared_prefix_ids(tokenizer, task: Task) -> list[int]:
    """The prompt tokens every sentence shares (system turn and the user turn's header).

    Cut just after a special token: those never merge with their neighbours, so the prefix
    tokenises the same whatever sentence follows.
    """
    a, b = (tokenizer(render_prompt(tokenizer, task, t), add_special_tokens=False)["input_ids"]
            for t in ("甲", "乙"))
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return a[:max((i + 1 for i in range(common) if a[i] in special), default=0)]


def _decoder_parts(model):
    """(causal LM, decoder stack, output head): logits are head(decoder(x)[:, -1])."""
    if hasattr(model, "get_base_model"):  # PEFT: LoRA layers are injected in place
        peft_config = getattr(model, "active_peft_config", None)
        if getattr(peft_config, "is_prompt_learning", False):
            raise ValueError("prompt-learning adapters are not supported for generation")
        model = model.get_base_model()
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        raise ValueError(f"{type(model).__name__} scales its logits after the output head; "
                         "nerft's generation applies the head itself and does not support it")
    return model, model.get_decoder(), model.get_output_embeddings()


class AnswerGenerator:
    """Greedy answers for one (model, tokenizer, task), the system prompt encoded once.

    Cache layout, row by row: [shared prefix | left padding | rest of the prompt | answer].
    The prefix keys/values are computed once (batch 1) and expanded to every batch. The padding
    sits between prefix and suffix; it is masked out and the position ids skip it (suffix
    tokens start at position len(prefix)), so each row attends to exactly the tokens, at
    exactly the positions, that it would alone; `tests/infer/test_generate.py` checks the
    tokens equal one-by-one `model.generate`. The prefix depends on the weights: build a new
    generator after the model changes (`generate_answers` builds one per call).
    """

    def __init__(self, model, tokenizer, task: Task, *, prefix_cache: bool = True):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.lm, self.decoder, self.head = _decoder_parts(model)
        # A plain linear head can be sliced to the allowed tokens (a LoRA-wrapped one cannot).
        self.sliceable_head = type(self.head) is torch.nn.Linear
        self.eot = end_of_turn_id(tokenizer)
        eos = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        self.stop_ids = {self.eot} | set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot
        self.prefix_ids = shared_prefix_ids(tokenizer, task) if prefix_cache else []
        self._prefix_kv = None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def generate(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                 logits_processor_factory=None,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """Answers for `texts`, in input order; `progress(n)` is called after each batch of n."""
        ids = self.generate_ids(texts, batch_size=batch_size, constrained=constrained,
                                logits_processor_factory=logits_processor_factory, progress=progress)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]

    @torch.no_grad()
    def generate_ids(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                     logits_processor_factory=None,
                     progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """Answer token ids (without the stop token) for `texts`, in input order."""
        if not texts:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            prompts = self.tokenizer([render_prompt(self.tokenizer, self.task, t) for t in texts],
                                     add_special_tokens=False)["input_ids"]
            order = sorted(range(len(texts)), key=lambda i: len(prompts[i]))
            answers: list[list[int]] = [[] for _ in texts]
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                outs = self._batch([texts[i] for i in idx], [prompts[i] for i in idx],
                                   constrained, logits_processor_factory)
                for i, ids in zip(idx, outs):
                    answers[i] = ids
                if progress is not None:
                    progress(len(idx))
            return answers
        finally:
            if was_training:
                self.model.train()

    # ------------------------------------------------------------------------------------------
    def _prefix_cache(self, batch: int) -> DynamicCache | None:
        if not self.prefix_ids:
            return None
        if self._prefix_kv is None:
            cache = DynamicCache(config=self.lm.config)
            ids = torch.tensor([self.prefix_ids], device=self.device)
            self.decoder(input_ids=ids, cache=cache, use_cache=True)
            if not all(type(layer) is DynamicLayer for layer in cache.layers):
                self.prefix_ids = []  # sliding windows etc.: recompute the whole prompt instead
                return None
            self._prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in self._prefix_kv], config=self.lm.config)

    def _batch(self, texts, prompts, constrained, factory) -> list[list[int]]:
        device, n = self.device, len(texts)
        cache = self._prefix_cache(n)
        p = len(self.prefix_ids) if cache is not None else 0
        if p and any(ids[:p] != self.prefix_ids for ids in prompts):
            cache, p = None, 0  # a template that renders the prefix differently per sentence
        suffixes = [ids[p:] for ids in prompts]
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, s in enumerate(suffixes):
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, p + width - len(s):] = 1
        positions = (p + mask[:, p:].cumsum(-1) - 1).clamp(min=p)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        if cache is None:
            cache = DynamicCache(config=self.lm.config)

        budgets = [answer_token_budget(t) for t in texts]
        constraint = AnswerConstraint(self.tokenizer, self.task, texts, budgets) if constrained else None
        processors = factory(texts, p + width) if factory is not None else None
        # Custom processors index rows by position in a fixed batch, so the batch then keeps
        # its finished rows (fed padding) instead of shrinking.
        seq = torch.cat([torch.tensor([self.prefix_ids[:p]] * n, device=device, dtype=torch.long)
                         .reshape(n, p), ids], 1) if processors is not None else None

        hidden = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                              cache=cache, use_cache=True).last_hidden_state[:, -1]
        alive = list(range(n))  # batch rows still generating, in cache order
        outs: list[list[int]] = [[] for _ in range(n)]
        next_pos = positions[:, -1] + 1
        while True:
            tokens = self._choose(hidden, alive, constraint, processors, seq)
            for slot, r in enumerate(alive):
                if self._finished(outs[r], budgets[r]):
                    tokens[slot] = self.pad  # only in a fixed batch: finished rows get padding
                    continue
                outs[r].append(int(tokens[slot]))
                if constraint is not None:
                    constraint.rows[r].advance(outs[r][-1])
            running = [s for s, r in enumerate(alive) if not self._finished(outs[r], budgets[r])]
            if not running:
                break
            if processors is not None:
                seq = torch.cat([seq, tokens[:, None].to(device)], 1)
            elif len(running) < len(alive):
                sel = torch.tensor(running, device=device)
                cache.batch_select_indices(sel)
                mask, next_pos, tokens = mask[sel], next_pos[sel], tokens[sel.cpu()]
                alive = [alive[s] for s in running]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], 1)
            hidden = self.decoder(input_ids=tokens[:, None].to(device), attention_mask=mask,
                                  position_ids=next_pos[:, None], cache=cache,
                                  use_cache=True).last_hidden_state[:, -1]
            next_pos = next_pos + 1
        return [[t for t in o if t not in self.stop_ids] for o in outs]

    def _finished(self, out: list[int], budget: int) -> bool:
        return len(out) >= budget or (bool(out) and out[-1] in self.stop_ids)

    def _choose(self, hidden, alive, constraint, processors, seq) -> torch.Tensor:
        """The greedy next token of every alive row."""
        if constraint is not None and processors is None and self.sliceable_head:
            # Only the tokens some row may write are scored: a slice of the head's weight.
            allowed = [constraint.rows[r].allowed() for r in alive]
            union = torch.unique(torch.cat(allowed))
            logits = torch.nn.functional.linear(
                hidden, self.head.weight[union.to(hidden.device)],
                None if self.head.bias is None else self.head.bias[union.to(hidden.device)])
            keep = torch.zeros(logits.shape, dtype=torch.bool)
            for slot, a in enumerate(allowed):
                keep[slot, torch.searchsorted(union, a)] = True
            logits = logits.masked_fill(~keep.to(logits.device), float("-inf"))
            return union[logits.argmax(-1).cpu()]
        logits = self.head(hidden).float()
        if constraint is not None:
            keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            for slot, r in enumerate(alive):
                keep[slot, constraint.rows[r].allowed().to(logits.device)] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        if processors is not None:
            logits = processors(seq, logits)
        return logits.argmax(-1).cpu()


def generate_answers(model, tokenizer, task: Task, texts: list[str], *, batch_size: int = 16,
                     logits_processor_factory=None, constrained: bool = True,
                     prefix_cache: bool = True, progress=None) -> list[str]:
    """Greedy answers for `texts`, in input order.

    Rows are sorted by prompt length so a batch pads little, and each row stops at the
    end-of-turn token or its `answer_token_budget`. `constrained` keeps answers in the
    format and entity texts inside their sentence (`nerft.infer.constrain`);
    `logits_processor_factory(batch_texts, prompt_len)` may add processors of its own.
    """
    generator = AnswerGenerator(model, tokenizer, task, prefix_cache=prefix_cache)
    return generator.generate(texts, batch_size=batch_size, constrained=constrained,
                              logits_processor_factory=logits_processor_factory, progress=progress)
