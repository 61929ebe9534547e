"""vllm/config/structured_outputs.py (0.19.1): the engine's structured-outputs settings."""

from dataclasses import dataclass

BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")


@dataclass(kw_only=True)
class StructuredOutputsConfig:
    backend: str = "auto"
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    reasoning_parser: str = ""
    reasoning_parser_plugin: str = ""
    enable_in_reasoning: bool = False

    def __post_init__(self):
        if self.backend not in BACKENDS:  # a pydantic Literal in vLLM
            raise ValueError(f"backend {self.backend!r} is not one of {BACKENDS}")
