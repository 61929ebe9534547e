"""Batched greedy generation of answers: length buckets, a shared system-prompt cache, a
per-row token budget, and (by default) constrained decoding.

The loop is ours rather than `model.generate`: it runs the decoder, then the output head on the
last position only; with constraints on, the head is applied to the few hundred tokens the
rows may write instead of all 151,936 (the head is most of a small model's step); rows that
finish leave the batch and queued rows take their place (continuous batching); each step also
feeds guessed next tokens (prompt lookup) and keeps those the model agrees with, so an answer
that repeats its format and copies its sentence takes a fraction of the steps. The batch
itself, its cache layout and the guessing live in `nerft.infer.running_batch`.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from typing import Callable

import torch
from transformers import DynamicCache

from nerft.chat import encode_prompts, end_of_turn_id, shared_prefix_ids, stop_token_ids
from nerft.infer.running_batch import RunningBatch, plain_cache
from nerft.infer.stopping import answer_token_budget
from nerft.prompt import Task


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def _grouped_kv_heads(device):
    """On CPU, let SDPA share each key/value head among its query heads (`enable_gqa`).

    With a padding mask and more than one query token, transformers otherwise copies the whole
    key/value cache once per query head group (7x for Qwen2.5-0.5B) in every layer: 34 ms
    against 2-5 ms for a [32 rows, 300 columns] cache on 2 cores, with identical outputs. On
    CUDA the masked grouped kernel would fall back to the slow path, so it stays off there.
    transformers reads this switch at each call, so it is set only while nerft decodes.
    """
    if device.type != "cpu" or os.environ.get(_FORCE_GQA):
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


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

    The prefix keys/values are computed once (batch 1) and shared by every row. They depend
    on the weights: build a new generator after the model changes (`generate_answers` builds
    one per call).
    """

    def __init__(self, model, tokenizer, task: Task, *, prefix_cache: bool = True,
                 guess: bool = True):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.guess = guess  # feed guessed tokens each step (see `RunningBatch.step`)
        self.last_stats: dict[str, int] = {}
        self.lm, self.decoder, self.head = _decoder_parts(model)
        # A plain linear head can be sliced to the allowed tokens (a LoRA-wrapped one cannot).
        self.sliceable_head = type(self.head) is torch.nn.Linear
        self.eot = end_of_turn_id(tokenizer)
        self.stop_ids = stop_token_ids(tokenizer, getattr(self.lm, "generation_config", None))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot
        self.prefix_ids = shared_prefix_ids(tokenizer, task) if prefix_cache else []
        self._prefix_kv = None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def generate(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """Answers for `texts`, in input order; `progress(n)` is called as n more rows finish."""
        ids = self.generate_ids(texts, batch_size=batch_size, constrained=constrained,
                                progress=progress)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]

    @torch.no_grad()
    def generate_ids(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                     progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """Answer token ids (without the stop token) for `texts`, in input order.

        Continuous batching: up to `batch_size` rows decode together, and when a quarter of
        the slots (at least one) have finished, the next rows of the queue are encoded and
        join the running batch, so short answers do not leave the batch half empty while the
        longest answer of a fixed batch finishes.
        """
        if not texts:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            with _grouped_kv_heads(self.device):
                return self._decode_all(texts, batch_size, constrained, progress)
        finally:
            if was_training:
                self.model.train()

    def _decode_all(self, texts, batch_size, constrained, progress) -> list[list[int]]:
        prompts = encode_prompts(self.tokenizer, self.task, texts)
        # Shortest prompts first: rows admitted together pad little.
        queue = deque(sorted(range(len(texts)), key=lambda i: len(prompts[i])))
        answers: list[list[int]] = [[] for _ in texts]
        # A template that renders the shared prefix differently per sentence: no prefix cache.
        use_prefix = all(ids[:len(self.prefix_ids)] == self.prefix_ids for ids in prompts)
        batch = RunningBatch(self, use_prefix)
        refill_at = max(1, batch_size // 4)
        while queue or batch.rows:
            free = batch_size - len(batch.rows)
            if queue and (not batch.rows or (batch.mergeable
                                             and free >= min(refill_at, len(queue)))):
                admitted = [queue.popleft() for _ in range(min(free, len(queue)))]
                joined = batch.admit(admitted, [texts[i] for i in admitted],
                                     [prompts[i] for i in admitted],
                                     [answer_token_budget(texts[i]) for i in admitted], constrained)
                queue.extendleft(reversed(admitted[joined:]))
            done = batch.step()
            for i in done:
                answers[i] = [t for t in batch.pop_output(i) if t not in self.stop_ids]
            if done and progress is not None:
                progress(len(done))
        # Decoder steps after the prompts, and guessed tokens fed and kept: for benchmarks.
        self.last_stats = {"steps": batch.steps, "guessed": batch.guessed, "kept": batch.kept}
        return answers

    def prefix_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Keys/values of the shared prefix (batch 1), computed on first use; None when the
        model's cache is not a plain one (sliding windows etc.): prompts are then encoded whole."""
        if not self.prefix_ids:
            return None
        if self._prefix_kv is None:
            cache = DynamicCache(config=self.lm.config)
            ids = torch.tensor([self.prefix_ids], device=self.device)
            self.decoder(input_ids=ids, cache=cache, use_cache=True)
            if not plain_cache(cache):
                self.prefix_ids = []
                return None
            self._prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prefix_kv

    def choose(self, hidden: torch.Tensor, allowed: list[torch.Tensor] | None) -> torch.Tensor:
        """The greedy next token after each hidden state, among its `allowed` ids (sorted)
        when given."""
        if allowed is not None and self.sliceable_head:
            # Only the tokens some row may write are scored: a slice of the head's weight.
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
        if allowed is not None:
            keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            for slot, a in enumerate(allowed):
                keep[slot, a.to(logits.device)] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits.argmax(-1).cpu()


def generate_answers(model, tokenizer, task: Task, texts: list[str], *, batch_size: int = 16,
                     constrained: bool = True, prefix_cache: bool = True, guess: bool = True,
                     progress=None) -> list[str]:
    """Greedy answers for `texts`, in input order.

    Up to `batch_size` rows decode at once (continuous batching, rows queued by prompt length),
    and each row stops at the end-of-turn token or its `answer_token_budget`. `constrained`
    keeps answers in the format and entity texts inside their sentence (`nerft.infer.constrain`).
    """
    generator = AnswerGenerator(model, tokenizer, task, prefix_cache=prefix_cache, guess=guess)
    return generator.generate(texts, batch_size=batch_size, constrained=constrained,
                              progress=progress)
