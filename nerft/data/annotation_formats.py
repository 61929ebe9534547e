"""Annotation tools in and out: Label Studio tasks and doccano JSONL, as pure functions.

`nerft select` and `nerft predict` write the model's spans in these shapes so an annotation
team corrects guesses instead of typing; `nerft data prepare` reads the tools' exports back
(readers.py, formats `label-studio` and `doccano`). Nothing here touches a model or a file.

Offsets. nerft's spans index Python strings: code points. The two tools differ:
- Label Studio's Text tag stores code points too: its editor converts the browser's offsets
  (its own test "NER - Emoji - Text": `test` in "🐱 Warning: This is a test text" is
  [21, 25), not the browser's [22, 26)). Offsets pass through unchanged.
- doccano (its v-annotator editor) stores the browser's string offsets, UTF-16 code units: a
  character outside the Basic Multilingual Plane (an emoji, a CJK Extension B character such
  as 𠮷) counts two (doccano issue 2290). They are converted both ways here. doccano's project
  option "Count grapheme clusters as one character" stores yet another unit that nerft does
  not read: leave it off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from nerft.atomic import write_json, write_lines, write_text
from nerft.data.example import Span

# The names the label config gives its two tags; tasks and the config must agree on them.
LS_TEXT_NAME = "text"  # <Text name="text" value="$text">: the task's data key as well
LS_LABELS_NAME = "label"  # <Labels name="label" toName="text">


@dataclass
class PreAnnotated:
    """One sentence with the model's guesses, ready for an annotation tool."""

    id: str
    text: str
    entities: list[Span]
    score: float | None = None  # Label Studio's prediction score (see infer/select.py); None: none
    meta: dict = field(default_factory=dict)  # shown to annotators beside the text (rank, ...)


# --- offsets ------------------------------------------------------------------------------

def _astral(ch: str) -> bool:
    return ord(ch) > 0xFFFF  # two UTF-16 code units (a surrogate pair)


def utf16_offset(text: str, index: int) -> int:
    """The UTF-16 code-unit offset of code-point offset `index` in `text`."""
    return index + sum(1 for ch in text[:index] if _astral(ch))


def codepoint_offset(text: str, units: int) -> int | None:
    """The code-point offset of UTF-16 offset `units` in `text`; None when it falls between the
    two halves of one character. An offset past the end stays past the end (the span check
    in clean.py reports it)."""
    if units <= 0 or not any(_astral(ch) for ch in text):
        return units
    seen = 0
    for index, ch in enumerate(text):
        if seen == units:
            return index
        seen += 2 if _astral(ch) else 1
        if seen > units:
            return None
    return len(text) + (units - seen)


# --- Label Studio -------------------------------------------------------------------------

def label_studio_config(labels) -> str:
    """The labeling config (Settings → Labeling Interface → Code) for these labels."""
    items = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in labels)
    return (f"<View>\n  <Labels name=\"{LS_LABELS_NAME}\" toName=\"{LS_TEXT_NAME}\">\n{items}"
            f"  </Labels>\n  <Text name=\"{LS_TEXT_NAME}\" value=\"${LS_TEXT_NAME}\"/>\n</View>\n")


def label_studio_region(span: Span, region_id: str) -> dict:
    """One `labels` result: offsets in code points, as Label Studio's Text tag stores them."""
    return {"id": region_id, "from_name": LS_LABELS_NAME, "to_name": LS_TEXT_NAME,
            "type": "labels",
            "value": {"start": span.start, "end": span.end, "text": span.text,
                      "labels": [span.label]}}


def label_studio_tasks(rows: list[PreAnnotated], model_version: str) -> list[dict]:
    """Tasks to import, each with the model's spans as one prediction (a pre-annotation).

    Region ids are unique in the file (`<task>-<entity>`), as Label Studio asks of imports."""
    tasks = []
    for n, row in enumerate(rows, 1):
        prediction: dict = {"model_version": model_version,
                            "result": [label_studio_region(s, f"{n}-{k}")
                                       for k, s in enumerate(row.entities, 1)]}
        if row.score is not None:
            prediction["score"] = row.score
        tasks.append({"data": {LS_TEXT_NAME: row.text, "nerft_id": row.id, **row.meta},
                      "predictions": [prediction]})
    return tasks


# --- doccano ------------------------------------------------------------------------------

def doccano_rows(rows: list[PreAnnotated]) -> list[dict]:
    """Lines of doccano's sequence-labeling JSONL import (`{"text", "label": [[start, end,
    label], ...]}`), offsets in UTF-16 code units; other keys become the example's metadata."""
    return [{"text": row.text,
             "label": [[utf16_offset(row.text, s.start), utf16_offset(row.text, s.end), s.label]
                       for s in row.entities],
             "nerft_id": row.id, **row.meta}
            for row in rows]


def doccano_label_types(labels) -> list[dict]:
    """The file for doccano's Labels → Actions → Import Labels (colours left to doccano)."""
    return [{"text": name} for name in labels]


# --- what goes beside the tasks -------------------------------------------------------------

TOOL_FORMATS = ("label-studio", "doccano")


def config_path(out: Path, tool: str) -> Path:
    """Where the label config for `tool` goes, beside the tasks file `out`."""
    out = Path(out)
    suffix = ".label-config.xml" if tool == "label-studio" else ".labels.json"
    return out.with_name(out.stem + suffix)



def model_version(model_ref: str) -> str:
    """What Label Studio shows as the predictions' model: a run folder's name, else the ref
    as given (a hub id, `demo`)."""
    path = Path(model_ref)
    return path.resolve().name if path.is_dir() else model_ref


def write_for_tool(out: Path, rows: list[PreAnnotated], tool: str, labels, version: str) -> Path:
    """Write the tasks for `tool` to `out` and its label config beside; return the config's path.

    Label Studio gets a JSON list with one task per line (its importer reads the list; a
    reader finds a task by line), `version` as the predictions' model_version; doccano gets
    JSON lines."""
    out = Path(out)
    config = config_path(out, tool)
    if tool == "label-studio":
        tasks = [json.dumps(t, ensure_ascii=False) for t in label_studio_tasks(rows, version)]
        last = len(tasks) - 1
        write_lines(out, ["[", *(t + ("," if i < last else "") for i, t in enumerate(tasks)), "]"])
        write_text(config, label_studio_config(labels))
    elif tool == "doccano":
        write_lines(out, (json.dumps(r, ensure_ascii=False) for r in doccano_rows(rows)))
        write_json(config, doccano_label_types(labels))
    else:
        raise ValueError(f"unknown annotation tool {tool!r}")  # the CLI offers TOOL_FORMATS only
    return config
