"""Attention over a shared-prefix packed row, one example at a time.

The `shared_prefix` layout (nerft.train.collate) writes one system prompt and then each example
of the micro-batch into one row; a 4D mask lets every example see the prefix and itself. SDPA
given that mask computes the whole row x row grid (1,404² scores for 16 ccfbdci examples), of
which about a tenth is allowed. Given the row's segments (`packed_segments`: the prefix's
[0, p) and then each example's [start, end), covering the row), this attention computes the
prefix causally and then each example against the prefix's keys and its own: the same output,
with p²/2 + sum(L·(p + L)) scores instead of n².

It runs under its own name in transformers' attention registry; a call without
`packed_segments` (validation decoding, a padded batch) is plain SDPA, with SDPA's own masks.
"""

from __future__ import annotations

import torch

PER_EXAMPLE_SDPA = "nerft_per_example_sdpa"


def register() -> None:
    """Make PER_EXAMPLE_SDPA a known attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PER_EXAMPLE_SDPA, per_example_attention)
    AttentionMaskInterface.register(PER_EXAMPLE_SDPA, sdpa_mask)


def segment_bounds(packed_segments: torch.Tensor, length: int) -> list[tuple[int, int]]:
    """The row's (start, end) pairs, the prefix first, checked to tile [0, length) in order: an
    example left out or overlapping would silently attend to the wrong keys."""
    bounds = [(int(s), int(e)) for s, e in packed_segments.tolist()]
    expected = 0
    for s, e in bounds:
        if s != expected or e < s:
            raise ValueError(f"packed_segments {bounds} do not tile the row of {length} positions")
        expected = e
    if expected != length:
        raise ValueError(f"packed_segments {bounds} cover {expected} of the row's {length} positions")
    return bounds


def per_example_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          packed_segments=None, **kwargs):
    """transformers' attention signature: query [1, heads, n, d], key/value [1, kv heads, n, d];
    returns ([1, n, heads, d], None) as SDPA does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if packed_segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[0] != 1 or key.shape[2] != query.shape[2] or kwargs.get("sliding_window"):
        raise ValueError("packed_segments needs one packed row, no cache and no sliding window "
                         f"(query {tuple(query.shape)}, key {tuple(key.shape)})")
    (_, p), *examples = segment_bounds(packed_segments, query.shape[2])
    grouped = key.shape[1] != query.shape[1]  # SDPA repeats the key/value heads itself

    def attend(q, k, v, mask=None):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None,
            enable_gqa=grouped)

    outputs = [attend(query[:, :, :p], key[:, :, :p], value[:, :, :p])] if p else []
    masks: dict[int, torch.Tensor] = {}  # per example length: the whole prefix, then causal
    for s, e in examples:
        n = e - s
        if n not in masks:
            allowed = torch.ones(n, p + n, dtype=torch.bool, device=query.device)
            allowed[:, p:] = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
            masks[n] = allowed
        outputs.append(attend(query[:, :, s:e], torch.cat([key[:, :, :p], key[:, :, s:e]], dim=2),
                              torch.cat([value[:, :, :p], value[:, :, s:e]], dim=2), masks[n]))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None
