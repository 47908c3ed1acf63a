"""Index samplers for distributed training and inference, and aspect-ratio batch grouping."""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler

from ..utils.distributed import broadcast, get_rank, get_world_size


def shared_random_seed() -> int:
    """A random seed that is the same on every rank (rank 0 draws it)."""
    return int(broadcast(int(torch.randint(2**31, ()).item())))


def mix_seed(*values: int) -> int:
    """A 63-bit seed derived from non-negative integers: different tuples give unrelated random streams."""
    return int(np.random.SeedSequence(list(values)).generate_state(2, np.uint64)[0] % 2**63)


def _rank_and_world(rank: Optional[int], world_size: Optional[int]) -> tuple:
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size


class TrainingSampler(Sampler[int]):
    """Endless seeded permutations of ``range(size)``; rank r of w takes elements r, r + w, ... from the
    ``start``-th of its share on. ``seed=None`` shares one drawn on rank 0."""

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None, start: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a dataset with at least one item, got size {size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = shared_random_seed() if seed is None else int(seed)
        self._rank, self._world_size = _rank_and_world(rank, world_size)
        self._start = start

    def __iter__(self) -> Iterator[int]:
        return (index for _, index in self.with_positions())

    def with_positions(self) -> Iterator[Tuple[int, int]]:
        """This rank's indices, each with its position in the stream all ranks share (unique in the run)."""
        first = self._rank + self._start * self._world_size
        return itertools.islice(enumerate(self._infinite_indices()), first, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self._seed)
        while True:
            order = torch.randperm(self._size, generator=generator) if self._shuffle else torch.arange(self._size)
            yield from order.tolist()


class InferenceSampler(Sampler[int]):
    """Every index of ``range(size)`` exactly once over all ranks, in contiguous, in-order shards whose
    lengths differ by at most one (the first ``size % world_size`` ranks get one more)."""

    def __init__(self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        rank, world_size = _rank_and_world(rank, world_size)
        per_rank, extra = divmod(size, world_size)
        begin = rank * per_rank + min(rank, extra)
        self._indices = range(begin, begin + per_rank + (1 if rank < extra else 0))

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


def aspect_ratio_group(item: dict) -> int:
    """0 for landscape (width > height), 1 otherwise; from the dict's own width/height, no image read."""
    return 0 if item["width"] > item["height"] else 1


def batch_stream(items: Iterable[dict], batch_size: int,
                 group_key: Optional[Callable[[dict], int]] = aspect_ratio_group) -> Iterator[List[dict]]:
    """Batches of ``batch_size`` from a stream of dicts, one bucket per ``group_key(item)`` (default:
    aspect-ratio grouping), each handed out when full; ``group_key=None`` batches in order."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    buckets: Dict[int, List[dict]] = {}
    for item in items:
        key = group_key(item) if group_key else 0
        bucket = buckets.setdefault(key, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            del buckets[key]
            yield bucket
