"""The decoding engine: batched greedy answers with a shared system-prompt cache, per-row token
budgets, continuous batching, guessed tokens and (by default) constrained decoding.

The loop is ours rather than `model.generate`: it runs the decoder, then the output head on the
last position only; with constraints on, the head is applied to the few hundred tokens the
rows may write instead of all 151,936 (the head is most of a small model's step); rows that
finish leave the batch and queued rows take their place (continuous batching); each step also
feeds guessed next tokens (prompt lookup) and keeps those the model agrees with, so an answer
that repeats its format and copies its sentence takes a fraction of the steps. The batch
itself, its cache layout and the guessing live in `nerft.infer.running_batch`.

`AnswerGenerator` is long-lived (one per model: weights, tokenizer, decoder parts, prefix
cache) and keeps no per-call state: options come with each call, statistics go back with its
result, and a lock makes concurrent callers (threads of a service) take turns.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from nerft.task.chat import encode_prompts, shared_prefix_ids
from nerft.infer.decoder import Decoder
from nerft.infer.running_batch import Prefix, RunningBatch, plain_cache
from nerft.infer.stopping import answer_token_budget
from nerft.task.prompt import Task


@dataclass(frozen=True)
class DecodeOptions:
    """How one call decodes. Answers do not depend on `batch_size`, `guess` or `prefix_cache`
    (they only change speed); `constrained` keeps answers in the format and entity texts
    inside their sentence (`nerft.infer.constrain`)."""

    batch_size: int = 16
    constrained: bool = True
    guess: bool = True  # feed guessed tokens each step (see `RunningBatch.step`)
    prefix_cache: bool = True  # encode the shared system turn once


@dataclass
class Answers:
    """The raw answers of one call, in input order: ids (stop token removed), texts, prompt
    lengths, and counters for benchmarks. `nerft.infer.predict.predict_rows` parses them."""

    ids: list[list[int]]
    answers: list[str]
    stats: dict[str, int] = field(default_factory=dict)  # decoder steps, guessed and kept tokens
    prompt_tokens: list[int] = field(default_factory=list)
    # Set by a decoder that finds the spans itself (the tagging head, `nerft.infer.tagger`):
    # `predict_rows` then takes them as they are instead of parsing the answer texts.
    spans: list[list] | None = None


class AnswerGenerator:
    """Greedy answers for one (model, tokenizer, task), the system prompt encoded once.

    The prefix keys/values are computed on first use (batch 1) and shared by every row. They
    depend on the weights: build a new generator after the model changes (training
    validation builds one per evaluation).
    """

    def __init__(self, model, tokenizer, task: Task, *, prefix_cache: bool = True,
                 guess: bool = True):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.defaults = DecodeOptions(prefix_cache=prefix_cache, guess=guess)
        self.decoder = Decoder(model, tokenizer, task)
        self.prefix_ids = shared_prefix_ids(tokenizer, task)
        self._prefix_kv = None
        self._prefix_usable = True  # False once the model's cache turns out not to be plain
        self._lock = threading.Lock()

    @property
    def stop_ids(self) -> set[int]:
        return self.decoder.stop_ids

    @property
    def pad(self) -> int:
        return self.decoder.pad

    def options(self, **overrides) -> DecodeOptions:
        """This generator's defaults with some fields changed."""
        values = {**self.defaults.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        return DecodeOptions(**values)

    def generate(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                 progress: Callable[[int], None] | None = None) -> list[str]:
        """Answers for `texts`, in input order; `progress(n)` is called as n more rows finish."""
        return self.decode(texts, self.options(batch_size=batch_size, constrained=constrained),
                           progress).answers

    def generate_ids(self, texts: list[str], *, batch_size: int = 16, constrained: bool = True,
                     progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """Answer token ids (without the stop token) for `texts`, in input order."""
        return self.decode(texts, self.options(batch_size=batch_size, constrained=constrained),
                           progress).ids

    @torch.no_grad()
    def decode(self, texts: list[str], options: DecodeOptions | None = None,
               progress: Callable[[int], None] | None = None) -> Answers:
        """Decode `texts` with `options` (default: this generator's).

        Continuous batching: up to `batch_size` rows decode together, and when a quarter of
        the slots (at least one) have finished, the next rows of the queue are encoded and
        join the running batch, so short answers do not leave the batch half empty while the
        longest answer of a fixed batch finishes.
        """
        options = options or self.defaults
        if not texts:
            return Answers([], [])
        prompts = encode_prompts(self.tokenizer, self.task, texts)
        with self._lock:
            was_training = self.model.training
            self.model.eval()
            try:
                with self.decoder.active():
                    ids, stats = self._decode_all(texts, prompts, options, progress)
            finally:
                if was_training:
                    self.model.train()
        answers = [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        return Answers(ids, answers, stats, [len(p) for p in prompts])

    def _decode_all(self, texts, prompts, options: DecodeOptions, progress):
        # Shortest prompts first: rows admitted together pad little.
        queue = deque(sorted(range(len(texts)), key=lambda i: len(prompts[i])))
        answers: list[list[int]] = [[] for _ in texts]
        batch = RunningBatch(self.decoder, self._prefix() if options.prefix_cache else None,
                             guess=options.guess)
        refill_at = max(1, options.batch_size // 4)
        while queue or batch.rows:
            free = options.batch_size - len(batch.rows)
            if queue and (not batch.rows or (batch.mergeable
                                             and free >= min(refill_at, len(queue)))):
                admitted = [queue.popleft() for _ in range(min(free, len(queue)))]
                joined = batch.admit(admitted, [texts[i] for i in admitted],
                                     [prompts[i] for i in admitted],
                                     [answer_token_budget(texts[i]) for i in admitted],
                                     options.constrained)
                queue.extendleft(reversed(admitted[joined:]))
            done = batch.step()
            for i in done:
                answers[i] = [t for t in batch.pop_output(i) if t not in self.stop_ids]
            if done and progress is not None:
                progress(len(done))
        return answers, {"steps": batch.steps, "guessed": batch.guessed, "kept": batch.kept}

    def _prefix(self) -> Prefix | None:
        """Keys/values of the shared prefix (batch 1), computed on first use; None when the
        model's cache is not a plain one (sliding windows etc.): prompts are then encoded whole."""
        if not self.prefix_ids or not self._prefix_usable:
            return None
        if self._prefix_kv is None:
            cache = DynamicCache(config=self.decoder.lm.config)
            ids = torch.tensor([self.prefix_ids], device=self.decoder.device)
            self.decoder(input_ids=ids, cache=cache, use_cache=True)
            if not plain_cache(cache):
                self._prefix_usable = False
                return None
            self._prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return Prefix(self.prefix_ids, self._prefix_kv)


def generate_answers(model, tokenizer, task: Task, texts: list[str], *, batch_size: int = 16,
                     constrained: bool = True, prefix_cache: bool = True, guess: bool = True,
                     progress=None) -> list[str]:
    """Greedy answers for `texts`, in input order, with a generator built for this call.

    Up to `batch_size` rows decode at once (continuous batching, rows queued by prompt length),
    and each row stops at a stop token or its `answer_token_budget`.
    """
    generator = AnswerGenerator(model, tokenizer, task, prefix_cache=prefix_cache, guess=guess)
    return generator.generate(texts, batch_size=batch_size, constrained=constrained,
                              progress=progress)
