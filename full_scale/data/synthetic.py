"""Random standardized latents: training data with the shape of real latents and no disk, for throughput benchmarks
and smoke tests (``data.kind: synthetic``)."""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_TRAIN_ITEMS = 1_281_167


class SyntheticLatents(torch.utils.data.IterableDataset):
    """z ~ N(0, I) of shape (C, H, W) with labels uniform on {0, …, K − 1}, yielded as
    :class:`full_scale.data.latents.LatentDataset` yields them (float32 z, int64 scalar label).

    Item i of epoch e on rank r is drawn from ``numpy.random.default_rng([seed, e, r, i])``: reproducible, different
    across ranks and epochs, and split over DataLoader workers by index. An epoch has ImageNet's 1,281,167 items
    split evenly over the ranks."""

    def __init__(self, latent_shape: tuple[int, int, int], num_classes: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_items: int = IMAGENET_TRAIN_ITEMS):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        self.latent_shape, self.num_classes = tuple(latent_shape), int(num_classes)
        self.rank, self.world_size, self.seed, self.num_items, self.epoch = rank, world_size, seed, num_items, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items // self.world_size

    def __iter__(self):
        indices = range(len(self))
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            indices = indices[worker.id:: worker.num_workers]
        for i in indices:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, i])
            z = rng.standard_normal(self.latent_shape, dtype=np.float32)
            yield torch.from_numpy(z), torch.tensor(int(rng.integers(self.num_classes)))
