"""A resumable, infinite stream of training keys over :class:`perceptsr.data.EpochSampler`.

The data package's ``EpochSampler`` gives one epoch of this rank's ``(epoch, index)`` keys, and a
sample depends only on ``(seed, epoch, index)``. This wrapper chains epochs forever (so one
``DataLoader`` iterator lives for the whole run, with no worker restarts between epochs), cuts
each epoch to whole batches (the same number on every rank, so DDP never waits for a rank that
ran out), and can start at any batch: after ``k`` batches the stream is at epoch
``k // batches_per_epoch``, batch ``k % batches_per_epoch``. A run resumed at iteration ``k``
therefore sees exactly the batches an uninterrupted run sees, whatever ``num_workers`` is.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


class ResumableStream(Sampler):
    """Yields ``base``'s keys epoch after epoch, forever, starting after ``start_batch`` batches."""

    def __init__(self, base, batch_size: int, start_batch: int = 0):
        self.base = base
        self.batch_size = int(batch_size)
        self.batches_per_epoch = len(base) // self.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{len(base)} samples per process is less than one batch of {batch_size}")
        self.start_batch = int(start_batch)

    def position(self, batches_done: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) after ``batches_done`` batches from the start."""
        return divmod(int(batches_done), self.batches_per_epoch)

    def __iter__(self) -> Iterator:
        epoch, skip = self.position(self.start_batch)
        per_epoch = self.batches_per_epoch * self.batch_size
        while True:
            self.base.set_epoch(epoch)
            keys = list(self.base)[:per_epoch]
            yield from keys[skip * self.batch_size:]
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # only consulted by len(DataLoader); the stream itself never ends
        return 2**62
