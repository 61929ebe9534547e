"""Row-level cleaning: check spans against the text, map labels, resolve overlaps.

Policy (documented for users in README):
- empty or whitespace-only text: row dropped;
- a span out of range or whose text disagrees with the sentence: row dropped (keeping the row
  without that entity would teach the model that the mention is not an entity);
- a label missing from the label map: row dropped, naming the label and how to map it;
- the same span listed twice: the copy is removed (row repaired);
- overlapping (nested or crossing) spans: the longer span is kept, ties go to the earlier one
  (row repaired); the answer format cannot express nesting.
"""

from __future__ import annotations

from nerft.data.example import Example, Rejection, Span


def clean_example(ex: Example, label_map: dict[str, str] | None) -> tuple[Example | None, list[Rejection]]:
    """Return the cleaned example (or None when dropped) and the rejections that explain it."""
    file, _, line = ex.origin.rpartition(":")
    lineno = int(line) if line.isdigit() else 0

    def reject(reason: str, detail: str, action: str = "dropped") -> Rejection:
        return Rejection(file, lineno, reason, detail, action=action)

    if not ex.text.strip():
        return None, [reject("empty_text", "field 'text' is empty")]
    spans: list[Span] = []
    for i, s in enumerate(ex.entities):
        if not (0 <= s.start < s.end <= len(ex.text)):
            return None, [reject("span_out_of_range",
                                 f"entity {i} [{s.start}, {s.end}) outside text of length {len(ex.text)}")]
        actual = ex.text[s.start:s.end]
        if actual != s.text:
            return None, [reject("span_text_mismatch",
                                 f"entity {i} [{s.start}, {s.end}) says {s.text!r} but the text has {actual!r}")]
        if label_map is not None:
            if s.label not in label_map:
                return None, [reject("unknown_label",
                                     f"entity {i} label {s.label!r} is not in the label map; "
                                     f"add it with --label-map {s.label}=NAME")]
            s = Span(s.start, s.end, label_map[s.label], s.text)
        spans.append(s)

    spans, notes = resolve_overlaps(spans)
    repairs = [reject(reason, detail, action="repaired") for reason, detail in notes]
    return Example(ex.id, ex.text, spans, ex.origin), repairs


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
