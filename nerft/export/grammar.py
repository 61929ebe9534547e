"""GBNF grammars (llama.cpp's grammar format, also read by llguidance and so by vLLM) for a task's
answer format, so runtimes that take a grammar keep answers parseable: `answer_grammar(task)`
for any sentence, and `answer_grammar(task, sentence)` that also keeps every entity text a
substring of the sentence, as nerft's own constrained decoding does.

The grammar spells no format of its own: its literals are the task's answer pieces
(`Task.pieces`) and its strings the task's escaping (`escape_string`), in either answer format.
"""

from __future__ import annotations

from nerft.task.prompt import Task, escape_string


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


def answer_grammar(task: Task, sentence: str | None = None) -> str:
    """GBNF for an answer: the no-entity phrase, or entity lines with the task's labels."""
    if not isinstance(task, Task):
        raise TypeError("answer_grammar takes the Task (its labels and answer format)")
    p = task.pieces
    rules = [
        f"root ::= {_literal(p.no_entity)} | entity ({_literal(p.sep)} entity)*",
        f"entity ::= {_literal(p.open)} text {_literal(p.mid)} label {_literal(p.close)}",
        "label ::= " + " | ".join(_literal(escape_string(label)) for label in task.labels),
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
        rules.append(f"s{i} ::= {_literal(escape_string(ch))}{follow}")
    return "\n".join(rules) + "\n"
