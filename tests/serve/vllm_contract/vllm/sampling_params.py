"""vllm/sampling_params.py (0.19.1): SamplingParams (a msgspec Struct there: keyword fields
with these names and defaults) and StructuredOutputsParams (a dataclass that takes exactly
one kind of constraint)."""

import enum
from dataclasses import dataclass, field, fields


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class StructuredOutputsParams:
    json: object = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self):
        count = sum(getattr(self, k) is not None for k in
                    ("json", "regex", "choice", "grammar", "json_object", "structural_tag"))
        if count != 1:
            raise ValueError("You must use exactly one kind of structured outputs constraint")


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: object = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    skip_clone: bool = False
    output_text_buffer_length: int = 0
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict | None = None
    allowed_token_ids: list[int] | None = None
    extra_args: dict | None = None
    bad_words: list[str] | None = None
    skip_reading_prefix_cache: bool | None = None
    thinking_token_budget: int | None = None
    repetition_detection: object = None

    def __post_init__(self):
        if self.temperature < 0 or (self.max_tokens is not None and self.max_tokens < 1):
            raise ValueError("temperature must be non-negative, max_tokens at least 1")


SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))
