"""The FastAPI app: /v1/ner, the OpenAI-compatible chat endpoint, health, metrics, the web page.

Offsets in every answer are Unicode code points, end exclusive: `text[start:end]` in Python
(JavaScript strings count UTF-16 units; the page converts with `Array.from`).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictStr, model_validator

from nerft.task.prompt import Task
from nerft.serve.batcher import Batcher, Draining, QueueFull
from nerft.serve.feedback import Feedback, FeedbackRequest, encoding_problem, key_fingerprint
from nerft.serve.guard import DISCONNECTED, BodyCap, given_key, host_name, key_matches
from nerft.serve.metrics import ERROR_KINDS, ROUTES, ServiceMetrics


@dataclass(frozen=True)
class ServedRun:
    """One model the service answers with, by name: its task and its decode function.

    `decode(texts) -> [Decoded]`: a plain function runs on the batching worker thread (the hf
    backend; requests for different runs never share a call); a coroutine function is awaited
    as it is (the vLLM backend, whose engine batches by itself)."""

    name: str
    task: Task
    decode: Callable

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.decode)


@dataclass
class ServeSettings:
    model_name: str  # the default run's name
    max_text_chars: int = 2000
    max_texts: int = 64
    max_batch: int = 16
    max_wait: float = 0.01
    max_queue: int = 256
    batching: bool = True
    api_key: str | None = None
    log_requests: Path | None = None  # opt-in: requests and answers, JSONL
    feedback: Path | None = None  # opt-in: corrections from POST /v1/feedback, canonical JSONL
    log_max_bytes: int = 100 * 2**20  # cap of each of the two files
    max_request_chars: int = 16_000  # compute budget: characters in one request, all texts
    request_timeout: float = 120.0  # seconds a request may wait for its answers (504 beyond)
    feedback_keys: tuple[str, ...] = ()  # when set, POST /v1/feedback needs one of them
    max_entities: int = 256  # entities in one correction
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted; None: any

    @property
    def max_body_bytes(self) -> int:
        # Room for every allowed sentence as escaped JSON (\uXXXX is 6 bytes a character).
        return 4096 + self.max_texts * (6 * self.max_text_chars + 16)

    @property
    def max_feedback_bytes(self) -> int:
        # The sentence and its entities' texts (together no longer than the sentence, as they
        # cannot overlap) as escaped JSON, and each entity's label, offsets and keys.
        return 4096 + 2 * 6 * self.max_text_chars + self.max_entities * 96

    def body_cap(self, path: str) -> int:
        return self.max_feedback_bytes if path == "/v1/feedback" else self.max_body_bytes


class NerRequest(BaseModel):
    """One sentence (`text`) or several (`texts`), not both; `run` picks a served run."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr | None = None
    texts: list[StrictStr] | None = None
    run: StrictStr | None = None

    @model_validator(mode="after")
    def one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError('give either "text" (a string) or "texts" (a list of strings)')
        if self.texts is not None and not self.texts:
            raise ValueError('"texts" is empty')
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts)


