"""The NER task as the model sees it: instruction, answer format, and the parser back to spans.

This is the one place that knows the answer formats. The default, "json", follows the worked
example (LoRA instruction tuning of Qwen2 on ccfbdci): one JSON object per entity, one per line,
in sentence order, and a fixed phrase when there is no entity. "compact" writes one
`"text": "label"` pair per line (JSON strings, so the same escaping and the same constrained
decoder apply): about half the answer tokens to train on and to decode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

from nerft.config import ANSWER_FORMATS
from nerft.data.example import Span
from nerft.data.guidelines import Guideline, GuidelineError, guidelines_record, parse_guidelines
from nerft.data.labels import label_set_problem
from nerft.errors import NerftError

NO_ENTITY = "没有找到任何实体"
TEXT_KEY = "entity_text"
LABEL_KEY = "entity_label"


class TaskError(NerftError, ValueError):
    """A label set or answer format no model can be trained or served with."""


@dataclass(frozen=True)
class AnswerPieces:
    """The fixed text of an answer in one format, cut out of what `format_answer` writes:

        answer = no_entity | line (sep line)*      line = open TEXT mid LABEL close

    TEXT and LABEL are JSON string bodies (`escape_string`). The constrained decoder and the
    GBNF grammar are built from these pieces, so they accept exactly what training wrote."""

    no_entity: str
    open: str  # before the entity text
    mid: str  # from the quote closing the text to the label
    close: str  # after the label
    sep: str  # between two lines


# Private-use placeholders: json.dumps writes them verbatim, and no format writes them itself.
_TEXT, _LABEL = "\ue000T", "\ue001L"

# The `kind` of lines each format writes, as task.json's `answer` field names it.
_FORMAT_KINDS = {"json": "json-lines", "compact": "compact-lines"}


@dataclass(frozen=True)
class Task:
    """The label set (names the model sees) and the answer format: the instruction, the answer
    text, its parser, the repeated-line stop rule and the pieces its grammars are built from.

    Constructing one validates it (`nerft.data.labels.label_set_problem`, the rule data
    prepare applies too) and raises `TaskError` with one line saying what is wrong.

    `guidelines` ({label: Guideline}, or its (label, Guideline) pairs) are written into the
    instruction after the answer format, one line per label, in label order; a task without
    any has the instruction (and the record) it had before guidelines existed."""

    labels: tuple[str, ...]
    answer_format: str = "json"
    guidelines: tuple[tuple[str, Guideline], ...] = ()

    def __post_init__(self):
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))
        problem = label_set_problem(self.labels)
        if problem:
            raise TaskError(f"{problem}; labels are written into the instruction: rename it "
                            "(`nerft data prepare --label-map CODE=NAME`)")
        check_answer_format(self.answer_format)
        given = dict(self.guidelines)
        stray = [label for label in given if label not in self.labels]
        if stray:
            raise TaskError(f"guideline for label {stray[0]!r}, which is not in the label set "
                            f"({', '.join(self.labels)})")
        object.__setattr__(self, "guidelines",
                           tuple((label, given[label]) for label in self.labels if label in given))

    @property
    def system_prompt(self) -> str:
        if not self.guidelines:
            return self._format_prompt
        return self._format_prompt + "\n" + guideline_lines(self.guidelines)

    @property
    def _format_prompt(self) -> str:
        """The instruction without guidelines: labels, answer format, the no-entity phrase."""
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

    def parse_line(self, line: str) -> tuple[str, str] | None:
        """(text, label) of one answer line in this format, or None when the line is not
        exactly one entity (the label is not checked against the set)."""
        line = line.strip()
        if self.answer_format == "compact":
            pairs = _compact_pairs(line)
            return pairs[0] if pairs is not None and len(pairs) == 1 else None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return None
        return _entity_pair(obj)

    def line_limit(self, line: str, sentence: str) -> int:
        """The stop rule: how often a line may occur in one answer. An entity line as often
        as its text occurs in the sentence (each mention is a place), any other line once."""
        parsed = self.parse_line(line)
        return max(1, _occurrences(sentence, parsed[0])) if parsed else 1

    @cached_property
    def pieces(self) -> AnswerPieces:
        one = format_answer([Span(0, 1, _LABEL, _TEXT)], self.answer_format)
        two = format_answer([Span(0, 1, _LABEL, _TEXT), Span(1, 2, _LABEL, _TEXT)],
                            self.answer_format)
        open_, rest = one.split(_TEXT)
        mid, close = rest.split(_LABEL)
        return AnswerPieces(NO_ENTITY, open_, mid, close, two[len(one):len(two) - len(one)])

    def format_record(self) -> dict:
        """The answer format as task.json's `answer` field describes it to other runtimes (its
        `answer_format` field holds the name, as data.answer_format does)."""
        record = {"kind": _FORMAT_KINDS[self.answer_format],
                  "line": self.format_answer([Span(0, 1, "<one of labels>",
                                                   "<a substring of the sentence>")])}
        if self.answer_format == "json":
            record.update(text_key=TEXT_KEY, label_key=LABEL_KEY)
        record.update(no_entity=NO_ENTITY, separator=self.pieces.sep,
                      order="entities in sentence order; repeated mentions map to successive "
                            "occurrences")
        return record

    def record(self) -> dict:
        """The task as task.json and run.json describe it: labels, answer format (name and
        description) and, when there are any, the guidelines. `task_from_record` reads it back."""
        record = {"labels": list(self.labels)}
        if self.guidelines:
            record["guidelines"] = guidelines_record(dict(self.guidelines))
        record.update(answer_format=self.answer_format, answer=self.format_record())
        return record

    def messages(self, text: str, answer: str | None = None) -> list[dict]:
        """Chat messages for one sentence; with `answer`, the full training conversation."""
        msgs = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user_message(text)},
        ]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs


def guideline_lines(guidelines) -> str:
    """The instruction's guideline block: a heading, then per label
    `label: description; 如 A、B; 不是 C` (the parts it has)."""
    lines = ["标签说明:"]
    for label, g in guidelines:
        parts = [g.description] if g.description else []
        if g.examples:
            parts.append("如 " + "、".join(g.examples))
        if g.not_examples:
            parts.append("不是 " + "、".join(g.not_examples))
        lines.append(f"{label}: " + "; ".join(parts))
    return "\n".join(lines)


def user_message(text: str) -> str:
    return f"文本:{text}"


def answer_format_of_record(value) -> str | None:
    """The format name a task.json `answer_format` field holds, or None when it names none
    nerft knows. Files from before compact existed hold a description there (`kind`)."""
    if isinstance(value, dict):
        value = next((n for n, kind in _FORMAT_KINDS.items() if kind == value.get("kind")), None)
    return value if isinstance(value, str) and value in ANSWER_FORMATS else None


def task_from_record(record, where) -> Task:
    """The Task a task.json record describes (its `labels` and `answer_format` fields, and
    the `answer` description and `guidelines` when present); a record no model can be
    prompted with is a TaskError naming `where` and the field."""
    labels = record.get("labels") if isinstance(record, dict) else None
    problem = label_set_problem(labels)
    if problem:
        raise TaskError(f"{where}: field labels: {problem}; export the model again with labels "
                        "nerft accepts")
    answer_format = answer_format_of_record(record.get("answer_format"))
    if answer_format is None:
        raise TaskError(f"{where}: field answer_format does not name an answer format this nerft "
                        f"knows ({', '.join(ANSWER_FORMATS)})")
    task = Task(tuple(labels), answer_format, guidelines_of_record(record, where, labels))
    described = record.get("answer")
    if described is not None and described != task.format_record():
        raise TaskError(f"{where}: field answer does not describe the {answer_format} answer "
                        "format this nerft writes; export the model again with this nerft")
    return task


def guidelines_of_record(record: dict, where, labels) -> dict[str, Guideline]:
    """The `guidelines` field of a task record ({} when absent: records from before guidelines
    existed); a bad one is a TaskError naming `where` and the field."""
    found = record.get("guidelines")
    if found is None:
        return {}
    try:
        return parse_guidelines(found, f"{where}: field guidelines", tuple(labels))
    except GuidelineError as e:
        raise TaskError(str(e)) from None


def check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise TaskError(f"answer format {answer_format!r}: choose from {', '.join(ANSWER_FORMATS)}")


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


def escape_string(text: str) -> str:
    """How both formats write `text` inside a string: json.dumps(ensure_ascii=False)'s body."""
    return _json_string(text)[1:-1]


