"""The tagging head's answer format: one BIO tag per token of the sentence alone (no prompt).

Tokens. The sentence is cut into pieces first, one per character except runs of ASCII letters
(a Latin word stays whole), and each piece is tokenised on its own; a token's characters are
its piece's offset mapping shifted to the piece's place. Qwen's BPE otherwise merges Chinese
characters across entity edges (在上海 is one token, 法国外长 is 法 + 国外 + 长): measured on the
shared corpora's training rows, 4-10% of entities (MSRA 9.6%) have an edge inside a token, and
a tagger could then only ever predict them widened. Cut this way, an edge can fall inside a
token only within an ASCII word.

Tags. O, then B-label and I-label for each label, in the task's label order (the head's output
rows are these tags, recorded in the model's config as id2label). A token is inside an entity
when its characters overlap the entity's; the first such token is B, the others I. Two
irreducible cases are counted (`TagReport`), never hidden: an entity whose edge falls inside a
token (`straddling`: it is trained, and predicted, widened to the token's edges), and an entity
that shares every token with an earlier one (`lost`: a token carries one tag, so it cannot be
learned at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nerft.data.example import Span

OUTSIDE = "O"
_PIECES = re.compile(r"[A-Za-z]+|.", re.S)


def tag_names(labels: tuple[str, ...]) -> list[str]:
    """The head's tags: O, then B-/I- per label in the task's order."""
    return [OUTSIDE, *(f"{prefix}-{label}" for label in labels for prefix in ("B", "I"))]


@dataclass
class TokenizedSentence:
    """A sentence's token ids and each token's [start, end) characters in it."""

    ids: list[int]
    offsets: list[tuple[int, int]]


def tokenize_sentences(tokenizer, texts: list[str]) -> list[TokenizedSentence]:
    """Token ids and character offsets of each sentence, piece by piece (see the module doc).
    Special-token strings in a sentence are plain text, as in the chat encoding."""
    pieces = [[(m.start(), m.group()) for m in _PIECES.finditer(text)] for text in texts]
    flat = [p for row in pieces for _, p in row]
    encoded = tokenizer(flat, add_special_tokens=False, split_special_tokens=True,
                        return_offsets_mapping=True) if flat else {"input_ids": [], "offset_mapping": []}
    out, k = [], 0
    for row in pieces:
        ids, offsets = [], []
        for start, _ in row:
            ids += encoded["input_ids"][k]
            offsets += [(start + a, start + b) for a, b in encoded["offset_mapping"][k]]
            k += 1
        out.append(TokenizedSentence(ids, offsets))
    return out


@dataclass
class TagReport:
    """What turning character spans into token tags could not keep exactly."""

    entities: int = 0
    straddling: list[str] = field(default_factory=list)  # "id: text": an edge inside a token
    lost: list[str] = field(default_factory=list)  # "id: text": no token of its own

    def line(self) -> str:
        return (f"tagger: {self.entities:,} entities as BIO token tags; {len(self.straddling):,} "
                f"with an edge inside a token (learned widened to the token), {len(self.lost):,} "
                "sharing all their tokens with another entity (not learnable)")


def token_tags(sentence: TokenizedSentence, spans: list[Span], labels: tuple[str, ...],
               report: TagReport | None = None, row_id: str = "") -> list[int]:
    """The tag id of every token for these gold spans (tag ids index `tag_names(labels)`)."""
    names = tag_names(labels)
    index = {name: i for i, name in enumerate(names)}
    tags = [index[OUTSIDE]] * len(sentence.ids)
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        inside = [i for i, (a, b) in enumerate(sentence.offsets) if a < span.end and b > span.start]
        own = [i for i in inside if tags[i] == index[OUTSIDE]]
        if report is not None:
            report.entities += 1
            if not own:
                report.lost.append(f"{row_id}: {span.text}")
            elif any(sentence.offsets[i][0] < span.start or sentence.offsets[i][1] > span.end
                     for i in own):
                report.straddling.append(f"{row_id}: {span.text}")
        for n, i in enumerate(own):
            tags[i] = index[f"{'B' if n == 0 else 'I'}-{span.label}"]
    return tags


def spans_from_tags(text: str, sentence: TokenizedSentence, tags: list[int],
                    labels: tuple[str, ...]) -> list[Span]:
    """Entity spans from predicted tag ids: B starts an entity, I of the same label continues it,
    an I without its B starts one (the lenient reading: the tokens were still called entity).
    A span covers its tokens' characters, trimmed of surrounding white space."""
    names = tag_names(labels)
    found: list[list] = []  # [start, end, label] each
    current = None  # [start, end, label]
    for (a, b), tag in zip(sentence.offsets, tags):
        name = names[tag]
        if name == OUTSIDE:
            current = None
            continue
        prefix, label = name.split("-", 1)
        if prefix == "I" and current is not None and current[2] == label:
            current[1] = max(current[1], b)
            continue
        if current is not None and a < current[1]:  # a byte piece of the same character
            current[1] = max(current[1], b)
            continue
        current = [a, b, label]
        found.append(current)  # the list shares `current`: later tokens extend it
    spans = []
    for start, end, label in found:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            spans.append(Span(start, end, label, text[start:end]))
    return spans