class Service:
    """The pieces every route shares: settings, runs, metrics, and the batching worker (for
    runs whose decode is a plain function)."""

    def __init__(self, runs: Sequence[ServedRun], settings: ServeSettings,
                 engine_alive: Callable[[], bool] | None = None):
        self.runs = {run.name: run for run in runs}
        self.engine_alive = engine_alive
        if len(self.runs) != len(runs) or not runs:
            raise ValueError("served runs need distinct names")
        self.default = runs[0]
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.feedback = Feedback({run.name: run.task.labels for run in runs},
                                 settings.log_requests, settings.feedback, settings.log_max_bytes,
                                 max_text_chars=settings.max_text_chars,
                                 max_entities=settings.max_entities)
        self.batcher: Batcher | None = None
        self.started = int(time.time())
        self._batch_seconds = 0.5  # running mean of decode call time, for Retry-After
        self._in_flight = 0  # sentences being answered by an async engine

    def run_named(self, name: str | None, field: str) -> ServedRun:
        """The run a request names in `field` (default: the first); 422 naming the choices."""
        if name is None:
            return self.default
        run = self.runs.get(name)
        if run is None:
            raise HTTPException(422, f"{field}: {name!r} is not served here; choose one of "
                                     f"{', '.join(self.runs)}")
        return run

    @property
    def alive(self) -> bool:
        """The batching worker runs, and so does the async engine if there is one."""
        return (self.batcher is not None and self.batcher.alive
                and (self.engine_alive is None or self.engine_alive()))

    def start(self) -> None:
        stats = self.metrics.batch_stats()
        timed = stats.on_batch

        def on_batch(n: int, seconds: float) -> None:
            timed(n, seconds)
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds

        stats.on_batch = on_batch
        s = self.settings
        self.batcher = Batcher(self.default.decode, max_batch=s.max_batch, max_wait=s.max_wait,
                               max_queue=s.max_queue, batching=s.batching, stats=stats)

    def check_limits(self, texts: list[str], fields: list[str]) -> None:
        """413 past a limit, 422 for text that cannot be encoded; `fields` name the texts."""
        s = self.settings
        if len(texts) > s.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {s.max_texts}")
        for i, text in enumerate(texts):
            if len(text) > s.max_text_chars:
                raise HTTPException(413, f"text {i} has {len(text)} characters; the limit is "
                                         f"{s.max_text_chars}")
            problem = encoding_problem(text)
            if problem:
                raise HTTPException(422, f"{fields[i]}: {problem}")
        total = sum(len(t) for t in texts)
        if total > s.max_request_chars:
            raise HTTPException(413, f"{total} characters in one request; the limit is "
                                     f"{s.max_request_chars} (--max-request-chars); send fewer or "
                                     "shorter texts per request")

    async def decode_texts(self, texts: list[str], request: Request, fields: list[str],
                           run: ServedRun | None = None) -> list:
        """Queue `texts` for the worker and wait for `run`'s answers (default: the first run):
        503 when full or draining, 504 past the request timeout; a client that goes away has its
        work cancelled."""
        self.check_limits(texts, fields)
        run = run or self.default
        if run.is_async:
            decoded = await self._decode_async(texts, request, run)
        else:
            decoded = await self._decode_queued(texts, request, run)
        self.metrics.run_sentences.labels(run.name).inc(len(texts))
        return decoded

    async def _decode_async(self, texts: list[str], request: Request, run: ServedRun) -> list:
        """An engine that batches by itself (vLLM): the same limits, without the nerft queue."""
        s = self.settings
        if self._in_flight and self._in_flight + len(texts) > s.max_queue:
            raise HTTPException(503, f"busy: {self._in_flight} sentences being answered (limit "
                                     f"{s.max_queue}); retry in 1 s", headers={"Retry-After": "1"})
        self._in_flight += len(texts)
        self.metrics.queue_depth.set(self._in_flight)
        started = time.perf_counter()
        work = asyncio.ensure_future(run.decode(texts))
        try:
            result = await self._await(work, request, lambda: work.cancel())
        finally:
            self._in_flight -= len(texts)
            self.metrics.queue_depth.set(self._in_flight)
        self.metrics.batch_stats().on_batch(len(texts), time.perf_counter() - started)
        return result

    async def _decode_queued(self, texts: list[str], request: Request, run: ServedRun) -> list:
        try:
            future = self.batcher.submit(texts, run.decode)
        except QueueFull as e:
            wait = max(1, math.ceil(self._batch_seconds * (1 + self.batcher.pending / self.settings.max_batch)))
            raise HTTPException(503, f"busy: {e}; retry in {wait} s", headers={"Retry-After": str(wait)})
        except Draining as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "5"})
        return await self._await(asyncio.wrap_future(future), request,
                                 lambda: self.batcher.cancel(future))

    async def _await(self, waiting, request: Request, cancel: Callable[[], object]):
        """`waiting`'s result; on the client leaving (499) or the timeout (504), `cancel()`."""
        deadline = time.monotonic() + self.settings.request_timeout
        while True:
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, min(0.25, left)))
            if done:
                return waiting.result()
            gone = request.scope.get(DISCONNECTED)
            if gone is not None and gone.is_set():
                cancel()
                raise HTTPException(499, "the client closed the connection; work cancelled")
            if left <= 0:
                cancel()
                raise HTTPException(504, f"no answer within {self.settings.request_timeout:g} s "
                                         "(--request-timeout); send fewer or shorter texts")


def create_app(decode: Callable, task: Task, settings: ServeSettings) -> FastAPI:
    """The service app of one model; `decode(texts) -> [Decoded]` runs on the batching worker
    thread only."""
    return serve_runs([ServedRun(settings.model_name, task, decode)], settings)


