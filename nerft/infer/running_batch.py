"""The rows that decode together: their shared key/value cache, rows joining as others
finish (continuous batching), and guessed tokens checked against the model's greedy choice.

`nerft.infer.generate.AnswerGenerator` drives it: it admits queued sentences and calls `step`
until every row has finished. The batch gets the model's parts (`Decoder`: decoder stack,
token choice, stop tokens) and the shared-prefix cache; it knows nothing of the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from nerft.infer.constrain import AnswerConstraint
from nerft.infer.decoder import Decoder
from nerft.infer.stopping import RepeatedLineGuard


@dataclass(frozen=True)
class Prefix:
    """The prompt tokens every row starts with, and their keys/values (batch 1) per layer."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def plain_cache(cache: DynamicCache) -> bool:
    """True when every layer keeps all its keys/values (no sliding window etc.): only such a
    cache can be shared as a prefix, take rows later and drop guessed columns."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


# Guessed tokens per step: a step feeds each row's chosen token plus up to MAX_GUESS guesses,
# about TOKENS_PER_STEP tokens in all. Small steps cost about the same whatever their size (the
# weights are read once either way); the measured trade-off is in BENCHMARKS.md.
TOKENS_PER_STEP = 96
MAX_GUESS = 8


def lookup(history: list[int], size: int) -> list[int]:
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


class RunningBatch:
    """The rows decoding together, and their shared key/value cache.

    Cache columns, row by row: [shared prefix | holes | rest of the prompt | answer so far].
    Holes (left padding, the gap a row admitted later leaves, guessed tokens that were not
    kept) are masked out and skipped by the position ids (the prompt after the prefix starts at
    position len(prefix)), so each row attends to exactly the tokens, at exactly the positions,
    that it would alone; `tests/infer/test_generate.py` checks the tokens equal one-by-one
    `model.generate`.
    """

    def __init__(self, decoder: Decoder, prefix: Prefix | None, *, guess: bool = True):
        self.parts, self.prefix, self.guess = decoder, prefix, guess
        self.mergeable = True  # False for caches other than plain key/value layers
        self.rows: list[int] = []  # sentence index of each batch row, in cache order
        self.cache: DynamicCache | None = None
        self.mask = self.next_pos = self.hidden = None
        self.constraints: list | None = None
        self.budgets: list[int] = []
        self.guards: list[RepeatedLineGuard] = []
        self.prompts: list[list[int]] = []  # each row's prompt ids, where guesses come from
        self.outputs: dict[int, list[int]] = {}
        self.steps = self.guessed = self.kept = 0  # decoder steps, guessed and kept tokens

    def admit(self, rows: list[int], texts: list[str], prompts: list[list[int]],
              budgets: list[int], constrained: bool) -> int:
        """Encode the prompts of new rows and append them to the batch; returns how many of
        them joined (fewer when the model's cache cannot take rows later, see `mergeable`).

        Rows come sorted by prompt length; they are encoded in groups whose padding stays under
        a quarter of their tokens (one long prompt would otherwise pad every short one to it).
        """
        p = len(self.prefix.ids) if self.prefix is not None else 0
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
            self._admit_group(rows[start:end], texts[start:end], prompts[start:end],
                              budgets[start:end], constrained)
            start = end
        return start

    def _admit_group(self, rows: list[int], texts: list[str], prompts: list[list[int]],
                     budgets: list[int], constrained: bool) -> None:
        parts, device, n = self.parts, self.parts.device, len(rows)
        prefix = self.prefix.kv if self.prefix is not None else None
        p = len(self.prefix.ids) if prefix is not None else 0
        suffixes = [ids[p:] for ids in prompts]
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), parts.pad, dtype=torch.long)
        mask = torch.zeros((n, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, s in enumerate(suffixes):
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, p + width - len(s):] = 1
        positions = (p + mask[:, p:].cumsum(-1) - 1).clamp(min=p)
        cache = DynamicCache(config=parts.lm.config) if prefix is None else DynamicCache(
            ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix],
            config=parts.lm.config)
        mask, positions = mask.to(device), positions.to(device)
        hidden = parts(input_ids=ids.to(device), attention_mask=mask, position_ids=positions,
                             cache=cache, use_cache=True).last_hidden_state[:, -1]
        constraints = (AnswerConstraint(parts.tokenizer, parts.task, texts, budgets).rows
                       if constrained else None)
        guards = [RepeatedLineGuard(parts.tokenizer, t, parts.task) for t in texts]
        for i in rows:
            self.outputs[i] = []
        if not self.rows:
            self.mergeable = plain_cache(cache)
            self.cache, self.mask, self.hidden = cache, mask, hidden
            self.next_pos, self.rows = positions[:, -1] + 1, list(rows)
            self.constraints, self.budgets, self.prompts = constraints, budgets, list(prompts)
            self.guards = guards
            return
        self._merge(cache, mask, p)
        self.hidden = torch.cat([self.hidden, hidden])
        self.next_pos = torch.cat([self.next_pos, positions[:, -1] + 1])
        self.rows += rows
        self.budgets += budgets
        self.guards += guards
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
        parts = self.parts
        chosen = parts.choose(self.hidden, None if self.constraints is None
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
        size = max(0, min(MAX_GUESS, TOKENS_PER_STEP // n - 1)) if self.guess and self.mergeable else 0
        guesses = [self._guess(slot, size) for slot in range(n)]
        width = 1 + max(len(g) for g, _ in guesses)
        ids = torch.full((n, width), parts.pad, dtype=torch.long)
        ids[:, 0] = chosen
        fed = torch.zeros((n, width), dtype=torch.long)
        fed[:, 0] = 1
        for slot, (guess, _) in enumerate(guesses):
            ids[slot, 1:1 + len(guess)] = torch.tensor(guess, dtype=torch.long)
            fed[slot, 1:1 + len(guess)] = 1
        self.mask = torch.cat([self.mask, fed.to(device)], 1)
        positions = self.next_pos[:, None] + torch.arange(width, device=device)
        hidden = parts(input_ids=ids.to(device), attention_mask=self.mask,
                             position_ids=positions, cache=self.cache,
                             use_cache=True).last_hidden_state
        kept = [0] * n
        if width > 1:
            # The model's choice after the chosen token and after each guessed token.
            at = [(slot, j) for slot, (guess, _) in enumerate(guesses) for j in range(len(guess))]
            allowed = None if self.constraints is None else [guesses[s][1][j] for s, j in at]
            picks = parts.choose(hidden[[s for s, _ in at], [j for _, j in at]], allowed).tolist()
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
        if out and (len(out) >= self.budgets[slot] or out[-1] in self.parts.stop_ids):
            return True  # finished on a kept guess: the chosen token is discarded
        out.append(token)
        if self.constraints is not None:
            self.constraints[slot].advance(token)
        cut = self.guards[slot].cut_at(out)
        if cut is not None:  # a looping answer: it ends after its last allowed line
            out[cut:] = [self.parts.eot]  # ended like any answer (the stop token is dropped later)
            return True
        return len(out) >= self.budgets[slot] or token in self.parts.stop_ids

    def _guess(self, slot: int, size: int) -> tuple[list[int], list]:
        """Up to `size` guessed next tokens for a row, cut where the constraint or the budget
        stops them, with the allowed set before each (None unconstrained)."""
        out = self.outputs[self.rows[slot]]
        if size <= 0 or len(out) >= self.budgets[slot] or out[-1] in self.parts.stop_ids:
            return [], []
        size = min(size, self.budgets[slot] - len(out))
        history = self.prompts[slot] + out
        guess = lookup(history, size)
        if self.constraints is None:
            return guess, [None] * len(guess)
        allowed = self.constraints[slot].lookahead(guess)
        return guess[:len(allowed)], allowed

    def _keep(self, slots: list[int]) -> None:
        if not slots:
            self.rows, self.cache, self.constraints, self.budgets, self.prompts = [], None, None, [], []
            self.guards = []
            return
        sel = torch.tensor(slots, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.next_pos = self.mask[sel], self.next_pos[sel]
        self.rows = [self.rows[s] for s in slots]
        self.budgets = [self.budgets[s] for s in slots]
        self.guards = [self.guards[s] for s in slots]
        self.prompts = [self.prompts[s] for s in slots]
        if self.constraints is not None:
            self.constraints = [self.constraints[s] for s in slots]

    def pop_output(self, row: int) -> list[int]:
        return self.outputs.pop(row)
