"""Readers: one per corpus format, each turning a file into Examples with corpus labels.

Readers only parse. They report what cannot be parsed (bad JSON, bad UTF-8, missing fields,
unknown tags) as Rejections naming file:line and field, and leave span checks against the text
to `clean.py`, so every format gets the same checks. Lines come from `lines.py` (decompression,
one decode per line); the tag-per-line CoNLL reader lives in `conll.py`; Label Studio's and
doccano's own rules (offsets, which annotation counts) in `annotation_formats.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator, Union

from nerft.data.annotation_formats import LS_TEXT_NAME, codepoint_offset
from nerft.data.conll import read_conll, split_tag_line
from nerft.data.example import Example, Rejection, Span
from nerft.data.lines import DataError, TaggedLine, example_id, iter_lines, open_bytes, read_bytes

FORMATS = ("ccfbdci", "cluener", "conll", "canonical", "label-studio", "doccano")

Row = Union[Example, Rejection]


def detect_format(path: Path) -> str:
    """Guess the format from the first non-blank lines (the content, never the file name)."""
    if _starts_json_list(path):
        return _detect_json_list(path)
    for tl in _first_lines(path, 20):
        line = tl.text.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue
            if isinstance(row.get("label"), list) or "relations" in row:
                return "doccano"  # CLUENER's "label" maps labels to mentions
            if "label" in row:
                return "cluener"
            ents = row.get("entities")
            if isinstance(ents, list):
                first = ents[0] if ents else {}
                if isinstance(first, dict) and "start_offset" in first:
                    return "doccano"
                if "start_idx" in first or "entity_label" in first:
                    return "ccfbdci"
                if "start" in first or "id" in row:
                    return "canonical"
            if set(row) <= {"id", "text"}:
                raise DataError(
                    f"{path}: rows have a text but no annotations (an unlabeled test set?); "
                    "pass annotated files only"
                )
            continue
        if split_tag_line(line) is not None:
            return "conll"
    raise DataError(
        f"{path}: cannot tell the format from its first lines; pass --format "
        f"({', '.join(FORMATS)})"
    )


def _first_lines(path: Path, n: int) -> Iterator[TaggedLine]:
    for i, tl in enumerate(iter_lines(path)):
        if i >= n:
            return
        if tl.text is not None:
            yield tl


def _starts_json_list(path: Path) -> bool:
    """Whether the file's first non-blank character opens a JSON list (a whole-file export)."""
    return read_bytes(path, 4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _detect_json_list(path: Path) -> str:
    tasks = load_json_list(path)
    first = next((t for t in tasks if isinstance(t, dict)), None)
    if first is None or isinstance(first.get("data"), dict):
        return "label-studio"
    raise DataError(f"{path}: a JSON list, but not a Label Studio JSON export (tasks with "
                    "\"data\" and \"annotations\"); export the project as JSON, not JSON-MIN")


def load_json_list(path: Path) -> list:
    """A whole-file JSON list (a Label Studio export); unreadable JSON is fatal, with its line."""
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 at byte {e.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of tasks, got {type(data).__name__}")
    return data


def read_file(path: Path, fmt: str | None = None) -> tuple[str, Iterator[Row]]:
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        hint = f" (it holds {', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''})" if inside else ""
        raise DataError(f"{path}: is a folder; pass the corpus files inside it{hint}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        open_bytes(path).close()  # an archive is refused before any work
    except OSError as e:  # e.g. no permission to read it
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise DataError(f"{path}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt, READERS[fmt](path)


# --- JSON-lines formats -----------------------------------------------------------------------

def _json_rows(path: Path, parse: Callable[[dict, str, int], Row]) -> Iterator[Row]:
    name = str(path)
    for tl in iter_lines(path):
        if tl.text is None:
            yield Rejection(name, tl.lineno, "invalid_utf8", tl.error)
            continue
        if not tl.text.strip():
            continue
        try:
            row = json.loads(tl.text)
        except json.JSONDecodeError as e:
            yield Rejection(name, tl.lineno, "malformed_json", e.msg + f" (column {e.colno})",
                            raw=tl.text[:200])
            continue
        if not isinstance(row, dict):
            yield Rejection(name, tl.lineno, "malformed_json", "line is not a JSON object",
                            raw=tl.text[:200])
            continue
        try:
            yield parse(row, name, tl.lineno)
        except _FieldError as e:
            yield Rejection(name, tl.lineno, e.reason, str(e), raw=tl.text[:200])


class _FieldError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _field(obj: dict, key: str, kind: type | tuple, where: str = ""):
    if key not in obj:
        raise _FieldError("missing_field", f"missing field {where}{key!r}")
    value = obj[key]
    # bool is an int in Python; an offset of `true` is still a type error for a user.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _FieldError("bad_type", f"field {where}{key!r} should be {want}, got {value!r:.40}")
    return value


def _parse_ccfbdci(row: dict, file: str, lineno: int) -> Example:
    text = _field(row, "text", str)
    spans = []
    for i, ent in enumerate(_field(row, "entities", list)):
        where = f"entities[{i}]."
        if not isinstance(ent, dict):
            raise _FieldError("bad_type", f"entities[{i}] should be an object")
        spans.append(Span(_field(ent, "start_idx", int, where), _field(ent, "end_idx", int, where),
                          _field(ent, "entity_label", str, where),
                          _field(ent, "entity_text", str, where)))
    return Example(example_id(file, lineno), text, spans, f"{file}:{lineno}")


def _parse_cluener(row: dict, file: str, lineno: int) -> Example:
    text = _field(row, "text", str)
    spans = []
    for label, mentions in _field(row, "label", dict).items():
        if not isinstance(mentions, dict):
            raise _FieldError("bad_type", f"label.{label} should map entity text to offsets")
        for mention, offsets in mentions.items():
            if not isinstance(offsets, list):
                raise _FieldError("bad_type", f"label.{label}.{mention} should be a list")
            for pair in offsets:
                if (not isinstance(pair, list) or len(pair) != 2
                        or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
                    raise _FieldError("bad_type",
                                      f"label.{label}.{mention}: offsets {pair!r} are not [start, end]")
                # CLUENER ends are inclusive; ours are exclusive.
                spans.append(Span(pair[0], pair[1] + 1, label, mention))
    spans.sort()
    return Example(example_id(file, lineno), text, spans, f"{file}:{lineno}")


def _parse_canonical(row: dict, file: str, lineno: int) -> Example:
    text = _field(row, "text", str)
    spans = []
    for i, ent in enumerate(_field(row, "entities", list)):
        where = f"entities[{i}]."
        if not isinstance(ent, dict):
            raise _FieldError("bad_type", f"entities[{i}] should be an object")
        start, end = _field(ent, "start", int, where), _field(ent, "end", int, where)
        label = _field(ent, "label", str, where)
        claimed = ent.get("text", text[start:end] if 0 <= start < end <= len(text) else "")
        if not isinstance(claimed, str):
            raise _FieldError("bad_type", f"field {where}'text' should be str")
        spans.append(Span(start, end, label, claimed))
    ex_id = row.get("id", example_id(file, lineno))
    return Example(str(ex_id), text, spans, f"{file}:{lineno}")


# --- annotation tools: doccano JSONL, Label Studio JSON export ---------------------------------

def _parse_doccano(row: dict, file: str, lineno: int) -> Example:
    """doccano's sequence-labeling export: `"label": [[start, end, label], ...]`, or with
    relations on, `"entities": [{"start_offset", "end_offset", "label"}, ...]`. Offsets are
    UTF-16 code units (annotation_formats.py) and become code points here. doccano's "id" is
    its database's, so rows get `file:line` ids like the other formats."""
    text = _field(row, "text", str)
    key = "label" if "label" in row or "entities" not in row else "entities"
    spans = []
    for i, item in enumerate(_field(row, key, list)):
        where = f"{key}[{i}]."
        if key == "label":
            if not isinstance(item, list) or len(item) != 3:
                raise _FieldError("bad_type", f"{key}[{i}] should be [start, end, label], got "
                                              f"{item!r:.40} (a text-classification export?)")
            item = dict(zip(("start_offset", "end_offset", "label"), item))
        elif not isinstance(item, dict):
            raise _FieldError("bad_type", f"{key}[{i}] should be an object")
        bounds = []
        for name in ("start_offset", "end_offset"):
            units = _field(item, name, int, where)
            offset = codepoint_offset(text, units)
            if offset is None:
                raise _FieldError("span_splits_character",
                                  f"field {where}{name!r} = {units} falls inside a character "
                                  "that takes two UTF-16 units (was the doccano project counting "
                                  "grapheme clusters?)")
            bounds.append(offset)
        start, end = bounds
        spans.append(Span(start, end, _field(item, "label", str, where),
                          text[start:end] if 0 <= start < end <= len(text) else ""))
    return Example(example_id(file, lineno), text, spans, f"{file}:{lineno}")


# Result types that carry no entity of a `labels` task; any other type is reported as ignored.
_QUIET_RESULTS = {"relation"}


def read_label_studio(path: Path) -> Iterator[Row]:
    """Label Studio's JSON export: a list of tasks, `data.text` and `annotations[].result[]`.

    Per task the latest (by created_at, as Label Studio's converter picks) annotation that was
    not cancelled (skipped) is read; the others are counted in a note. A task nobody annotated,
    or whose every annotation was cancelled, is dropped with its reason. Predictions are the
    model's guesses, never read as labels. `line` in notes is the task's number in the list."""
    name = str(path)
    for number, task in enumerate(load_json_list(path), 1):
        try:
            yield from _label_studio_task(task, name, number)  # notes first, then the row
        except _FieldError as e:
            yield Rejection(name, number, e.reason, f"task {number}: {e}",
                            raw=json.dumps(task, ensure_ascii=False)[:200])


def _label_studio_task(task, file: str, number: int) -> list[Row]:
    if not isinstance(task, dict):
        raise _FieldError("bad_type", "should be an object")
    data = _field(task, "data", dict)
    if LS_TEXT_NAME not in data:
        keys = ", ".join(map(str, list(data)[:5])) or "nothing"
        raise _FieldError("missing_field", f"missing field data.{LS_TEXT_NAME!r} (the label "
                          f"config's <Text value=\"${LS_TEXT_NAME}\">); data has {keys}")
    text = _field(data, LS_TEXT_NAME, str, "data.")
    key = "annotations" if "annotations" in task or "completions" not in task else "completions"
    annotations = task.get(key, [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise _FieldError("bad_type", f"field {key!r} should be a list of objects")
    live = [(i, a) for i, a in enumerate(annotations)
            if not (a.get("was_cancelled") or a.get("skipped"))]
    ident = f"task {number}" + (f" (id {task['id']})" if "id" in task else "")
    if not annotations:
        return [Rejection(file, number, "not_annotated",
                          f"{ident} has no annotation" + (" (predictions are not labels)"
                                                          if task.get("predictions") else ""))]
    if not live:
        return [Rejection(file, number, "annotation_cancelled", f"{ident}: every annotation "
                          f"({len(annotations)}) was cancelled (skipped)")]
    # ISO timestamps sort as text; a missing one sorts first, list order breaks ties.
    index, chosen = max(live, key=lambda ia: (str(ia[1].get("created_at") or ""), ia[0]))
    notes: list[Row] = []  # returned with the row only once the whole task has parsed
    if len(annotations) > 1:
        cancelled = len(annotations) - len(live)
        notes.append(Rejection(
            file, number, "other_annotations",
            f"{ident}: read the latest annotation ({chosen.get('id', index)}), set "
            f"{len(annotations) - 1} other" + (f" ({cancelled} cancelled)" if cancelled else "")
            + " aside",
            action="repaired"))
    spans, ignored = [], set()
    for k, result in enumerate(_field(chosen, "result", list, f"{key}[{index}].")):
        where = f"{key}[{index}].result[{k}]."
        if not isinstance(result, dict):
            raise _FieldError("bad_type", f"{where[:-1]} should be an object")
        kind = result.get("type")
        if kind != "labels":
            if kind not in _QUIET_RESULTS:
                ignored.add(str(kind))
            continue
        value = _field(result, "value", dict, where)
        where += "value."
        start, end = _field(value, "start", int, where), _field(value, "end", int, where)
        labels = _field(value, "labels", list, where)
        if not labels or not all(isinstance(x, str) for x in labels):
            raise _FieldError("bad_type", f"field {where}'labels' should be a non-empty list of "
                                          f"label names, got {labels!r:.40}")
        claimed = value.get("text", text[start:end] if 0 <= start < end <= len(text) else "")
        if not isinstance(claimed, str):
            raise _FieldError("bad_type", f"field {where}'text' should be str")
        spans.extend(Span(start, end, label, claimed) for label in labels)
    if ignored:
        notes.append(Rejection(file, number, "ignored_results",
                               f"{ident}: results of type {', '.join(sorted(ignored))} are not "
                               "entity spans; ignored", action="repaired"))
    spans.sort()
    return [*notes, Example(example_id(file, number), text, spans, f"{file}:{number}")]


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "ccfbdci": lambda p: _json_rows(p, _parse_ccfbdci),
    "cluener": lambda p: _json_rows(p, _parse_cluener),
    "canonical": lambda p: _json_rows(p, _parse_canonical),
    "conll": read_conll,
    "doccano": lambda p: _json_rows(p, _parse_doccano),
    "label-studio": read_label_studio,
}
