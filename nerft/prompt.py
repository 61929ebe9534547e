"""The NER task as the model sees it: instruction, answer format, and the parser back to spans.

This is the one place that knows the answer formats. The default, "json", follows the worked
example (LoRA instruction tuning of Qwen2 on ccfbdci): one JSON object per entity, one per line,
in sentence order, and a fixed phrase when there is no entity. "compact" writes one
`"text": "label"` pair per line (JSON strings, so the same escaping and the same constrained
decoder apply): about half the answer tokens to train on and to decode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from nerft.config import ANSWER_FORMATS
from nerft.data.example import Span

NO_ENTITY = "没有找到任何实体"
TEXT_KEY = "entity_text"
LABEL_KEY = "entity_label"


@dataclass(frozen=True)
class Task:
    """The label set (names the model sees) and the messages built from it."""

    labels: tuple[str, ...]
    answer_format: str = "json"

    def __post_init__(self):
        if not self.labels:
            raise ValueError("a task needs at least one label")
        check_answer_format(self.answer_format)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate label names in {self.labels}")
        for label in self.labels:
            check_label_name(label)

    @property
    def system_prompt(self) -> str:
        kinds = "; ".join(self.labels)
        if self.answer_format == "compact":
            example = self.format_answer([Span(0, 2, self.example_label, "南京")])
            return (
                f"你是一个文本实体识别领域的专家，你需要从给定的句子中提取 {kinds} 实体. "
                f'每个实体输出一行 "实体文本": "实体类型", 如 {example} '
                f'找不到任何实体时, 输出"{NO_ENTITY}".'
            )
        example = json.dumps({TEXT_KEY: "南京", LABEL_KEY: self.example_label}, ensure_ascii=False)
        return (
            f"你是一个文本实体识别领域的专家，你需要从给定的句子中提取 {kinds} 实体. "
            f"以 json 格式输出, 如 {example} "
            f"注意: 1. 输出的每一行都必须是正确的 json 字符串. "
            f'2. 找不到任何实体时, 输出"{NO_ENTITY}".'
        )

    @property
    def example_label(self) -> str:
        # The example entity is a place; show a place-like label when the set has one so the
        # instruction never demonstrates a wrong answer.
        for candidate in ("地理实体", "地点", "地址", "地名"):
            if candidate in self.labels:
                return candidate
        return self.labels[0]

    def format_answer(self, entities: list[Span]) -> str:
        return format_answer(entities, self.answer_format)

    def parse_answer(self, answer: str, sentence: str) -> "ParsedAnswer":
        return parse_answer(answer, sentence, self.labels, self.answer_format)

    def messages(self, text: str, answer: str | None = None) -> list[dict]:
        """Chat messages for one sentence; with `answer`, the full training conversation."""
        msgs = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user_message(text)},
        ]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs


# Control-token syntax of the chat templates nerft knows (ChatML `<|...|>`, Llama `<<SYS>>`,
# `[INST]`): labels are written into the system prompt, where such text would be parsed as a
# control token and could end the system turn.
_CONTROL_LIKE = re.compile(r"<\|.*?\|>|<<|>>|\[/?INST\]|</?s>")


def check_label_name(label: str) -> None:
    """Reject a label the instruction cannot hold: empty, multi-line, or control-token text."""
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"label names must be non-empty text, got {label!r}")
    if label != label.strip() or any(c in label for c in "\r\n\t"):
        raise ValueError(f"label {label!r} starts or ends with whitespace or holds a line "
                         "break or tab; use a single-line name")
    if _CONTROL_LIKE.search(label):
        raise ValueError(f"label {label!r} looks like a chat control token; rename it")


def user_message(text: str) -> str:
    return f"文本:{text}"


def check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer format {answer_format!r}: choose from {', '.join(ANSWER_FORMATS)}")


def format_answer(entities: list[Span], answer_format: str = "json") -> str:
    """Serialise gold entities in sentence order: the text the model is trained to write."""
    check_answer_format(answer_format)
    if not entities:
        return NO_ENTITY
    ordered = sorted(entities, key=lambda s: (s.start, s.end))
    if answer_format == "compact":
        return "\n".join(f"{_json_string(s.text)}: {_json_string(s.label)}" for s in ordered)
    return "\n".join(
        json.dumps({TEXT_KEY: s.text, LABEL_KEY: s.label}, ensure_ascii=False) for s in ordered
    )


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class ParseIssue:
    kind: str  # malformed | bad_field | unknown_label | not_in_text | extra_mention
    detail: str


@dataclass
class ParsedAnswer:
    """Spans recovered from an answer, and everything that did not parse or did not fit."""

    spans: list[Span] = field(default_factory=list)
    issues: list[ParseIssue] = field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        """True when the answer is entirely in the format (entity texts may still be wrong)."""
        return not any(i.kind in ("malformed", "bad_field") for i in self.issues)

    @property
    def hallucinated(self) -> list[str]:
        """Entity texts the model wrote that do not occur in the sentence."""
        return [i.detail for i in self.issues if i.kind == "not_in_text"]


def parse_answer(answer: str, sentence: str, labels: tuple[str, ...] | None = None,
                 answer_format: str = "json") -> ParsedAnswer:
    """Turn an answer back into spans of `sentence`.

    json: objects may be separated by newlines or written back to back (the worked example's
    own output). compact: one `"text": "label"` pair per line. A mention is placed at the first occurrence of its text that does not overlap a
    span already placed, searching first after the previous mention (answers are in sentence
    order), then after the previous mention of the same text: repeated mentions map to
    successive occurrences in order.
    """
    result = ParsedAnswer()
    body = answer.strip()
    if body == NO_ENTITY or body == "":
        if body == "":
            result.issues.append(ParseIssue("malformed", "empty answer"))
        return result

    check_answer_format(answer_format)
    taken: list[tuple[int, int]] = []
    cursor: dict[str, int] = {}
    if answer_format == "compact":
        for line in body.splitlines():
            for obj in _compact_line(line.strip(), result):
                _place_mention(obj, sentence, labels, result, taken, cursor)
        result.spans.sort()
        return result
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(body):
        while pos < len(body) and body[pos] in " \t\r\n":
            pos += 1
        if pos >= len(body):
            break
        try:
            obj, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            line_end = body.find("\n", pos)
            line_end = len(body) if line_end < 0 else line_end
            fragment = body[pos:line_end]
            kind = "malformed"
            if fragment.strip() == NO_ENTITY:
                detail = "no-entity phrase mixed with entities"
            else:
                detail = f"not JSON: {fragment[:60]!r}"
            result.issues.append(ParseIssue(kind, detail))
            pos = line_end + 1
            continue
        pos = end
        _place_mention(obj, sentence, labels, result, taken, cursor)
    result.spans.sort()
    return result


def _compact_line(line: str, result: ParsedAnswer) -> list[dict]:
    """The mentions of one compact line (`"text": "label"`), as json-format objects."""
    if not line:
        return []
    if line == NO_ENTITY:
        result.issues.append(ParseIssue("malformed", "no-entity phrase mixed with entities"))
        return []
    try:
        pairs = json.loads("{" + line + "}", object_pairs_hook=list)
    except json.JSONDecodeError:
        result.issues.append(ParseIssue("malformed", f"not a \"text\": \"label\" line: {line[:60]!r}"))
        return []
    out = []
    for text, label in pairs:
        if isinstance(text, str) and text and isinstance(label, str):
            out.append({TEXT_KEY: text, LABEL_KEY: label})
        else:
            result.issues.append(ParseIssue("bad_field", f"needs a non-empty text and a label, "
                                                         f"both strings: {line[:80]!r}"))
    return out


def _place_mention(obj, sentence, labels, result: ParsedAnswer, taken, cursor) -> None:
    if not isinstance(obj, dict):
        result.issues.append(ParseIssue("bad_field", f"expected an object, got {obj!r:.60}"))
        return
    text, label = obj.get(TEXT_KEY), obj.get(LABEL_KEY)
    if not isinstance(text, str) or not text or not isinstance(label, str):
        result.issues.append(
            ParseIssue("bad_field", f"needs string {TEXT_KEY!r} and {LABEL_KEY!r}: {obj!r:.80}")
        )
        return
    if labels is not None and label not in labels:
        result.issues.append(ParseIssue("unknown_label", label))
        return
    # Answers list entities in sentence order, so look after the previous mention first; an
    # answer out of order still finds its text from the start.
    start = _free_occurrence(sentence, text, max(cursor.get(text, 0), cursor.get("", 0)), taken)
    if start < 0:
        start = _free_occurrence(sentence, text, cursor.get(text, 0), taken)
    if start < 0:
        kind = "extra_mention" if text in sentence else "not_in_text"
        result.issues.append(ParseIssue(kind, text))
        return
    end = start + len(text)
    taken.append((start, end))
    cursor[text] = end
    cursor[""] = start  # "" is never an entity text: it holds the previous mention's start
    result.spans.append(Span(start, end, label, text))


def _free_occurrence(sentence: str, text: str, begin: int, taken) -> int:
    start = sentence.find(text, begin)
    while start >= 0 and any(start < e and s < start + len(text) for s, e in taken):
        start = sentence.find(text, start + 1)
    return start
