"""The training data as one reproducible stream, so that ``--resume`` continues a run exactly.

Detectron2's ``TrainingSampler`` restarts its shuffled stream at every start, and the random
augmentation depends on the worker processes' RNG states: a resumed run sees other images
with other augmentations than the run it continues. Here position ``p`` of the stream is
sample ``perm_e[p mod n]`` of epoch ``e = p // n`` (``perm_e`` a permutation seeded by the
run's seed and ``e``), mapped with NumPy and ``random`` seeded by the run's seed and ``p``.
Iteration ``i`` of a run with a total batch ``B`` trains on positions ``i*B .. (i+1)*B - 1``,
rank ``r`` of ``R`` on its ``B / R`` consecutive share. So the data of an iteration depends on
the seed, the iteration and the total batch only: not on restarts, data-loader workers or
the number of processes. Images are batched in stream order, without aspect-ratio grouping
(as DETR). Augmentations must draw from NumPy or ``random`` (Detectron2's do).
"""

import itertools
import random
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "SampleStream",
    "StreamBatches",
    "build_stream_loader",
    "derive_seed",
    "serialize_dataset",
]

# Purposes of the seeds derived from a run's seed (one independent stream each).
SHUFFLE_SEED, AUGMENT_SEED, STEP_SEED = 0, 1, 2
# Seeds handed to NumPy's legacy RNG must fit in 32 bits.
SEED_BITS = 32


def derive_seed(*keys: int) -> int:
    """A 32-bit seed determined by non-negative integer ``keys`` (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0]) % (1 << SEED_BITS)


def serialize_dataset(dataset: Sequence[Dict[str, Any]]) -> DatasetFromList:
    """``dataset`` serialised once, shared by the data-loader workers without copies (as
    Detectron2's loaders do)."""
    if isinstance(dataset, DatasetFromList):
        return dataset
    return DatasetFromList(list(dataset), copy=False, serialize=True)


class SampleStream(Dataset):
    """Map-style view of the infinite training stream: ``stream[p]`` is the mapped sample at
    position ``p`` (see the module docstring)."""

    def __init__(
        self, dataset: Sequence[Dict[str, Any]], mapper: Callable[[Dict], Any], seed: int
    ) -> None:
        if not len(dataset):
            raise ValueError("The training dataset is empty.")
        self._dataset = serialize_dataset(dataset)
        self._mapper = mapper
        self._seed = seed
        self._epoch = -1
        self._permutation: List[int] = []

    def permutation(self, epoch: int) -> List[int]:
        """Dataset indices in the order of ``epoch`` (the last one is cached)."""
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derive_seed(self._seed, SHUFFLE_SEED, epoch))
            self._permutation = torch.randperm(len(self._dataset), generator=generator).tolist()
            self._epoch = epoch
        return self._permutation

    def __getitem__(self, position: int) -> Any:
        epoch, offset = divmod(position, len(self._dataset))
        record = self._dataset[self.permutation(epoch)[offset]]
        seed = derive_seed(self._seed, AUGMENT_SEED, position)
        np.random.seed(seed)
        random.seed(seed)
        return self._mapper(record)


class StreamBatches(Sampler):
    """Positions of this rank's batch of iterations ``start_iter, start_iter + 1, ...``."""

    def __init__(self, batch_per_rank: int, rank: int, world_size: int, start_iter: int) -> None:
        self.batch_per_rank = batch_per_rank
        self.rank = rank
        self.world_size = world_size
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[List[int]]:
        total = self.batch_per_rank * self.world_size
        for iteration in itertools.count(self.start_iter):
            first = iteration * total + self.rank * self.batch_per_rank
            yield list(range(first, first + self.batch_per_rank))


def build_stream_loader(
    stream: SampleStream,
    total_batch_size: int,
    rank: int,
    world_size: int,
    start_iter: int,
    num_workers: int,
) -> DataLoader:
    """An infinite loader of this rank's batches (lists of mapped samples) from ``start_iter``."""
    if total_batch_size % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {total_batch_size} is not divisible by the number of "
            f"processes {world_size}."
        )
    batches = StreamBatches(total_batch_size // world_size, rank, world_size, start_iter)
    return DataLoader(
        stream, batch_sampler=batches, num_workers=num_workers, collate_fn=trivial_batch_collator
    )
