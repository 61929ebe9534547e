"""Opt-in request log and corrections (`POST /v1/feedback`) for `nerft serve`.

Both files are JSON Lines appended one whole line at a time under a lock, so concurrent
requests never interleave. Each has a size cap: once the next line would pass it, logging
stops for good (one warning in the server log, `logging_full` in /health) and requests go on
being answered. Feedback rows are canonical nerft JSONL (`text` + `entities` with code-point
`start`/`end`/`label`/`text`) plus `request_id`, `model` and `time`, so `nerft data prepare`
reads the file as it is; their `id` starts with `feedback-`, which tells prepare that a later
correction of the same text replaces an earlier one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

log = logging.getLogger("uvicorn.error")

FEEDBACK_ID_PREFIX = "feedback-"
RECENT_ANSWERS = 10_000  # request ids remembered for feedback by request_id


class JsonlLog:
    """Append-only JSONL file with a byte cap; `append` returns False once the cap is reached."""

    def __init__(self, path: Path, max_bytes: int, what: str):
        self.path, self.max_bytes, self.what = Path(path), max_bytes, what
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with open(self.path, "ab") as f:  # fail at start-up, not on the first request
            self._size = f.tell()
        self.full = False

    def append(self, row: dict) -> bool:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self.full:
                return False
            if self._size + len(line) > self.max_bytes:
                self.full = True
                log.warning("%s %s reached its cap of %d bytes; %s logging stopped (restart with a "
                            "larger --log-max-mb or a new file to resume)", self.what, self.path,
                            self.max_bytes, self.what)
                return False
            with open(self.path, "ab") as f:
                f.write(line)
            self._size += len(line)
            return True


class FeedbackEntity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    label: StrictStr
    start: StrictInt | None = None
    end: StrictInt | None = None


class FeedbackRequest(BaseModel):
    """The corrected entities of one sentence, named by `request_id` (+ `index`) or `text`."""

    model_config = ConfigDict(extra="forbid")
    request_id: StrictStr | None = None
    index: StrictInt = 0
    text: StrictStr | None = None
    entities: list[FeedbackEntity]


def _invalid(field: str, message: str) -> HTTPException:
    return HTTPException(422, f"{field}: {message}")


class Feedback:
    """Request log, corrections log, and the recent answers that feedback can refer to."""

    def __init__(self, model_name: str, labels: tuple[str, ...], requests_path: Path | None,
                 feedback_path: Path | None, max_bytes: int):
        self.model_name, self.labels = model_name, tuple(labels)
        self.requests = JsonlLog(requests_path, max_bytes, "request log") if requests_path else None
        self.feedback = JsonlLog(feedback_path, max_bytes, "feedback log") if feedback_path else None
        self._recent: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def status(self) -> dict:
        def one(j: JsonlLog | None):
            return None if j is None else {"file": str(j.path), "bytes": j._size, "full": j.full}

        return {"requests": one(self.requests), "feedback": one(self.feedback)}

    def record_answer(self, texts: list[str], results: list[dict], route: str) -> str:
        """A new request id; the answer is logged when the request log is on."""
        request_id = uuid.uuid4().hex
        if self.feedback is not None:
            with self._lock:
                self._recent[request_id] = list(texts)
                while len(self._recent) > RECENT_ANSWERS:
                    self._recent.popitem(last=False)
        if self.requests is not None:
            self.requests.append({"request_id": request_id, "time": _now(), "model": self.model_name,
                                  "route": route, "results": results})
        return request_id

    def correct(self, body: FeedbackRequest) -> dict:
        """Validate a correction, append it as a canonical row; 4xx naming the field when wrong."""
        if self.feedback is None:
            raise HTTPException(503, "feedback is off: start the service with --feedback FILE.jsonl")
        text = self._sentence(body)
        entities, taken = [], set()
        for i, ent in enumerate(body.entities):
            where = f"entities[{i}]"
            if ent.label not in self.labels:
                raise _invalid(f"{where}.label", f"{ent.label!r} is not one of the model's labels "
                                                 f"({', '.join(self.labels)})")
            if not ent.text:
                raise _invalid(f"{where}.text", "empty")
            start, end = ent.start, ent.end
            if (start is None) != (end is None):
                raise _invalid(where, "give both start and end, or neither")
            if start is None:
                start = _free_occurrence(text, ent.text, taken)
                if start is None:
                    raise _invalid(f"{where}.text", f"{ent.text!r} is not in the text")
                end = start + len(ent.text)
            elif not 0 <= start < end <= len(text):
                raise _invalid(f"{where}.start", f"[{start}, {end}) is outside the text "
                                                 f"({len(text)} characters)")
            elif text[start:end] != ent.text:
                raise _invalid(f"{where}.text", f"text[{start}:{end}] is {text[start:end]!r}, "
                                                f"not {ent.text!r}")
            if any(start < e and s < end for s, e in taken):
                raise _invalid(where, f"[{start}, {end}) overlaps another entity")
            taken.add((start, end))
            entities.append({"start": start, "end": end, "label": ent.label, "text": ent.text})
        entities.sort(key=lambda e: (e["start"], e["end"]))
        row = {"id": FEEDBACK_ID_PREFIX + uuid.uuid4().hex, "text": text, "entities": entities,
               "request_id": body.request_id, "model": self.model_name, "time": _now()}
        if not self.feedback.append(row):
            raise HTTPException(507, f"the feedback log {self.feedback.path} is full "
                                     f"({self.feedback.max_bytes} bytes); correction not stored")
        return {"stored": True, "id": row["id"], "entities": entities}

    def _sentence(self, body: FeedbackRequest) -> str:
        if body.request_id is None:
            if body.text is None:
                raise _invalid("request_id", "give request_id (from a /v1/ner answer) or text")
            if not body.text:
                raise _invalid("text", "empty")
            return body.text
        with self._lock:
            texts = self._recent.get(body.request_id)
        if texts is None:
            raise HTTPException(404, f"request_id: {body.request_id!r} is unknown (the service "
                                     f"remembers the last {RECENT_ANSWERS:,} answers since it "
                                     "started); send the text instead")
        if not 0 <= body.index < len(texts):
            raise _invalid("index", f"{body.index} is out of range; that request had "
                                    f"{len(texts)} sentence(s)")
        if body.text is not None and body.text != texts[body.index]:
            raise _invalid("text", "differs from the sentence of that request_id")
        return texts[body.index]


def _free_occurrence(text: str, needle: str, taken: set) -> int | None:
    """First place `needle` occurs in `text` without overlapping spans already taken."""
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        if not any(start < e and s < end for s, e in taken):
            return start
        start = text.find(needle, start + 1)
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
