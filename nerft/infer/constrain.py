"""Constrained decoding: the model can only write a well-formed answer about its own sentence.

The answer language, over UTF-8 bytes (the pieces are the task's own, `Task.pieces`, cut out of
what `format_answer` writes, so they are exactly the bytes training taught):

    answer = NO_ENTITY EOT  |  line (SEP line)* EOT
    line   = OPEN text MID label CLOSE        e.g. {"entity_text": "南京", "entity_label": "地点"}
                                              or (compact) "南京": "地点"

where `text` is the json-escaped form (json.dumps(ensure_ascii=False)) of a non-empty substring
of the row's sentence and `label` one of the task's labels. Nothing else is enforced: mentions
may repeat and come in any order.

Why bytes rather than characters: Qwen's byte-level BPE has tokens that hold part of a
character (地 is 'Ġåľ' + '°') and tokens that run from an entity into the closing quote
(`京",`). A byte automaton accepts exactly the token sequences whose bytes spell an answer,
whatever the split. The allowed tokens of a state are found by walking the sorted token byte
strings with the automaton (a trie walk by bisection) and memoised per state, so a step costs
a dictionary lookup once a row has been in that state.

Budget: a row must end within `answer_token_budget` tokens. Every state knows how many tokens
one concrete way to finish costs (`RowConstraint.cost`), and a token is allowed only if the
row can still finish after it, so even a random model writes a complete answer.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from nerft.task.prompt import Task, escape_string
from nerft.task.chat import end_of_turn_id


@dataclass(frozen=True)
class AnswerFormat:
    """The task's answer pieces (`Task.pieces`) as bytes, checked to be ones the automaton
    below can follow."""

    no_entity: bytes
    open: bytes  # before the entity text
    mid: bytes  # from the quote closing the text to the label
    close: bytes  # after the label
    sep: bytes  # between two lines

    @classmethod
    def of(cls, task: Task) -> "AnswerFormat":
        p = task.pieces
        fmt = cls(*(x.encode() for x in (p.no_entity, p.open, p.mid, p.close, p.sep)))
        if not (fmt.open and fmt.mid and fmt.close and fmt.sep) or fmt.open[0] == fmt.no_entity[0]:
            raise ValueError(f"answer format {task.answer_format!r} cannot be constrained")
        if fmt.mid[:1] != b'"' or fmt.close[:1] != b'"':
            raise ValueError(f"answer format {task.answer_format!r}: strings must be closed by a quote")
        return fmt


def escape(text: str) -> bytes:
    """The bytes the task's formats write for `text` inside a string."""
    return escape_string(text).encode()


# --- the vocabulary as byte strings, built once per tokenizer -------------------------------

_NEVER = 1 << 30


@dataclass
class TokenBytes:
    keys: list[bytes]  # sorted distinct byte strings of usable tokens
    ids: list[tuple[int, ...]]  # token ids spelling keys[i]
    eot: int

    def __post_init__(self):
        self._known = set(self.keys)
        self._longest = max(map(len, self.keys), default=0)
        self._fewest: dict[bytes, int] = {}

    def fewest_tokens(self, data: bytes) -> int:
        """The fewest tokens that spell `data` (memoised; _NEVER when none can)."""
        found = self._fewest.get(data)
        if found is None:
            best = [0] + [_NEVER] * len(data)
            for end in range(1, len(data) + 1):
                for start in range(max(0, end - self._longest), end):
                    if best[start] + 1 < best[end] and data[start:end] in self._known:
                        best[end] = best[start] + 1
            found = self._fewest[data] = best[-1]
        return found


_VOCAB_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def token_bytes(tokenizer) -> TokenBytes:
    """Token id → bytes for every ordinary token (special and added tokens excluded), cached."""
    cached = _VOCAB_CACHE.get(tokenizer)
    if cached is None:
        cached = _VOCAB_CACHE[tokenizer] = _build_token_bytes(tokenizer)
    return cached


def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible map from bytes to printable characters, used by every byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _build_token_bytes(tokenizer) -> TokenBytes:
    added = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    byte_level = type(decoder).__name__ == "ByteLevel" or "ByteLevel" in repr(decoder)[:20]
    # Each character of a byte-level piece stands for one byte: map it to the latin-1 character
    # with that code, then latin-1 encoding gives the bytes.
    to_latin1 = {ord(ch): b for ch, b in _byte_decoder().items()}
    spelled: dict[bytes, list[int]] = {}
    for i, piece in enumerate(pieces):
        if i in added or piece is None:
            continue
        if byte_level:
            try:
                raw = piece.translate(to_latin1).encode("latin-1")
            except UnicodeEncodeError:
                continue
        else:  # approximate: whole-character tokens only, and <0xNN> byte fallbacks
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                raw = bytes([int(piece[3:5], 16)])
            else:
                text = tokenizer.convert_tokens_to_string([piece])
                if not text or "\ufffd" in text:
                    continue
                raw = text.encode()
        if raw:
            spelled.setdefault(raw, []).append(i)
    keys = sorted(spelled)
    return TokenBytes(keys, [tuple(spelled[k]) for k in keys], end_of_turn_id(tokenizer))