def _occurrences(sentence: str, text: str) -> int:
    """Occurrences of `text` in `sentence`, overlapping ones included (an upper bound on the
    mentions an answer may list)."""
    count, start = 0, sentence.find(text)
    while start >= 0:
        count += 1
        start = sentence.find(text, start + 1)
    return count


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


def _compact_pairs(line: str) -> list[tuple] | None:
    """The (text, label) pairs of one compact line as written, or None when it is not
    `"text": "label"` pairs at all."""
    try:
        return json.loads("{" + line + "}", object_pairs_hook=list)
    except json.JSONDecodeError:
        return None


def _compact_line(line: str, result: ParsedAnswer) -> list[dict]:
    """The mentions of one compact line (`"text": "label"`), as json-format objects."""
    if not line:
        return []
    if line == NO_ENTITY:
        result.issues.append(ParseIssue("malformed", "no-entity phrase mixed with entities"))
        return []
    pairs = _compact_pairs(line)
    if pairs is None:
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


def _entity_pair(obj) -> tuple[str, str] | None:
    """(text, label) of a json-format entity object, or None when its fields are wrong."""
    if not isinstance(obj, dict):
        return None
    text, label = obj.get(TEXT_KEY), obj.get(LABEL_KEY)
    if not isinstance(text, str) or not text or not isinstance(label, str):
        return None
    return text, label


def _place_mention(obj, sentence, labels, result: ParsedAnswer, taken, cursor) -> None:
    if not isinstance(obj, dict):
        result.issues.append(ParseIssue("bad_field", f"expected an object, got {obj!r:.60}"))
        return
    pair = _entity_pair(obj)
    if pair is None:
        result.issues.append(
            ParseIssue("bad_field", f"needs string {TEXT_KEY!r} and {LABEL_KEY!r}: {obj!r:.80}")
        )
        return
    text, label = pair
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
