"""Opt-in request log and corrections (`POST /v1/feedback`) for `nerft serve`.

Both files are JSON Lines appended one whole line at a time under a lock, so concurrent
requests never interleave. Each has a size cap: once the next line would pass it, logging
stops for good (one warning in the server log, `logging_full` in /health) and requests go on
being answered. Feedback rows are canonical nerft JSONL (`text` + `entities` with code-point
`start`/`end`/`label`/`text`) plus `request_id`, `model` (the run that answered, or the run
a correction names) and `time`, so `nerft data prepare`
reads the file as it is; their `id` starts with `feedback-`, which tells prepare that a later
correction of the same text replaces an earlier one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from nerft.atomic import append_line
from nerft.data.clean import clean_example
from nerft.data.example import Example, Span
from nerft.data.labels import LabelMapper

log = logging.getLogger("uvicorn.error")

FEEDBACK_ID_PREFIX = "feedback-"
RECENT_ANSWERS = 10_000  # request ids remembered for feedback by request_id
RECENT_BYTES = 64 * 2**20  # ... and at most this much of their sentences (4 bytes a character)
MAX_ENTITIES = 256  # entities in one correction


class JsonlLog:
    """Append-only JSONL file with a byte cap; `append` returns False once the cap is reached.

    Appends go through `nerft.atomic.append_line`, so a line torn by a crash is closed before
    the next row and never swallows it."""

    def __init__(self, path: Path, max_bytes: int, what: str, sync: bool = False):
        self.path, self.max_bytes, self.what, self.sync = Path(path), max_bytes, what, sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with open(self.path, "ab") as f:  # fail at start-up, not on the first request
            self._size = f.tell()
        self.full = False

    def append(self, row: dict) -> bool:
        line = json.dumps(row, ensure_ascii=False)
        with self._lock:
            if self.full:
                return False
            if self._size + len(line.encode("utf-8")) + 2 > self.max_bytes:
                self.full = True
                log.warning("%s %s reached its cap of %d bytes; %s logging stopped (restart with a "
                            "larger --log-max-mb or a new file to resume)", self.what, self.path,
                            self.max_bytes, self.what)
                return False
            append_line(self.path, line, sync=self.sync)
            self._size = self.path.stat().st_size
            return True

    def rows(self):
        """The rows written so far; a torn line (a crash mid-write) is skipped."""
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue


class FeedbackEntity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    label: StrictStr
    start: StrictInt | None = None
    end: StrictInt | None = None


class FeedbackRequest(BaseModel):
    """The corrected entities of one sentence, named by `request_id` (+ `index`) or `text`.

    `replace: true` is needed to correct a sentence that another key already corrected."""

    model_config = ConfigDict(extra="forbid")
    request_id: StrictStr | None = None
    index: StrictInt = 0
    text: StrictStr | None = None
    run: StrictStr | None = None  # which served run the correction is for (default: the first)
    entities: list[FeedbackEntity]
    replace: StrictBool = False


def _invalid(field: str, message: str) -> HTTPException:
    return HTTPException(422, f"{field}: {message}")


def encoding_problem(value: str) -> str | None:
    """Why `value` cannot be written as UTF-8 (a lone surrogate such as "\\ud800"), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"character {e.start} (U+{ord(value[e.start]):04X}) is a lone surrogate, not text; "
                "send valid Unicode")
    return None


def key_fingerprint(key: str | None) -> str | None:
    """Who wrote a row: a short hash of the key used (never the key), None without a key."""
    return None if key is None else "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class _Correction:
    id: str
    by: str | None
    time: str