# --- one row's automaton ----------------------------------------------------------------------
# States are tuples: ("start",) ("lit", piece, k) ("text", positions, nonempty) ("label", bytes)
# ("after",) a line just closed, ("done",) the no-entity phrase written, ("end",) EOT written.

class RowConstraint:
    """The answer automaton for one sentence, with its memo of allowed tokens per state."""

    def __init__(self, vocab: TokenBytes, fmt: AnswerFormat, labels: tuple[bytes, ...],
                 sentence: str, budget: int):
        self.vocab, self.fmt, self.labels, self.budget = vocab, fmt, labels, budget
        self.lit = {"noent": fmt.no_entity, "open": fmt.open, "mid": fmt.mid,
                    "close": fmt.close, "sep": fmt.sep}
        chars = [escape(c) for c in sentence]
        self.text = b"".join(chars)
        self.boundary = bytearray(len(self.text) + 1)
        self.to_boundary = [0] * (len(self.text) + 1)  # bytes from p to the next char end
        pos = 0
        for c in chars:
            self.boundary[pos] = 1
            for k in range(len(c)):
                self.to_boundary[pos + k] = len(c) - k
            pos += len(c)
        self.boundary[pos] = 1
        # Token costs of the shortest ways to finish; see `cost`.
        fewest = vocab.fewest_tokens
        self.one_char = min((fewest(c) for c in set(chars)), default=_NEVER)
        self.after_text = min(fewest(fmt.mid + lb + fmt.close) for lb in labels) + 1
        self.state = ("start",)
        self.generated = 0
        self.memo: dict[tuple, tuple[torch.Tensor, torch.Tensor, dict[int, tuple]]] = {}

    # automaton -------------------------------------------------------------------------------
    def _lit(self, name: str, k: int) -> tuple:
        if k < len(self.lit[name]):
            return ("lit", name, k)
        if name == "open":
            return ("text", frozenset(p for p in range(len(self.text)) if self.boundary[p]), False)
        return {"noent": ("done",), "mid": ("label", b""), "close": ("after",),
                "sep": ("lit", "open", 0)}[name]

    def _closable(self, state) -> bool:
        return state[2] and any(self.boundary[p] for p in state[1])

    def next_bytes(self, state) -> set[int]:
        kind = state[0]
        if kind == "start":
            return {self.fmt.no_entity[0], self.fmt.open[0]} if self.text else {self.fmt.no_entity[0]}
        if kind == "lit":
            return {self.lit[state[1]][state[2]]}
        if kind == "text":
            out = {self.text[p] for p in state[1] if p < len(self.text)}
            if self._closable(state):
                out.add(self.fmt.mid[0])
            return out
        if kind == "label":
            done = state[1]
            out = {lb[len(done)] for lb in self.labels if len(lb) > len(done) and lb.startswith(done)}
            if done in self.labels:
                out.add(self.fmt.close[0])
            return out
        if kind == "after":
            return {self.fmt.sep[0]}
        return set()

    def step(self, state, x: int):
        """The state after byte `x`, or None when `x` cannot come next."""
        kind = state[0]
        if kind == "start":
            if x == self.fmt.no_entity[0]:
                return self._lit("noent", 1)
            return self._lit("open", 1) if x == self.fmt.open[0] and self.text else None
        if kind == "lit":
            return self._lit(state[1], state[2] + 1) if self.lit[state[1]][state[2]] == x else None
        if kind == "text":
            # A quote closes the text only between characters; inside the text a quote is
            # always escaped (\"), so the two readings never compete.
            if x == self.fmt.mid[0] and self._closable(state):
                return self._lit("mid", 1)
            moved = frozenset(p + 1 for p in state[1] if p < len(self.text) and self.text[p] == x)
            return ("text", moved, True) if moved else None
        if kind == "label":
            if x == self.fmt.close[0] and state[1] in self.labels:
                return self._lit("close", 1)
            grown = state[1] + bytes((x,))
            return ("label", grown) if any(lb.startswith(grown) for lb in self.labels) else None
        if kind == "after":
            return self._lit("sep", 1) if x == self.fmt.sep[0] else None
        return None

    def cost(self, state) -> int:
        """Tokens (EOT included) of one concrete way to finish from `state`.

        Each state's way continues the ways of the states before it (the pieces are spelled
        one after the other, each in its fewest tokens), so from any state some allowed token
        lowers the cost by one: a row that starts within its budget can always finish in it.
        """
        kind, fewest = state[0], self.vocab.fewest_tokens
        if kind == "start":
            return min(fewest(self.fmt.no_entity) + 1, self.cost(("lit", "open", 0)))
        if kind == "lit":
            name, rest = state[1], self.lit[state[1]][state[2]:]
            if name == "open":
                return fewest(rest) + self.one_char + self.after_text
            if name == "sep":
                return fewest(rest) + self.cost(("lit", "open", 0))
            if name == "mid":
                return min(fewest(rest + lb + self.fmt.close) for lb in self.labels) + 1
            return fewest(rest) + 1  # noent, close
        if kind == "text":
            if not state[2]:
                return self.one_char + self.after_text
            if self._closable(state):
                return self.after_text
            return min(fewest(self.text[p:p + self.to_boundary[p]]) for p in state[1]) + self.after_text
        if kind == "label":
            done = state[1]
            return min(fewest(lb[len(done):] + self.fmt.close)
                       for lb in self.labels if lb.startswith(done)) + 1
        return 1 if kind in ("after", "done") else _NEVER

    # tokens ----------------------------------------------------------------------------------
    def _explore(self, state):
        """Every token whose bytes the automaton accepts from `state`, with the state after it."""
        keys, ids = self.vocab.keys, self.vocab.ids
        found: dict[int, tuple] = {}
        stack = [(state, b"", 0, len(keys))]
        while stack:
            s, prefix, lo, hi = stack.pop()
            if prefix and keys[lo] == prefix:
                for i in ids[lo]:
                    found[i] = s
            for x in self.next_bytes(s):
                longer = prefix + bytes((x,))
                a = bisect_left(keys, longer, lo, hi)
                if a >= hi or not keys[a].startswith(longer):
                    continue
                b = bisect_left(keys, prefix + bytes((x + 1,)), a, hi) if x < 255 else hi
                nxt = self.step(s, x)
                if nxt is not None:
                    stack.append((nxt, longer, a, b))
        if state[0] in ("after", "done"):
            found[self.vocab.eot] = ("end",)
        token_ids = torch.tensor(sorted(found), dtype=torch.long)
        costs = torch.tensor([0 if found[i] == ("end",) else self.cost(found[i])
                              for i in token_ids.tolist()], dtype=torch.long)
        return token_ids, costs, found

    def _entry(self):
        entry = self.memo.get(self.state)
        if entry is None:
            entry = self.memo[self.state] = self._explore(self.state)
        return entry

    def allowed(self) -> torch.Tensor:
        """Sorted ids the row may write next: in the format, and leaving room to finish."""
        if self.state == ("end",):
            return torch.tensor([self.vocab.eot])
        token_ids, costs, _ = self._entry()
        room = self.budget - self.generated - 1
        fits = costs <= room
        if bool(fits.all()):
            return token_ids
        if not bool(fits.any()):  # a vocabulary that cannot spell some piece: get closest
            fits = costs == costs.min()
        return token_ids[fits]

    def lookahead(self, draft: list[int]) -> list[torch.Tensor]:
        """The allowed sets before each token of `draft`, for as long as the draft stays
        allowed (so the result may be shorter than the draft); the row itself does not move."""
        saved, out = (self.state, self.generated), []
        try:
            for token in draft:
                allowed = self.allowed()
                i = int(torch.searchsorted(allowed, token))
                if i == len(allowed) or int(allowed[i]) != token:
                    break
                out.append(allowed)
                self.advance(token)
        finally:
            self.state, self.generated = saved
        return out

    def advance(self, token: int) -> None:
        if self.state == ("end",):
            return
        self.generated += 1
        if token == self.vocab.eot:
            self.state = ("end",)
            return
        nxt = self._entry()[2].get(token)
        if nxt is None:
            raise ValueError(f"token {token} is outside the answer format in state {self.state}")
        self.state = nxt


