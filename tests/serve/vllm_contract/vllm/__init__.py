"""Stand-in for vLLM 0.19.1's top-level exports used by nerft (see ../README.md)."""

from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import SamplingParams

__version__ = "0.19.1"
__all__ = ["AsyncEngineArgs", "EngineArgs", "SamplingParams", "TokensPrompt"]
