"""The canonical record every stage after the readers works with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from nerft.atomic import write_lines


@dataclass(frozen=True, order=True)
class Span:
    """One entity mention: `text[start:end]` (end exclusive) labelled `label`."""

    start: int
    end: int
    label: str
    text: str

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "label": self.label, "text": self.text}


@dataclass
class Example:
    """A sentence with its entities, remembering where it came from (`file:line`)."""

    id: str
    text: str
    entities: list[Span] = field(default_factory=list)
    origin: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "entities": [e.to_dict() for e in self.entities]}


@dataclass
class Rejection:
    """A row that was dropped or repaired, with the place and the reason a user can act on."""

    file: str
    line: int
    reason: str
    detail: str
    action: str = "dropped"  # or "repaired"
    raw: str | None = None

    def to_dict(self) -> dict:
        d = {"file": self.file, "line": self.line, "reason": self.reason, "detail": self.detail,
             "action": self.action}
        if self.raw is not None:
            d["raw"] = self.raw
        return d

    def one_line(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {self.detail}"


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Replace `path` with one JSON object per line, so a crash never leaves half a file."""
    return write_lines(Path(path), (json.dumps(row, ensure_ascii=False) for row in rows))


def read_examples(path: Path) -> Iterator[Example]:
    """Read a canonical JSONL split written by `nerft data prepare` (trusted: no cleaning)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            yield Example(
                id=str(row["id"]),
                text=row["text"],
                entities=[Span(e["start"], e["end"], e["label"], e["text"]) for e in row["entities"]],
                origin=f"{path}:{lineno}",
            )
