"""GBNF grammars (llama.cpp's grammar format) for the answer format, so runtimes that take a
grammar keep answers parseable: `answer_grammar(labels)` for any sentence, and
`answer_grammar(labels, sentence)` that also keeps every entity text a substring of the sentence,
as nerft's own constrained decoding does.

The answer is what `nerft.prompt.format_answer` writes: `json.dumps` lines with ", " and ": "
separators and non-ASCII characters as themselves, or the no-entity phrase.
"""

from __future__ import annotations

import json

from nerft.prompt import LABEL_KEY, NO_ENTITY, TEXT_KEY


def _literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_char(ch: str) -> str:
    """How `json.dumps(..., ensure_ascii=False)` writes one character inside a string."""
    return json.dumps(ch, ensure_ascii=False)[1:-1]


def answer_grammar(labels: tuple[str, ...] | list[str], sentence: str | None = None) -> str:
    """GBNF for an answer: the no-entity phrase, or entity lines with known labels."""
    prefix = json.dumps({TEXT_KEY: "\0", LABEL_KEY: "\1"}, ensure_ascii=False)
    before_text, rest = prefix.split("\\u0000")
    between, after_label = rest.split("\\u0001")
    rules = [
        f"root ::= {_literal(NO_ENTITY)} | entity (\"\\n\" entity)*",
        f"entity ::= {_literal(before_text)} text {_literal(between)} label {_literal(after_label)}",
        "label ::= " + " | ".join(_literal(label) for label in labels),
    ]
    if sentence is None:
        # Any non-empty JSON string body: plain characters or escapes.
        rules.append('text ::= ([^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4}))+')
        return "\n".join(rules) + "\n"
    if not sentence:
        raise ValueError("an empty sentence has no substring to name")
    # A substring starts at some position i and runs on: s_i ::= c_i s_{i+1}?
    chars = list(sentence)
    rules.append("text ::= " + " | ".join(f"s{i}" for i in range(len(chars))))
    for i, ch in enumerate(chars):
        follow = f" s{i + 1}?" if i + 1 < len(chars) else ""
        rules.append(f"s{i} ::= {_literal(_json_char(ch))}{follow}")
    return "\n".join(rules) + "\n"
