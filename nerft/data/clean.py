"""Row-level cleaning: check spans against the text, map labels, resolve overlaps.

Policy (documented for users in README):
- empty or whitespace-only text: row dropped;
- a span out of range or whose text disagrees with the sentence: row dropped (keeping the row
  without that entity would teach the model that the mention is not an entity);
- a label whose name cannot go into the instruction (empty, a line break, a chat-template
  token): row dropped, naming the label;
- a label the user's map drops on purpose (`NOM=-`): the entity is removed, the row is kept
  (repaired): the user has said such mentions are not entities of the task;
- the same span listed twice: the copy is removed (row repaired);
- overlapping (nested or crossing) spans: the longer span is kept, ties go to the earlier one
  (row repaired); the answer format cannot express nesting.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nerft.data.example import Example, Rejection, Span
from nerft.data.labels import LabelMapper, label_problem


@dataclass
class Cleaned:
    example: Example | None  # None when the row is dropped
    notes: list[Rejection]
    kept: Counter = field(default_factory=Counter)  # (corpus label, format) -> entities kept
    dropped: Counter = field(default_factory=Counter)  # ... -> entities removed by the map


def clean_example(ex: Example, fmt: str, mapper: LabelMapper) -> Cleaned:
    """Check one example's spans, map its labels and resolve overlaps."""
    file, _, line = ex.origin.rpartition(":")
    lineno = int(line) if line.isdigit() else 0

    def reject(reason: str, detail: str, action: str = "dropped") -> Rejection:
        return Rejection(file, lineno, reason, detail, action=action)

    if not ex.text.strip():
        return Cleaned(None, [reject("empty_text", "field 'text' is empty")])
    spans: list[Span] = []
    code_of: dict[tuple[int, int, str], str] = {}
    removed: list[str] = []
    dropped: Counter = Counter()
    for i, s in enumerate(ex.entities):
        if not (0 <= s.start < s.end <= len(ex.text)):
            return Cleaned(None, [reject("span_out_of_range",
                                         f"entity {i} [{s.start}, {s.end}) outside text of length {len(ex.text)}")])
        actual = ex.text[s.start:s.end]
        if actual != s.text:
            return Cleaned(None, [reject("span_text_mismatch",
                                         f"entity {i} [{s.start}, {s.end}) says {s.text!r} but the text has {actual!r}")])
        use = mapper.resolve(s.label, fmt)
        if use.name is None:
            dropped[(s.label, fmt)] += 1
            removed.append(f"{s.label} {s.text!r} [{s.start}, {s.end})")
            continue
        problem = label_problem(use.name)
        if problem:
            named = repr(s.label) + ("" if use.name == s.label else f" (named {use.name!r})")
            return Cleaned(None, [reject("invalid_label",
                                         f"entity {i} label {named} {problem}; labels become part "
                                         "of the instruction; rename it with --label-map")])
        mapped = Span(s.start, s.end, use.name, s.text)
        code_of.setdefault((mapped.start, mapped.end, mapped.label), s.label)
        spans.append(mapped)

    spans, notes = resolve_overlaps(spans)
    repairs = [reject(reason, detail, action="repaired") for reason, detail in notes]
    if removed:
        repairs.append(reject("label_dropped", "removed by the label map: " + ", ".join(removed),
                              action="repaired"))
    kept = Counter((code_of[(s.start, s.end, s.label)], fmt) for s in spans)
    return Cleaned(Example(ex.id, ex.text, spans, ex.origin), repairs, kept, dropped)


def resolve_overlaps(spans: list[Span]) -> tuple[list[Span], list[tuple[str, str]]]:
    """Keep a non-overlapping subset: longest first, earlier first on ties."""
    notes: list[tuple[str, str]] = []
    unique: list[Span] = []
    seen: set[tuple[int, int, str]] = set()
    for s in spans:
        key = (s.start, s.end, s.label)
        if key in seen:
            notes.append(("duplicate_entity", f"entity {s.text!r} [{s.start}, {s.end}) listed twice"))
            continue
        seen.add(key)
        unique.append(s)
    kept: list[Span] = []
    for s in sorted(unique, key=lambda s: (-(s.end - s.start), s.start)):
        clash = next((k for k in kept if s.start < k.end and k.start < s.end), None)
        if clash is None:
            kept.append(s)
        else:
            notes.append(("overlap", f"dropped {s.label} {s.text!r} [{s.start}, {s.end}) overlapping "
                                     f"{clash.label} {clash.text!r} [{clash.start}, {clash.end})"))
    kept.sort()
    return kept, notes
