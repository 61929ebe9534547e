"""Several training processes (torchrun / accelerate launch): who writes, and agreeing on facts.

Only rank 0 writes the run directory; the others wait at a barrier and receive its decisions
(the checkpoint to resume from, validation scores) by broadcast, so every rank acts the same.
With one process every function here is a no-op.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def start() -> None:
    """Join the process group early (the Trainer reuses it), so rank 0 can share its decisions
    before the model is loaded."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState()


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def share(value):
    """Rank 0's `value` on every rank (any picklable object)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
