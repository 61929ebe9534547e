"""Which training rows a run sees: entity-free sentences down-sampled on request.

Sparse corpora (most sentences without any entity) teach a small model that the safe answer
is 没有找到任何实体; capping the share of entity-free rows keeps every sentence that has an
entity and a seeded sample of the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nerft.data.example import Example


@dataclass
class EmptyShare:
    """What down-sampling did: rows with entities, entity-free rows before and after."""

    with_entities: int
    empty_before: int
    empty_kept: int

    def to_dict(self) -> dict:
        return {"with_entities": self.with_entities, "entity_free_read": self.empty_before,
                "entity_free_kept": self.empty_kept}

    def describe(self) -> str:
        total = self.with_entities + self.empty_kept
        share = self.empty_kept / total if total else 0.0
        return (f"entity-free training rows: kept {self.empty_kept:,} of {self.empty_before:,} "
                f"({share:.0%} of {total:,} rows)")


def cap_empty_share(rows: list[Example], max_share: float | None, seed: int) -> tuple[list[Example], EmptyShare]:
    """Rows with at most `max_share` entity-free ones (None: all rows), in their order."""
    full = [i for i, ex in enumerate(rows) if ex.entities]
    empty = [i for i, ex in enumerate(rows) if not ex.entities]
    keep_empty = len(empty)
    if max_share is not None and empty:
        # empty / (full + empty) <= share  <=>  empty <= share * full / (1 - share)
        limit = len(full) * max_share / (1 - max_share) if max_share < 1 else len(empty)
        keep_empty = min(len(empty), int(limit))
    chosen = set(full) | set(random.Random(seed).sample(empty, keep_empty))
    kept = [ex for i, ex in enumerate(rows) if i in chosen]
    return kept, EmptyShare(len(full), len(empty), keep_empty)
