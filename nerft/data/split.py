"""Deterministic train/val/test splits of de-duplicated examples."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from nerft.errors import UsageError

SPLITS = ("train", "val", "test")
_NAME_HINTS = (("train", "train"), ("dev", "val"), ("valid", "val"), ("val", "val"), ("test", "test"))


def split_from_name(path: Path) -> str | None:
    """The split a file's own name declares (`msra_train_bio`, `dev.json`, `example.test`)."""
    words = re.split(r"[^a-z]+", Path(path).name.lower())
    for hint, split in _NAME_HINTS:
        if hint in words:
            return split
    return None


def parse_ratios(spec: str) -> tuple[float, float, float]:
    parts = spec.split(",")
    try:
        ratios = tuple(float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--split {spec!r}: expected three numbers like 0.7,0.15,0.15") from None
    # NaN compares false with everything, so it must be ruled out before the range checks.
    if len(ratios) != 3 or not all(math.isfinite(r) and r >= 0 for r in ratios) \
            or abs(sum(ratios) - 1) > 1e-6:
        raise UsageError(f"--split {spec!r}: expected three non-negative numbers summing to 1")
    return ratios  # type: ignore[return-value]


def assign_splits(n: int, ratios: tuple[float, float, float], seed: int) -> list[str]:
    """Split labels for n items: a seeded shuffle cut at the ratios (counts rounded, sum n)."""
    # Cumulative cuts, so a zero ratio always gets exactly zero items.
    n_train = round(n * ratios[0])
    n_val = round(n * (ratios[0] + ratios[1])) - n_train
    order = list(range(n))
    random.Random(seed).shuffle(order)
    labels = [""] * n
    for rank, idx in enumerate(order):
        labels[idx] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return labels