class Feedback:
    """Request log, corrections log, and the recent answers that feedback can refer to.

    `labels` holds each served run's label set by name, the first the default run."""

    def __init__(self, labels: dict[str, tuple[str, ...]], requests_path: Path | None,
                 feedback_path: Path | None, max_bytes: int, *, max_text_chars: int = 2000,
                 max_entities: int = MAX_ENTITIES, recent_bytes: int = RECENT_BYTES):
        self.labels = {name: tuple(run_labels) for name, run_labels in labels.items()}
        self.default_run = next(iter(self.labels))
        self.max_text_chars, self.max_entities, self.recent_bytes = (max_text_chars, max_entities,
                                                                     recent_bytes)
        self.requests = JsonlLog(requests_path, max_bytes, "request log") if requests_path else None
        self.feedback = (JsonlLog(feedback_path, max_bytes, "feedback log", sync=True)
                         if feedback_path else None)
        self._recent: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()  # id -> (run, texts)
        self._recent_size = 0  # bytes the remembered sentences may take (4 a character)
        self._lock = threading.Lock()
        # The last correction of each sentence (by its hash), so that a correction from another
        # key never replaces it silently; read back from the file on start.
        self._corrected: dict[str, _Correction] = {}
        if self.feedback is not None:
            for row in self.feedback.rows():
                if isinstance(row, dict) and isinstance(row.get("text"), str) and "id" in row:
                    self._corrected[_digest(row["text"])] = _Correction(
                        str(row["id"]), row.get("by"), str(row.get("time", "")))

    def status(self, show_paths: bool) -> dict:
        """What /health says of the logs: absolute paths only to an authorised caller."""
        def one(j: JsonlLog | None):
            return None if j is None else {"file": str(j.path) if show_paths else j.path.name,
                                           "bytes": j._size, "full": j.full}

        return {"requests": one(self.requests), "feedback": one(self.feedback)}

    def record_answer(self, texts: list[str], results: list[dict], route: str,
                      run: str | None = None) -> str:
        """A new request id; the answer (by `run`, default the first) is logged when the request
        log is on."""
        request_id = uuid.uuid4().hex
        run = run or self.default_run
        if self.feedback is not None:
            size = 4 * sum(len(t) for t in texts)
            with self._lock:
                self._recent[request_id] = (run, list(texts))
                self._recent_size += size
                while self._recent and (len(self._recent) > RECENT_ANSWERS
                                        or self._recent_size > self.recent_bytes):
                    _, (_, dropped) = self._recent.popitem(last=False)
                    self._recent_size -= 4 * sum(len(t) for t in dropped)
        if self.requests is not None:
            self.requests.append({"request_id": request_id, "time": _now(), "model": run,
                                  "route": route, "results": results})
        return request_id

    def correct(self, body: FeedbackRequest, by: str | None = None) -> dict:
        """Validate a correction as `nerft data prepare` will, append it as a canonical row with
        who (`by`, a key fingerprint) and when; 4xx naming the field when wrong."""
        if self.feedback is None:
            raise HTTPException(503, "feedback is off: start the service with --feedback FILE.jsonl")
        if len(body.entities) > self.max_entities:
            raise HTTPException(413, f"entities: {len(body.entities)} in one correction; the limit "
                                     f"is {self.max_entities}")
        run, text = self._sentence(body)
        entities = self._place(text, body.entities, self.labels[run])
        cleaned = clean_example(Example("feedback", text, entities, "feedback:0"), "canonical",
                                LabelMapper())
        if cleaned.example is None or cleaned.notes:  # what prepare would drop or repair
            raise _invalid("entities" if cleaned.example else "text", cleaned.notes[0].detail)
        key = _digest(text)
        with self._lock:
            earlier = self._corrected.get(key)
            if earlier is not None and earlier.by != by and not body.replace:
                writer = earlier.by or "a client without a key"
                raise HTTPException(409, f"text: already corrected by {writer} at {earlier.time} "
                                         f"(row {earlier.id}); send \"replace\": true to replace "
                                         "that correction")
            row = {"id": FEEDBACK_ID_PREFIX + uuid.uuid4().hex, "text": text,
                   "entities": [e.to_dict() for e in entities], "request_id": body.request_id,
                   "model": run, "time": _now(), "by": by,
                   "replaces": earlier.id if earlier else None}
            if not self.feedback.append(row):
                raise HTTPException(507, f"the feedback log {self.feedback.path.name} is full "
                                         f"({self.feedback.max_bytes} bytes); correction not stored")
            self._corrected[key] = _Correction(row["id"], by, row["time"])
        return {"stored": True, "id": row["id"], "entities": row["entities"], "by": by,
                "replaces": row["replaces"]}

    def _place(self, text: str, given: list[FeedbackEntity], labels: tuple[str, ...]) -> list[Span]:
        """Spans of the corrected entities; one without offsets takes the first occurrence of
        its text that no earlier entity holds. Linear in the text (plus log n a span)."""
        taken = _DisjointSpans()
        searched_from: dict[str, int] = {}
        spans = []
        for i, ent in enumerate(given):
            where = f"entities[{i}]"
            if ent.label not in labels:
                raise _invalid(f"{where}.label", f"{ent.label!r} is not one of the model's labels "
                                                 f"({', '.join(labels)})")
            if not ent.text:
                raise _invalid(f"{where}.text", "empty")
            start, end = ent.start, ent.end
            if (start is None) != (end is None):
                raise _invalid(where, "give both start and end, or neither")
            if start is None:
                start = _free_occurrence(text, ent.text, taken, searched_from)
                if start is None:
                    raise _invalid(f"{where}.text", f"{ent.text!r} is not in the text"
                                   + (" (or every occurrence is taken)" if ent.text in text else ""))
                end = start + len(ent.text)
            elif not 0 <= start < end <= len(text):
                raise _invalid(f"{where}.start", f"[{start}, {end}) is outside the text "
                                                 f"({len(text)} characters)")
            elif text[start:end] != ent.text:
                raise _invalid(f"{where}.text", f"text[{start}:{end}] is {text[start:end]!r}, "
                                                f"not {ent.text!r}")
            if taken.clash(start, end) is not None:
                raise _invalid(where, f"[{start}, {end}) overlaps another entity")
            taken.add(start, end)
            spans.append(Span(start, end, ent.label, ent.text))
        spans.sort()
        return spans

    def _sentence(self, body: FeedbackRequest) -> tuple[str, str]:
        """(run, sentence) a correction is for."""
        if body.run is not None and body.run not in self.labels:
            raise _invalid("run", f"{body.run!r} is not served here; choose one of "
                                  f"{', '.join(self.labels)}")
        run = body.run or self.default_run
        if body.request_id is None:
            if body.text is None:
                raise _invalid("request_id", "give request_id (from a /v1/ner answer) or text")
            text = body.text
        else:
            with self._lock:
                answered_by, texts = self._recent.get(body.request_id, (None, None))
            if texts is None:
                raise HTTPException(404, f"request_id: {body.request_id!r} is unknown (the service "
                                         f"remembers the last {RECENT_ANSWERS:,} answers since it "
                                         "started, fewer when they are long); send the text instead")
            if not 0 <= body.index < len(texts):
                raise _invalid("index", f"{body.index} is out of range; that request had "
                                        f"{len(texts)} sentence(s)")
            if body.text is not None and body.text != texts[body.index]:
                raise _invalid("text", "differs from the sentence of that request_id")
            if body.run is not None and body.run != answered_by:
                raise _invalid("run", f"that request_id was answered by {answered_by!r}, "
                                      f"not {body.run!r}")
            run, text = answered_by, texts[body.index]
        if len(text) > self.max_text_chars:
            raise HTTPException(413, f"text: {len(text)} characters; the limit is "
                                     f"{self.max_text_chars}")
        if not text.strip():
            raise _invalid("text", "empty or only whitespace; `nerft data prepare` drops such rows")
        problem = encoding_problem(text)
        if problem:
            raise _invalid("text", problem)
        return run, text


class _DisjointSpans:
    """Non-overlapping [start, end) spans kept sorted: an overlap check costs log n."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def clash(self, start: int, end: int) -> int | None:
        """The end of a held span that [start, end) overlaps, or None."""
        i = bisect_right(self.starts, start)
        if i and self.ends[i - 1] > start:
            return self.ends[i - 1]
        if i < len(self.starts) and self.starts[i] < end:
            return self.ends[i]
        return None

    def add(self, start: int, end: int) -> None:
        i = bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)


def _free_occurrence(text: str, needle: str, taken: _DisjointSpans,
                     searched_from: dict[str, int]) -> int | None:
    """First place `needle` occurs in `text` without overlapping a span taken.

    Held spans only grow, so a place refused once stays refused: each needle's search resumes
    where its last one stopped, and an occurrence inside a held span skips to that span's end
    (every start before it overlaps the same span). The text is scanned once per distinct needle."""
    start = text.find(needle, searched_from.get(needle, 0))
    while start != -1:
        end = start + len(needle)
        held_until = taken.clash(start, end)
        if held_until is None:
            searched_from[needle] = end
            return start
        start = text.find(needle, max(start + 1, held_until))
    searched_from[needle] = len(text)
    return None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
