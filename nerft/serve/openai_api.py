"""`POST /v1/chat/completions`, shaped like OpenAI's, so OpenAI clients can call the NER model.

The service does one task only. The last user message is the sentence (a leading "文本:" is
dropped, so nerft's own user message works too); the task's system prompt is always the one the
model was trained with, so system messages and earlier turns are ignored, as are sampling
parameters (decoding is greedy and constrained). `model` picks one of the served runs when
there are several (`nerft serve A B`); with one run any name reaches it, as before. Streaming
sends the finished answer as SSE chunks (one per answer line): the batch decoder produces whole
answers.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictStr

from nerft.task.prompt import user_message

USER_PREFIX = user_message("")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens...: accepted, not used
    model: StrictStr
    messages: list[ChatMessage]
    stream: bool = False


def sentence_of(messages: list[ChatMessage]) -> str:
    """The sentence to analyse: the text of the last user message."""
    user = [m for m in messages if m.role == "user"]
    if not user:
        raise HTTPException(422, "no user message: send the sentence as the last user message")
    content = user[-1].content
    if isinstance(content, list):
        content = "".join(p.text or "" for p in content if p.type == "text")
    content = content or ""
    return content[len(USER_PREFIX):] if content.startswith(USER_PREFIX) else content


def add_chat_routes(app: FastAPI, service) -> None:
    @app.post("/v1/chat/completions", summary="OpenAI-compatible: the last user message is the sentence")
    async def chat_completions(body: ChatRequest, request: Request):
        try:
            run = service.run_named(body.model, "model") if len(service.runs) > 1 else service.default
            name = run.name
            (decoded,) = await service.decode_texts([sentence_of(body.messages)], request,
                                                    ["messages[-1].content"], run)
        except HTTPException as e:  # OpenAI clients read {"error": {"message": ...}}
            kind = "invalid_request_error" if e.status_code < 500 else "server_error"
            return JSONResponse({"error": {"message": e.detail, "type": kind, "code": e.status_code},
                                 "detail": e.detail}, status_code=e.status_code, headers=e.headers)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": decoded.prompt_tokens, "completion_tokens": decoded.answer_tokens,
                 "total_tokens": decoded.prompt_tokens + decoded.answer_tokens}
        if not body.stream:
            return {"id": reply_id, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": decoded.answer}}],
                    "usage": usage}

        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps(
                {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]},
                ensure_ascii=False) + "\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""})
            for piece in decoded.answer.splitlines(keepends=True):
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
