"""Batched greedy generation of answers: length buckets, a shared system-prompt cache, a
per-row token budget, and (by default) constrained decoding.

The loop is ours rather than `model.generate`: it runs the decoder, then the output head on the
last position only; with constraints on, the head is applied to the few hundred tokens the
rows may write instead of all 151,936 (the head is most of a small model's step); rows that
finish leave the batch and queued rows take their place (continuous batching); each step also
feeds guessed next tokens (prompt lookup) and keeps those the model agrees with, so an answer
that repeats its format and copies its sentence takes a fraction of the steps. See
`_RunningBatch` for the cache layout.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from nerft.infer.constrain import AnswerConstraint
from nerft.prompt import Task
from nerft.train.encode import end_of_turn_id, render_prompt


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

    The prefix keys/values are computed once (batch 1) and shared by every row. They depend
    on the weights: build a new generator after the model changes (`generate_answers` builds
    one per call).
    """

    def __init__(self, model, tokenizer, task: Task, *, prefix_cache: bool = True,
                 guess: bool = True):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.guess = guess  # feed guessed tokens each step (see `_RunningBatch.step`)
        self.last_stats: dict[str, int] = {}
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
        prompts = self.tokenizer([render_prompt(self.tokenizer, self.task, t) for t in texts],
                                 add_special_tokens=False)["input_ids"]
        # Shortest prompts first: rows admitted together pad little.
        queue = deque(sorted(range(len(texts)), key=lambda i: len(prompts[i])))
        answers: list[list[int]] = [[] for _ in texts]
        # A template that renders the shared prefix differently per sentence: no prefix cache.
        use_prefix = all(ids[:len(self.prefix_ids)] == self.prefix_ids for ids in prompts)
        batch = _RunningBatch(self, use_prefix)
        refill_at = max(1, batch_size // 4)
        while queue or batch.rows:
            free = batch_size - len(batch.rows)
            if queue and (not batch.rows or (batch.mergeable
                                             and free >= min(refill_at, len(queue)))):
                admitted = [queue.popleft() for _ in range(min(free, len(queue)))]
                joined = batch.admit(admitted, [texts[i] for i in admitted],
                                     [prompts[i] for i in admitted], constrained)
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
            if not all(type(layer) is DynamicLayer for layer in cache.layers):
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


# Guessed tokens per step: a step feeds each row's chosen token plus up to MAX_GUESS guesses,
# about TOKENS_PER_STEP tokens in all. Small steps cost about the same whatever their size (the
# weights are read once either way): on 2 CPU cores with the demo model a step of 32 rows x 2
# tokens took 0.54 s against 0.40 s for 32 x 1, and 6 rows x 9 tokens 0.49 s. On 32 test
# sentences 64 / 96 / 128 tokens per step gave 43.9 / 40.6 / 39.3 s, kept 87% / 79% / 73%
# (BENCHMARKS.md).
TOKENS_PER_STEP = 96
MAX_GUESS = 8


def _lookup(history: list[int], size: int) -> list[int]:
    """The `size` tokens that followed the latest earlier occurrence of the last two tokens of
    `history` (else of its last token); [] when there is none."""
    end = len(history)
    for n in (2, 1):
        if end <= n:
            continue
        tail = history[-n:]
        for start in range(end - n - 1, -1, -1):
            if history[start:start + n] == tail:
                return history[start + n:start + n + size]
    return []


class _RunningBatch:
    """The rows decoding together, and their shared key/value cache.

    Cache columns, row by row: [shared prefix | holes | rest of the prompt | answer so far].
    Holes (left padding, the gap a row admitted later leaves, guessed tokens that were not
    kept) are masked out and skipped by the position ids (the prompt after the prefix starts at
    position len(prefix)), so each row attends to exactly the tokens, at exactly the positions,
    that it would alone; `tests/infer/test_generate.py` checks the tokens equal one-by-one
    `model.generate`.
    """

    def __init__(self, gen: AnswerGenerator, use_prefix: bool):
        self.gen, self.use_prefix = gen, use_prefix
        self.mergeable = True  # False for caches other than plain key/value layers
        self.rows: list[int] = []  # sentence index of each batch row, in cache order
        self.cache: DynamicCache | None = None
        self.mask = self.next_pos = self.hidden = None
        self.constraints: list | None = None
        self.budgets: list[int] = []
        self.prompts: list[list[int]] = []  # each row's prompt ids, where guesses come from
        self.outputs: dict[int, list[int]] = {}
        self.steps = self.guessed = self.kept = 0  # decoder steps, guessed and kept tokens

    def admit(self, rows: list[int], texts: list[str], prompts: list[list[int]],
              constrained: bool) -> int:
        """Encode the prompts of new rows and append them to the batch; returns how many of
        them joined (fewer when the model's cache cannot take rows later, see `mergeable`).

        Rows come sorted by prompt length; they are encoded in groups whose padding stays under
        a quarter of their tokens (one long prompt would otherwise pad every short one to it).
        """
        p = len(self.gen.prefix_ids) if self.use_prefix else 0
        lengths = [len(ids) - p for ids in prompts]  # the part that is encoded (and padded)
        start = 0
        while start < len(rows):
            end, longest = start + 1, lengths[start]
            while end < len(rows):
                longest_then = max(longest, lengths[end])
                if (end + 1 - start) * longest_then > 1.25 * sum(lengths[start:end + 1]):
                    break
                end, longest = end + 1, longest_then
            if self.rows and not self.mergeable:
                return start
            self._admit_group(rows[start:end], texts[start:end], prompts[start:end], constrained)
            start = end
        return start

    def _admit_group(self, rows: list[int], texts: list[str], prompts: list[list[int]],
                     constrained: bool) -> None:
        gen, device, n = self.gen, self.gen.device, len(rows)
        prefix = gen.prefix_cache() if self.use_prefix else None
        p = len(gen.prefix_ids) if prefix is not None else 0
        suffixes = [ids[p:] for ids in prompts]
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), gen.pad, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, s in enumerate(suffixes):
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, p + width - len(s):] = 1
        positions = (p + mask[:, p:].cumsum(-1) - 1).clamp(min=p)
        cache = DynamicCache(config=gen.lm.config) if prefix is None else DynamicCache(
            ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix],
            config=gen.lm.config)
        mask, positions = mask.to(device), positions.to(device)
        hidden = gen.decoder(input_ids=ids.to(device), attention_mask=mask, position_ids=positions,
                             cache=cache, use_cache=True).last_hidden_state[:, -1]
        budgets = [answer_token_budget(t) for t in texts]
        constraints = (AnswerConstraint(gen.tokenizer, gen.task, texts, budgets).rows
                       if constrained else None)
        for i in rows:
            self.outputs[i] = []
        if not self.rows:
            self.mergeable = all(type(layer) is DynamicLayer for layer in cache.layers)
            self.cache, self.mask, self.hidden = cache, mask, hidden
            self.next_pos, self.rows = positions[:, -1] + 1, list(rows)
            self.constraints, self.budgets, self.prompts = constraints, budgets, list(prompts)
            return
        self._merge(cache, mask, p)
        self.hidden = torch.cat([self.hidden, hidden])
        self.next_pos = torch.cat([self.next_pos, positions[:, -1] + 1])
        self.rows += rows
        self.budgets += budgets
        self.prompts += prompts
        if constraints is not None:
            self.constraints += constraints

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, p: int) -> None:
        """Append new rows' cache to the running one, aligning both on their last column.

        Columns after the prefix that are holes in every running row are dropped first, so
        the cache does not keep growing while rows come and go."""
        real = self.mask[:, p:].bool()
        first = int(real.float().argmax(-1).min()) if real.any() else real.shape[1]
        keep = torch.cat([torch.arange(p), torch.arange(p + first, self.mask.shape[1])]).to(mask.device)
        old_len, new_len = len(keep), mask.shape[1]
        width = max(old_len, new_len)

        def widen(t: torch.Tensor, dim: int, have: int, index=None) -> torch.Tensor:
            if index is not None:
                t = t.index_select(dim, index)
            if have == width:
                return t
            shape = list(t.shape)
            shape[dim] = width - have
            gap = t.new_zeros(shape)
            return torch.cat([t.narrow(dim, 0, p), gap, t.narrow(dim, p, have - p)], dim)

        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([widen(old.keys, 2, old_len, keep), widen(new.keys, 2, new_len)])
            old.values = torch.cat([widen(old.values, 2, old_len, keep),
                                    widen(new.values, 2, new_len)])
        self.mask = torch.cat([widen(self.mask, 1, old_len, keep), widen(mask, 1, new_len)])

    def step(self) -> list[int]:
        """Choose every row's next token, then feed it with a guess of the tokens after it;
        returns the rows that finished.

        The guess (prompt lookup): the tokens that followed the latest earlier occurrence of
        the row's last tokens in its own prompt and answer; an answer mostly repeats its format
        and copies its sentence, so guesses are often right. The fed guesses are checked
        against the model's own greedy choice at each position and kept up to the first
        mismatch, so the answer is exactly the one-token-at-a-time answer, in fewer steps.
        Guessed tokens that were not kept stay as masked holes in the cache.
        """
        gen = self.gen
        chosen = gen.choose(self.hidden, None if self.constraints is None
                            else [c.allowed() for c in self.constraints])
        done, running = [], []
        for slot, i in enumerate(self.rows):
            if self._accept(slot, int(chosen[slot])):
                done.append(i)
            else:
                running.append(slot)
        if len(running) < len(self.rows):
            self._keep(running)
            chosen = chosen[torch.tensor(running, dtype=torch.long)]
        if not self.rows:
            return done
        n, device = len(self.rows), self.mask.device
        size = max(0, min(MAX_GUESS, TOKENS_PER_STEP // n - 1)) if gen.guess and self.mergeable else 0
        guesses = [self._guess(slot, size) for slot in range(n)]
        width = 1 + max(len(g) for g, _ in guesses)
        ids = torch.full((n, width), gen.pad, dtype=torch.long)
        ids[:, 0] = chosen
        fed = torch.zeros((n, width), dtype=torch.long)
        fed[:, 0] = 1
        for slot, (guess, _) in enumerate(guesses):
            ids[slot, 1:1 + len(guess)] = torch.tensor(guess, dtype=torch.long)
            fed[slot, 1:1 + len(guess)] = 1
        self.mask = torch.cat([self.mask, fed.to(device)], 1)
        positions = self.next_pos[:, None] + torch.arange(width, device=device)
        hidden = gen.decoder(input_ids=ids.to(device), attention_mask=self.mask,
                             position_ids=positions, cache=self.cache,
                             use_cache=True).last_hidden_state
        kept = [0] * n
        if width > 1:
            # The model's choice after the chosen token and after each guessed token.
            at = [(slot, j) for slot, (guess, _) in enumerate(guesses) for j in range(len(guess))]
            allowed = None if self.constraints is None else [guesses[s][1][j] for s, j in at]
            picks = gen.choose(hidden[[s for s, _ in at], [j for _, j in at]], allowed).tolist()
            pick = dict(zip(at, picks))
            for slot, (guess, _) in enumerate(guesses):
                for j, token in enumerate(guess):
                    if pick[slot, j] != token:
                        break
                    kept[slot] += 1
                    if self._accept(slot, token):
                        break  # a row that finishes on a kept guess leaves at the next step
        self.guessed += sum(len(g) for g, _ in guesses)
        self.kept += sum(kept)
        self.steps += 1
        # Unkept guesses become holes; columns that are holes in every row are cut off.
        columns = torch.arange(width, device=device)
        self.mask[:, -width:] = (columns[None, :] <= torch.tensor(kept, device=device)[:, None]).long()
        unused = width - 1 - max(kept)
        if unused:
            self.mask = self.mask[:, :-unused]
            self.cache.crop(-unused)
        last = torch.tensor(kept, device=device)
        self.hidden = hidden[torch.arange(n, device=device), last]
        self.next_pos = self.next_pos + 1 + last
        return done

    def _accept(self, slot: int, token: int) -> bool:
        """Append a token to a row's answer; True when the row has finished."""
        out = self.outputs[self.rows[slot]]
        if out and (len(out) >= self.budgets[slot] or out[-1] in self.gen.stop_ids):
            return True  # finished on a kept guess: the chosen token is discarded
        out.append(token)
        if self.constraints is not None:
            self.constraints[slot].advance(token)
        return len(out) >= self.budgets[slot] or token in self.gen.stop_ids

    def _guess(self, slot: int, size: int) -> tuple[list[int], list]:
        """Up to `size` guessed next tokens for a row, cut where the constraint or the budget
        stops them, with the allowed set before each (None unconstrained)."""
        out = self.outputs[self.rows[slot]]
        if size <= 0 or len(out) >= self.budgets[slot] or out[-1] in self.gen.stop_ids:
            return [], []
        size = min(size, self.budgets[slot] - len(out))
        history = self.prompts[slot] + out
        guess = _lookup(history, size)
        if self.constraints is None:
            return guess, [None] * len(guess)
        allowed = self.constraints[slot].lookahead(guess)
        return guess[:len(allowed)], allowed

    def _keep(self, slots: list[int]) -> None:
        if not slots:
            self.rows, self.cache, self.constraints, self.budgets, self.prompts = [], None, None, [], []
            return
        sel = torch.tensor(slots, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.next_pos = self.mask[sel], self.next_pos[sel]
        self.rows = [self.rows[s] for s in slots]
        self.budgets = [self.budgets[s] for s in slots]
        self.prompts = [self.prompts[s] for s in slots]
        if self.constraints is not None:
            self.constraints = [self.constraints[s] for s in slots]

    def pop_output(self, row: int) -> list[int]:
        return self.outputs.pop(row)


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