def serve_runs(runs: Sequence[ServedRun], settings: ServeSettings, *,
               alive: Callable[[], bool] | None = None,
               shutdown: Callable[[], object] | None = None) -> FastAPI:
    """The service app of one or more runs (the first is the default): the decode seam of every
    backend. `alive()` says whether an async engine still runs; `shutdown()` stops it."""
    from nerft.serve.label_studio_api import add_label_studio_routes
    from nerft.serve.openai_api import add_chat_routes

    service = Service(runs, settings, engine_alive=alive)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        # uvicorn stops here only after every open request has been answered; close() then
        # lets the worker finish anything still queued before the process exits.
        await asyncio.get_running_loop().run_in_executor(None, service.batcher.close)
        if shutdown is not None:
            shutdown()

    app = FastAPI(title="nerft NER service", lifespan=lifespan,
                  description="Chinese named-entity recognition with a fine-tuned chat model. "
                              "Offsets are Unicode code points, end exclusive.")
    app.state.service = service

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path
        route = path if path in ROUTES else "other"
        service.metrics.in_progress.labels(route).inc()
        try:
            response = await _guarded(request, call_next, path)
        finally:
            service.metrics.in_progress.labels(route).dec()
        status = response.status_code
        service.metrics.requests.labels(route, str(status)).inc()
        service.metrics.latency.labels(route).observe(time.perf_counter() - started)
        if status >= 400:
            kind = ERROR_KINDS.get(status, "server_error" if status >= 500 else "client_error")
            service.metrics.errors.labels(kind).inc()
        return response

    async def _guarded(request: Request, call_next, path: str):
        host = host_name(request.headers.get("host", ""))
        if settings.allowed_hosts is not None and host not in settings.allowed_hosts:
            # Without a key, a page from another site that resolves its name to 127.0.0.1 (DNS
            # rebinding) could otherwise use the service from the user's browser.
            return JSONResponse({"detail": f"Host {host!r} refused: this service without "
                                           "--api-key answers only to "
                                           f"{', '.join(settings.allowed_hosts)}"}, status_code=403)
        given = given_key(request.headers)
        # Who is asking: the fingerprint of the key that let the request in, kept on feedback rows.
        request.state.who = None
        if path == "/v1/feedback" and settings.feedback_keys:
            # Each writer may hold its own feedback key; the API key alone cannot write.
            writer = next((k for k in settings.feedback_keys if key_matches(given, k)), None)
            if writer is None:
                return JSONResponse({"detail": "missing or wrong feedback key: POST /v1/feedback "
                                               "needs a --feedback-key, sent as 'Authorization: "
                                               "Bearer KEY'"}, status_code=401)
            request.state.who = key_fingerprint(writer)
        elif settings.api_key and path != "/health":
            if not key_matches(given, settings.api_key):
                return JSONResponse({"detail": "missing or wrong API key: send 'Authorization: "
                                               "Bearer KEY'"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="nerft"'})
            request.state.who = key_fingerprint(settings.api_key)
        return await call_next(request)

    # Added last, so it is the outermost layer: it sees the server's own receive channel.
    app.add_middleware(BodyCap, max_bytes=settings.body_cap, on_refused=service.metrics.refused)

    @app.get("/health", summary="Liveness; never needs the API key")
    async def health(request: Request):
        """503 when the decode worker has stopped; log paths only with the API key."""
        alive = service.alive
        shown = key_matches(given_key(request.headers), settings.api_key)
        body = {"status": "ok" if alive else "decode worker stopped; restart the service",
                "model": settings.model_name,
                "queued_sentences": service.batcher.pending if service.batcher else 0,
                "logging": service.feedback.status(show_paths=shown)}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models", summary="The served runs (OpenAI format); the first is the default")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model",
                                            "created": service.started, "owned_by": "nerft"}
                                           for name in service.runs]}

    @app.get("/v1/task", summary="Labels and instruction of a served run (?run=NAME)")
    async def task_info(run: str | None = None):
        chosen = service.run_named(run, "run")
        task = chosen.task
        return {"model": chosen.name, "labels": list(task.labels),
                "runs": list(service.runs),
                "system_prompt": task.system_prompt,
                "limits": {"max_text_chars": settings.max_text_chars, "max_texts": settings.max_texts,
                           "max_request_chars": settings.max_request_chars}}

    @app.post("/v1/ner", summary="Entities of one or more sentences")
    async def ner(body: NerRequest, request: Request, response: Response):
        """`{"text": ...}` or `{"texts": [...]}` → entities with code-point offsets, end exclusive.

        `request_id` (also the X-Request-Id header) names the answer in POST /v1/feedback."""
        texts = body.all_texts()
        run = service.run_named(body.run, "run")
        fields = ["text"] if body.text is not None else [f"texts[{i}]" for i in range(len(texts))]
        decoded = await service.decode_texts(texts, request, fields, run)
        results = [{"text": d.text, "entities": [e.to_dict() for e in d.entities]} for d in decoded]
        request_id = service.feedback.record_answer(texts, results, "/v1/ner", run.name)
        response.headers["X-Request-Id"] = request_id
        return {"model": run.name, "request_id": request_id, "results": results}

    @app.post("/v1/feedback", summary="Corrected entities of one sentence (needs --feedback)")
    def feedback(body: FeedbackRequest, request: Request):
        """`{"request_id": ..., "entities": [{"text", "label", "start"?, "end"?}]}` or with `text`
        instead of `request_id`; appended as a canonical row that `nerft data prepare` reads.

        A plain `def`: FastAPI runs it on its thread pool, so checking a large correction never
        holds the event loop that answers everyone else."""
        return service.feedback.correct(body, by=request.state.who)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(resources.files("nerft.serve").joinpath("page.html").read_text(encoding="utf-8"))

    add_chat_routes(app, service)
    add_label_studio_routes(app, service)
    return app
