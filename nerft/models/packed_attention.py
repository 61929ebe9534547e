"""Attention over a shared-prefix packed row, one example at a time.

The `shared_prefix` layout (nerft.train.collate) writes one system prompt and then each example
of the micro-batch into one row; a 4D mask lets every example see the prefix and itself. SDPA
given that mask computes the whole row x row grid (1,404² scores for 16 ccfbdci examples), of
which about a tenth is allowed. Given the row's segments (`packed_segments`: the prefix's
[0, p) and then each example's [start, end), covering the row), this attention computes the
prefix causally and then the examples, gathered into one batch padded to the longest (L), against
the prefix's keys and their own: the same output, with p² + E·L·(p + L) scores instead of n².

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


class _Layout:
    """Where each example's positions go in a [examples, longest] batch, and the batch's mask:
    built once per packed row (every layer reuses it)."""

    def __init__(self, packed_segments: torch.Tensor, length: int, device):
        (_, p), *examples = segment_bounds(packed_segments, length)
        longest = max((e - s for s, e in examples), default=0)
        index = torch.zeros(len(examples), longest, dtype=torch.long)
        real = torch.zeros(len(examples), longest, dtype=torch.bool)
        for i, (s, e) in enumerate(examples):
            index[i, :e - s] = torch.arange(s, e)
            index[i, e - s:] = e - 1  # padding reads a real position; its output is dropped
            real[i, :e - s] = True
        # every query sees the prefix; a real one its own example's earlier positions; padding
        # also itself (a query with nothing to attend to would give NaN in the backward pass)
        causal = torch.ones(longest, longest, dtype=torch.bool).tril()
        own = causal & real[:, None, :]
        own |= torch.eye(longest, dtype=torch.bool) & ~real[:, :, None]
        allowed = torch.cat([torch.ones(len(examples), longest, p, dtype=torch.bool), own], dim=2)
        self.source = packed_segments
        self.prefix, self.shape = p, (len(examples), longest)
        # the prefix's positions, then the batch's: one gather per tensor (its backward is one
        # scatter; slicing the row apart instead writes a zero tensor of the row per slice)
        self.index = torch.cat([torch.arange(p), index.flatten()]).to(device)
        self.real = real.flatten().nonzero().squeeze(1).to(device)
        self.mask = allowed[:, None].to(device)


_last_layout: _Layout | None = None  # the current row's, shared by its layers


def _layout(packed_segments: torch.Tensor, length: int, device) -> _Layout:
    global _last_layout
    if _last_layout is None or _last_layout.source is not packed_segments:
        _last_layout = _Layout(packed_segments, length, device)
    return _last_layout


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
    layout = _layout(packed_segments, query.shape[2], query.device)
    p, (examples, longest) = layout.prefix, layout.shape
    grouped = key.shape[1] != query.shape[1]  # SDPA repeats the key/value heads itself

    def attend(q, k, v, mask=None):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None,
            enable_gqa=grouped)

    def split(t):  # [1, h, n, d] -> the prefix [1, h, p, d], the batch [examples, h, longest, d]
        h, d = t.shape[1], t.shape[3]
        prefix, batch = torch.split(t[0].index_select(1, layout.index), [p, examples * longest], dim=1)
        return prefix[None], batch.view(h, examples, longest, d).transpose(0, 1)

    (q_prefix, q), (k_prefix, k), (v_prefix, v) = split(query), split(key), split(value)

    def after_prefix(prefix, batch):  # each example's keys (or values) after the prefix's
        return torch.cat([prefix.expand(examples, -1, -1, -1), batch], dim=2)

    out = attend(q, after_prefix(k_prefix, k), after_prefix(v_prefix, v), layout.mask)
    heads, d = query.shape[1], query.shape[3]
    rows = out.transpose(0, 1).reshape(heads, examples * longest, d).index_select(1, layout.real)
    if p:
        rows = torch.cat([attend(q_prefix, k_prefix, v_prefix)[0], rows], dim=1)
    return rows[None].transpose(1, 2).contiguous(), None
