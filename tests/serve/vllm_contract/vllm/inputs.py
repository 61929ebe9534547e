"""vllm/inputs/llm.py (0.19.1): TokensPrompt is a TypedDict."""

from typing import TypedDict

from typing_extensions import NotRequired


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]
