"""vllm/v1/engine/async_llm.py (0.19.1): AsyncLLM's constructor-from-args, `generate` (an async
generator of cumulative RequestOutputs; closing it early aborts the request), `errored` and
`shutdown`. The model is scripted (see ../../../README.md)."""

import asyncio
from dataclasses import dataclass

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.sampling_params import SamplingParams


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: object
    finish_reason: str | None = None
    stop_reason: object = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: object
    outputs: list[CompletionOutput]
    finished: bool
    lora_request: LoRARequest | None = None


class AsyncLLM:
    # The test sets these: script(prompt_ids, lora_request) -> answer token ids (an endless
    # iterator is fine), and grammar_check(grammar) -> consume(token) -> bool.
    script = None
    grammar_check = None
    started: list = []  # every engine's args, for the test to read

    def __init__(self, engine_args: AsyncEngineArgs):
        self.engine_args = engine_args
        self.requests: list[tuple[dict, SamplingParams, str, LoRARequest | None]] = []
        self.aborted: list[str] = []
        self.errored = False
        self.stopped = False

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True,
                         usage_context=None, stat_loggers=None) -> "AsyncLLM":
        if not isinstance(engine_args, AsyncEngineArgs):
            raise TypeError("engine_args must be AsyncEngineArgs")
        engine = cls(engine_args)
        AsyncLLM.started.append(engine)
        return engine

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str, *,
                       prompt_text=None, lora_request: LoRARequest | None = None,
                       tokenization_kwargs=None, trace_headers=None, priority: int = 0,
                       data_parallel_rank=None, reasoning_ended=None):
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError("sampling_params must be SamplingParams")
        self.requests.append((prompt, sampling_params, request_id, lora_request))
        consume = None
        if sampling_params.structured_outputs is not None:
            consume = AsyncLLM.grammar_check(sampling_params.structured_outputs.grammar)
        stops = set(sampling_params.stop_token_ids or ())
        tokens: list[int] = []
        try:
            for token in AsyncLLM.script(list(prompt["prompt_token_ids"]), lora_request):
                if consume is not None and not consume(token):
                    raise AssertionError(f"token {token} breaks the request's grammar")
                tokens.append(token)
                finish = ("stop" if token in stops else
                          "length" if len(tokens) >= sampling_params.max_tokens else None)
                await asyncio.sleep(0)
                yield RequestOutput(request_id, None, list(prompt["prompt_token_ids"]), None,
                                    [CompletionOutput(0, "", list(tokens), None, None, finish)],
                                    finish is not None, lora_request)
                if finish:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    def shutdown(self, timeout: float | None = None) -> None:
        self.stopped = True
