"""What stands between a client and the routes: the API keys, the Host check, the body cap.

The body cap is plain ASGI, the outermost layer: it counts the bytes of the body as they
arrive, so a chunked upload (no Content-Length) is refused at the cap instead of being
buffered whole, and it watches for the client leaving (Starlette's `is_disconnected` cannot
see that through an `http` middleware).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
DISCONNECTED = "nerft.disconnected"  # scope key: an asyncio.Event set when the client has left


def given_key(headers) -> str:
    """The key a request carries: Bearer token (OpenAI clients), X-API-Key, or Basic auth with
    the key as password (browsers); "" when none."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    given = headers.get("x-api-key", "")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            given = ""
    return given


def key_matches(given: str, key: str | None) -> bool:
    return bool(key) and hmac.compare_digest(given.encode(), key.encode())


def host_name(header: str) -> str:
    """The name part of a Host header: "localhost:8000" -> localhost, "[::1]:80" -> ::1."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class BodyCap:
    """ASGI middleware: 413 once a request body passes `max_bytes`, counted as it arrives."""

    def __init__(self, app, max_bytes, on_refused=lambda path, status: None):
        # max_bytes(path) -> the cap of that route's body; on_refused(path, status) for metrics
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "")
        cap = self.max_bytes(scope["path"])
        if length.isdigit() and int(length) > cap:
            return await self._refuse(scope, send, f"request body of {int(length)} bytes; the "
                                                   f"limit is {cap}")
        # Read the body here, counting; what passes is replayed to the app in one message.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return await self._refuse(scope, send, "the client closed the request", 400)
            size += len(message.get("body", b""))
            if size > cap:
                return await self._refuse(scope, send, f"request body of more than {cap} bytes "
                                                       f"(sent in chunks); the limit is {cap}")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False
        # The client may leave while its request waits for the decoder: a watcher reads the
        # server's next message (a disconnect) and sets this event, which the routes poll.
        gone = scope[DISCONNECTED] = asyncio.Event()

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, replay, send)
        finally:
            watcher.cancel()

    async def _refuse(self, scope, send, detail: str, status: int = 413) -> None:
        self.on_refused(scope["path"], status)
        payload = json.dumps({"detail": detail}).encode()
        # "connection: close": the rest of the body is never read, so the connection cannot
        # carry another request.
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
