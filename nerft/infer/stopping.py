"""When an answer ends: the per-sentence token budget and the repeated-line rule.

The budget must never cut a correct answer: a dense 26-character CLUENER sentence with ten
entities has a 152-token gold answer, and the longest MSRA sentence (2,427 characters) a
10,850-token one. Over the four shared corpora (ccfbdci, CLUENER2020, MSRA, People's Daily)
the gold answer never costs more than 32 + 4.62 tokens per character of the sentence
(`tests/infer/test_stopping.py` checks every row), so the budget is 48 + 6 per character,
with no fixed cap.

A model that loops writes the same entity line again and again; such an answer is ended by
the repeated-line rule long before the budget. The rule is the task's (`Task.line_limit`: an
entity line may occur at most as many times as its text occurs in the sentence, any other line
once), so it reads lines in whichever answer format the model was trained on. The line that
breaks the rule is dropped and the answer ends after the previous line, so a correct answer
(whose mentions are distinct places in the sentence) is never touched.
"""

from __future__ import annotations

import weakref
from collections import Counter

from nerft.task.prompt import Task


def answer_token_budget(text: str) -> int:
    """Most answer tokens (stop token included) a sentence's answer may take."""
    return 48 + 6 * len(text)


_NEWLINE_TOKENS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _holds_newline(tokenizer, token: int) -> bool:
    """Whether a token's text holds a newline, memoised per tokenizer (called every step)."""
    known = _NEWLINE_TOKENS.setdefault(tokenizer, {})
    found = known.get(token)
    if found is None:
        found = known[token] = "\n" in tokenizer.decode([token])
    return found


class RepeatedLineGuard:
    """Watches one row's answer and says where to cut it when a line repeats too often."""

    def __init__(self, tokenizer, sentence: str, task: Task):
        self.tokenizer, self.sentence, self.task = tokenizer, sentence, task
        self.seen: Counter[str] = Counter()
        self.line_start = 0  # index of the token where the current line began
        self.skip = 0  # characters of that token that still belong to the previous line

    def cut_at(self, tokens: list[int]) -> int | None:
        """After the row's newest token: the number of tokens to keep when the answer must
        end here, or None to go on.

        Only tokens that hold a newline close a line, so most steps decode one token."""
        if not _holds_newline(self.tokenizer, tokens[-1]):
            return None
        newest = self.tokenizer.decode(tokens[-1:])
        pending = self.tokenizer.decode(tokens[self.line_start:])[self.skip:]
        for line in pending.split("\n")[:-1]:
            line = line.strip()
            if not line:
                continue
            self.seen[line] += 1
            if self.seen[line] > self.task.line_limit(line, self.sentence):
                # Byte-level BPE tokens end at a newline, so the line starts on a token of
                # its own; otherwise keep the token that ends the previous line.
                return self.line_start + (1 if self.skip else 0)
        tail = newest.rsplit("\n", 1)[1]
        self.line_start = len(tokens) - (1 if tail else 0)
        self.skip = len(newest) - len(tail) if tail else 0
        return None
