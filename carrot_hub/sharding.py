"""Routing one input across several processes (`accelerate launch`, `torchrun`) into one output.

Process r of W takes every W-th prompt starting at r (so a streamed input never has to be counted
first), writes its records to a part file, and after all processes have reported, the main
process interleaves the parts round-robin — which restores input order exactly — into a temporary
file that is renamed over the output. If any process fails, no output file is left behind.
"""

import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from .atomic_writing import atomic_file


@dataclass
class ShardInfo:
    """This process's place among the routing processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def shard_from_env() -> ShardInfo:
    """Rank and world size as set by `accelerate launch` / `torchrun` (RANK, WORLD_SIZE); 0 of 1 otherwise."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ValueError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not integers."
        ) from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}.")
    return ShardInfo(rank, world_size)


class ProcessGroup:
    """
    The collective operations routing needs: one all-gather of a small Python object per process,
    which is also the barrier before merging. Uses accelerate's `PartialState` (gloo on CPU, NCCL
    on GPUs) when several processes run, and nothing at all in a single process.
    """

    def __init__(self, shard: ShardInfo):
        self.shard = shard
        self._state = None
        if shard.distributed:
            from accelerate import PartialState

            self._state = PartialState()

    def gather(self, value) -> list:
        """Every process's `value`, in rank order (a barrier: returns once all have called it)."""
        if self._state is None:
            return [value]
        import torch.distributed as dist

        values = [None] * self.shard.world_size
        dist.all_gather_object(values, value)
        return values


def part_path(output: Path, rank: int, world_size: int) -> Path:
    """Where process `rank` writes its records before the merge (next to the output, hidden)."""
    return output.parent / f".{output.name}.part-{rank:05d}-of-{world_size:05d}"


def merge_parts(parts: list[Path], output: Path, check_line: Callable[[str, int], None] | None = None) -> int:
    """
    Interleave `parts` (part r holds records r, r + W, r + 2W, …) into `output` atomically; returns
    the number of records. `check_line(line, index)` may verify each record's position.
    """
    handles = [open(part, encoding="utf-8") for part in parts]
    count = 0
    try:
        with atomic_file(output) as out:
            while True:
                line = handles[count % len(handles)].readline()
                if not line:
                    break
                if check_line is not None:
                    check_line(line, count)
                out.write(line)
                count += 1
            leftover = [str(p) for p, h in zip(parts, handles) if h.readline()]
            if leftover:
                raise RuntimeError(f"Part files out of step after {count} records: {leftover} still hold records.")
    finally:
        for handle in handles:
            handle.close()
    return count


def remove_parts(parts: list[Path]) -> None:
    for part in parts:
        with suppress(OSError):
            part.unlink()

