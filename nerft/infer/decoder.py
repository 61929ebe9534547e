"""The parts of a causal LM that nerft's decoding loop drives: decoder stack, output head,
stop tokens, and grouped key/value heads for CPU attention.

Grouped KV heads: with a padding mask and more than one query token, transformers' SDPA path
copies the whole key/value cache once per query-head group (7x for Qwen2.5-0.5B) in every
layer: 34 ms against 2-5 ms for a [32 rows, 300 columns] cache on 2 cores, with identical
outputs. nerft registers its own attention function (`nerft_sdpa`): called with
`nerft_grouped_kv=True` on CPU it lets SDPA share each key/value head among its query heads
(`enable_gqa`); otherwise it is transformers' own SDPA. The decoder passes the flag on its
own calls only, so training and other callers compute exactly what they did before.

No hidden state: the function is registered on the first decode (importing this module
changes nothing), and the model is switched to it only while `Decoder.active()` holds, then
back to the implementation the caller had.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from nerft.models.packed_attention import PER_EXAMPLE_SDPA
from nerft.task.chat import end_of_turn_id, stop_token_ids
from nerft.task.prompt import Task

GROUPED_SDPA = "nerft_sdpa"


def _grouped_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          is_causal=None, nerft_grouped_kv=False, **kwargs):
    if (nerft_grouped_kv and attention_mask is not None and query.device.type == "cpu"
            and getattr(module, "num_key_value_groups", 1) > 1):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
            enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)


def _register_grouped_sdpa() -> None:
    """Register `nerft_sdpa` with transformers (again is harmless): a new name beside its own
    (nothing existing changes meaning); the mask is SDPA's."""
    AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa_forward)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


def _unwrap(model):
    """The causal LM inside PEFT and DDP/FSDP-style wrappers (`.module`)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT: LoRA layers are injected in place
        peft_config = getattr(model, "active_peft_config", None)
        if getattr(peft_config, "is_prompt_learning", False):
            raise ValueError("prompt-learning adapters are not supported for generation")
        model = model.get_base_model()
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        raise ValueError(f"{type(model).__name__} scales its logits after the output head; "
                         "nerft's generation applies the head itself and does not support it")
    return model


@dataclass
class Decoder:
    """What the loop needs of a model: logits are head(decoder(x)[:, -1])."""

    model: torch.nn.Module  # as given (PEFT / wrapped); its train/eval mode is what callers see
    tokenizer: object
    task: Task
    lm: torch.nn.Module = field(init=False)
    decoder: torch.nn.Module = field(init=False)
    head: torch.nn.Module = field(init=False)

    def __post_init__(self):
        self.lm = _unwrap(self.model)
        self.decoder, self.head = self.lm.get_decoder(), self.lm.get_output_embeddings()
        # A plain linear head can be sliced to the allowed tokens (a LoRA-wrapped one cannot).
        self.sliceable_head = type(self.head) is torch.nn.Linear
        self.eot = end_of_turn_id(self.tokenizer)
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.lm, "generation_config", None))
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot
        self.call_kwargs: dict = {}  # set while `active()` holds

    @contextmanager
    def active(self) -> Iterator[None]:
        """Decode inside this: on CPU, an SDPA model runs the same SDPA under nerft's name so
        the decoder's own calls can ask for grouped heads (see the module docstring); the
        model's own attention implementation is back when the block ends."""
        before = self.lm.config._attn_implementation
        # training's per-example SDPA decodes as plain SDPA (nerft.models.packed_attention)
        if self.device.type != "cpu" or before not in ("sdpa", GROUPED_SDPA, PER_EXAMPLE_SDPA):
            yield
            return
        _register_grouped_sdpa()
        if before != GROUPED_SDPA:
            self.lm.set_attn_implementation(GROUPED_SDPA)
        self.call_kwargs = {"nerft_grouped_kv": True}
        try:
            yield
        finally:
            self.call_kwargs = {}
            if before != GROUPED_SDPA:
                self.lm.set_attn_implementation(before)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, **inputs):
        return self.decoder(**inputs, **self.call_kwargs)

    def choose(self, hidden: torch.Tensor, allowed: list[torch.Tensor] | None) -> torch.Tensor:
        """The greedy next token after each hidden state, among its `allowed` ids (sorted)
        when given."""
        if allowed is not None and self.sliceable_head:
            # Only the tokens some row may write are scored: a slice of the head's weight.
            union = torch.unique(torch.cat(allowed))
            index = union.to(hidden.device)
            logits = torch.nn.functional.linear(
                hidden, self.head.weight[index], None if self.head.bias is None else self.head.bias[index])
            keep = torch.zeros(logits.shape, dtype=torch.bool)
            for slot, a in enumerate(allowed):
                keep[slot, torch.searchsorted(union, a)] = True
            logits = logits.masked_fill(~keep.to(logits.device), float("-inf"))
            return union[logits.argmax(-1).cpu()]
        logits = self.head(hidden).float()
        if allowed is not None:
            keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            for slot, a in enumerate(allowed):
                keep[slot, a.to(logits.device)] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits.argmax(-1).cpu()
