"""`--backend vllm`: serving through vLLM on a GPU (an optional extra, `pip install 'nerft[vllm]'`).

vLLM pins its own torch and transformers, so it lives in its own environment; this module only
checks that it can run here and says in one line what is missing.
"""

from __future__ import annotations

import importlib.util

from nerft.errors import NerftError


class VllmUnavailable(NerftError):
    """vLLM cannot run here; the message says what to install (exit code 2)."""


def check_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("--backend vllm needs vLLM, which is not installed: in a separate "
                              "environment on a CUDA machine run `pip install 'nerft[vllm]'`, "
                              "or use --backend hf")
    import torch

    if not torch.cuda.is_available():
        raise VllmUnavailable("--backend vllm needs a CUDA GPU and none is visible here; use "
                              "--backend hf")
    raise VllmUnavailable("--backend vllm is not implemented in this version of nerft; use "
                          "--backend hf")
