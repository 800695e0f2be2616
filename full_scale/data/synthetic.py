"""Training data drawn on the fly, no disk: the base :class:`SeededStream` and random standardized latents with the
shape of real ones, for throughput benchmarks and smoke tests (``data.kind: synthetic``)."""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_TRAIN_ITEMS = 1_281_167


class SeededStream(torch.utils.data.IterableDataset):
    """Items drawn on the fly: item i of epoch e on rank r is ``self.draw(numpy.random.default_rng([seed, e, r, i]))``
    (reproducible, different across ranks and epochs); an epoch has ``num_items`` split evenly over the ranks, and
    DataLoader worker w of W takes every W-th index. Subclasses give ``draw(rng) -> (x, label)``."""

    def __init__(self, *, rank: int = 0, world_size: int = 1, seed: int = 0, num_items: int = IMAGENET_TRAIN_ITEMS):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
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
            yield self.draw(np.random.default_rng([self.seed, self.epoch, self.rank, i]))

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class SyntheticLatents(SeededStream):
    """z ~ N(0, I) of shape (C, H, W) with labels uniform on {0, …, K − 1}, yielded as
    :class:`full_scale.data.latents.LatentDataset` yields them (float32 z, int64 scalar label); an epoch has
    ImageNet's 1,281,167 items."""

    def __init__(self, latent_shape: tuple[int, int, int], num_classes: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_items: int = IMAGENET_TRAIN_ITEMS):
        super().__init__(rank=rank, world_size=world_size, seed=seed, num_items=num_items)
        self.latent_shape, self.num_classes = tuple(latent_shape), int(num_classes)

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        z = rng.standard_normal(self.latent_shape, dtype=np.float32)
        return torch.from_numpy(z), torch.tensor(int(rng.integers(self.num_classes)))