# --- a batch, and the transformers interface ---------------------------------------------------

class AnswerConstraint:
    """One `RowConstraint` per sentence of a batch."""

    def __init__(self, tokenizer, task: Task, texts: list[str], budgets: list[int]):
        vocab = token_bytes(tokenizer)
        fmt = AnswerFormat.of(task)
        labels = tuple(escape(lb) for lb in task.labels)
        self.rows = [RowConstraint(vocab, fmt, labels, t, b) for t, b in zip(texts, budgets)]


class AnswerLogitsProcessor(LogitsProcessor):
    """Masks every token outside the answer format, for `model.generate` (batched, per row).

    It reads each row's new tokens from `input_ids[:, prompt_len:]`, so it works with any
    left-padded batch; rows that finished keep only EOT open.
    """

    def __init__(self, constraint: AnswerConstraint, prompt_len: int):
        self.constraint, self.prompt_len = constraint, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for r, row in enumerate(self.constraint.rows):
            for token in input_ids[r, self.prompt_len + row.generated:].tolist():
                row.advance(token)
            keep[r, row.allowed().to(scores.device)] = True
        return scores.masked_fill(~keep, float("-inf"))


def constrained_factory(tokenizer, task: Task):
    """`(batch_texts, prompt_len) -> LogitsProcessorList` for `generate_answers` / `model.generate`."""
    from nerft.infer.stopping import answer_token_budget

    def factory(batch_texts: list[str], prompt_len: int) -> LogitsProcessorList:
        budgets = [answer_token_budget(t) for t in batch_texts]
        return LogitsProcessorList(
            [AnswerLogitsProcessor(AnswerConstraint(tokenizer, task, batch_texts, budgets), prompt_len)])

    return factory
