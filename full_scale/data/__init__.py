"""Training data of the full-scale trainer: one table from ``data.kind`` to its builder.

Every kind yields (x float32 (C, H, W), label int64 scalar) per rank, exposes ``latent_shape``, ``num_classes`` and
``set_epoch(e)``, and is built by ``DATASETS[kind].build(config, rank, world_size)``:

* ``latents`` — SD-VAE latents prepared on disk (:mod:`full_scale.data.latents`, ``python -m full_scale.data``);
* ``digits`` — scikit-learn's 8×8 digits in memory (:mod:`full_scale.data.digits`);
* ``patches`` — 8×8 grey patches of scikit-learn's sample photographs (:mod:`full_scale.data.patches`);
* ``synthetic`` — N(0, I) latents of the model's input shape, no disk (:mod:`full_scale.data.synthetic`).
* ``analytic`` — draws of a low-rank Gaussian mixture whose flow is exact, no disk; its parameters come from
  ``data.analytic_*`` and the seed in the config (:mod:`full_scale.data.analytic`, ``python -m full_scale.verify``).

``pixels`` says whether samples are images in [−1, 1] (written as PNG grids directly) or latents (decoded by a VAE);
``scoring`` names the module with a held-out split and ``evaluate`` for the in-memory image sets.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


def _latents(cfg, rank: int, world_size: int):
    if not cfg.data.root:
        raise ValueError("data.root: the latents kind needs a prepared latent directory "
                         "(python -m full_scale.data prepare ...); pass --set data.root=DIR")
    from .latents import LatentDataset
    return LatentDataset(cfg.data.root, rank=rank, world_size=world_size, seed=cfg.train.seed)


def _digits(cfg, rank: int, world_size: int):
    from .digits import DigitsDataset
    return DigitsDataset(rank=rank, world_size=world_size, seed=cfg.train.seed)


def _patches(cfg, rank: int, world_size: int):
    from .patches import PatchesDataset
    return PatchesDataset(rank=rank, world_size=world_size, seed=cfg.train.seed)


def _synthetic(cfg, rank: int, world_size: int):
    from .synthetic import SyntheticLatents
    m = cfg.model
    return SyntheticLatents((m.in_channels, m.input_size, m.input_size), m.num_classes, rank=rank,
                            world_size=world_size, seed=cfg.train.seed)


def _analytic(cfg, rank: int, world_size: int):
    from .analytic import AnalyticDataset
    return AnalyticDataset(cfg, rank=rank, world_size=world_size)


@dataclass(frozen=True)
class DatasetKind:
    """How to build one kind of training data, and what its samples are."""

    build: Callable  # (config: full_scale.config.Config, rank, world_size) → dataset
    pixels: bool  # samples are images in [−1, 1]; False: latents (a VAE decodes them)
    scoring: str | None = None  # module with load_split, NUM_CLASSES, SHAPE and evaluate (held-out scores)

    def scoring_module(self):
        if self.scoring is None:
            raise ValueError("data.kind: this kind has no held-out split to score samples against")
        return importlib.import_module(self.scoring)


DATASETS: dict[str, DatasetKind] = {
    "latents": DatasetKind(_latents, pixels=False),
    "digits": DatasetKind(_digits, pixels=True, scoring="full_scale.data.digits"),
    "patches": DatasetKind(_patches, pixels=True, scoring="full_scale.data.patches"),
    "synthetic": DatasetKind(_synthetic, pixels=False),
    "analytic": DatasetKind(_analytic, pixels=False),
}


def build_dataset(cfg, rank: int = 0, world_size: int = 1):
    """The training set of ``cfg.data.kind`` for this rank (``cfg`` a :class:`full_scale.config.Config`)."""
    return DATASETS[cfg.data.kind].build(cfg, rank, world_size)
