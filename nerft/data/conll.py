"""The character-per-line CoNLL reader: `char TAG` lines, sentences separated by blank lines,
BIO, IOB, BIOES and BMES tags decoded into character spans."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Union

from nerft.data.example import Example, Rejection, Span
from nerft.data.lines import example_id, iter_lines

Row = Union[Example, Rejection]

_PREFIXES = {"B": "begin", "I": "inside", "M": "inside", "E": "end", "S": "single"}


def split_tag_line(line: str) -> tuple[str, str] | None:
    """`char<TAB>tag` or `char<space>tag`; the character itself may be a space.

    Whitespace around the tag and between the two columns (`char<space><TAB>tag`, a trailing
    space) is layout, not text; a token that is nothing but whitespace is a space character.
    """
    line = line.rstrip()
    sep = "\t" if "\t" in line else " "
    if sep not in line:
        return None
    token, tag = line.rsplit(sep, 1)
    tag = tag.strip()
    token = token.strip(" \t") or token[:1]
    if token == "" or not tag or " " in tag:
        return None
    if tag != "O" and (len(tag) < 3 or tag[0] not in _PREFIXES or tag[1] not in "-_"):
        return None
    return token, tag


def read_conll(path: Path) -> Iterator[Row]:
    """Sentences of `char tag` lines separated by blank lines; BIO, IOB, BIOES and BMES tags.

    Broken sequences (an I- with no B- before it, a label change inside an entity) are repaired
    the way conlleval reads them: the odd tag starts a new entity. The repair is reported.
    """
    name = str(path)
    chars: list[str] = []
    tags: list[tuple[int, str]] = []
    first_line = 0
    error: Rejection | None = None
    for tl in iter_lines(path):
        if tl.text is not None and tl.text.strip() == "":
            if chars or error:
                yield from _conll_sentence(name, first_line, chars, tags, error)
            chars, tags, error = [], [], None
            continue
        if not chars and error is None:
            first_line = tl.lineno
        if error is not None:
            continue  # the sentence is already lost; skip to its end
        if tl.text is None:
            error = Rejection(name, first_line, "invalid_utf8", f"line {tl.lineno}: {tl.error}")
            continue
        parsed = split_tag_line(tl.text)
        if parsed is None:
            reason = "unknown_tag" if (" " in tl.text or "\t" in tl.text) else "malformed_line"
            error = Rejection(name, first_line, reason,
                              f"line {tl.lineno}: expected 'char TAG' with TAG O or B-/I-/E-/S-/M-X, "
                              f"got {tl.text[:40]!r}")
            continue
        chars.append(parsed[0])
        tags.append((tl.lineno, parsed[1]))
    if chars or error:
        yield from _conll_sentence(name, first_line, chars, tags, error)


def _conll_sentence(file, first_line, chars, tags, error) -> Iterator[Row]:
    if error is not None:
        yield error
        return
    text = "".join(chars)
    spans, repairs = tags_to_spans(text, chars, tags)
    ex = Example(example_id(file, first_line), text, spans, f"{file}:{first_line}")
    for detail in repairs:
        yield Rejection(file, first_line, "broken_tags", detail, action="repaired")
    yield ex


def tags_to_spans(text: str, chars: list[str], tags: list[tuple[int, str]]):
    """Decode per-token tags into character spans; returns (spans, repair notes)."""
    offsets, pos = [], 0
    for c in chars:
        offsets.append(pos)
        pos += len(c)
    spans, repairs = [], []
    open_label, open_start = None, 0

    def close(end_tok: int):
        nonlocal open_label
        if open_label is not None:
            s, e = offsets[open_start], offsets[end_tok - 1] + len(chars[end_tok - 1])
            spans.append(Span(s, e, open_label, text[s:e]))
        open_label = None

    for i, (lineno, tag) in enumerate(tags):
        if tag == "O":
            close(i)
            continue
        kind, label = _PREFIXES[tag[0]], tag[2:]
        continues = open_label == label and kind in ("inside", "end")
        if kind in ("inside", "end") and not continues:
            repairs.append(f"line {lineno}: {tag} does not continue an open {label} entity; "
                           "started a new one")
        if not continues:
            close(i)
            open_label, open_start = label, i
        if kind in ("end", "single"):
            close(i + 1)
    close(len(tags))
    return spans, repairs
