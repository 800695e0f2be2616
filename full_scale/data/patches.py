"""Natural-image patches from the two photographs scikit-learn ships, as a small pseudo-class image data set.

Data: ``sklearn.datasets.load_sample_images()`` — china.jpg and flower.jpg (427 × 640 RGB each), read from the
installed package (no download). Each photograph is converted to grey (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B),
averaged over 2 × 2 pixel blocks (213 × 320), cut into non-overlapping 8 × 8 patches (26 × 40 = 1040 per image) and
mapped to x = grey / 127.5 − 1 ∈ [−1, 1], shape (1, 8, 8). The label is the photograph (0 china, 1 flower): a
pseudo-class, so the same class-conditional DiT and CFG recipe as the digits apply. A fixed split holds out 150
patches per photograph (300) for evaluation; no pixel is shared between patches, so held-out patches are unseen.

Scores of generated patches (:func:`evaluate`), each with its floor (the same score for an equally sized draw of
training patches against the held-out set):

* Fréchet distance — W2²(N(m̂, Ĉ), N(m, C)) between Gaussians fitted to the 64 pixels of samples and held-out patches
  (``tvm_theory.analysis.transport.w2_gaussian`` squared; pixel space, since there is no patch classifier);
* W2 — exact W2 in pixel space (``tvm_theory.analysis.transport.w2``, POT).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tvm_theory.analysis.transport import w2, w2_gaussian

from .digits import DigitsDataset

HELD_OUT_PER_CLASS = 150
SPLIT_SEED = 0
NUM_CLASSES = 2
PATCH = 8
DOWNSAMPLE = 2
SHAPE = (1, PATCH, PATCH)
_LUMA = np.array([0.299, 0.587, 0.114])


def all_patches() -> tuple[Tensor, Tensor]:
    """Every patch (N, 1, 8, 8) float32 in [−1, 1] with its photograph index (N,) int64 (module docstring)."""
    from sklearn.datasets import load_sample_images

    xs, ys = [], []
    for label, image in enumerate(load_sample_images().images):
        grey = image.astype(np.float64) @ _LUMA  # (H, W) in [0, 255]
        h, w = (s // DOWNSAMPLE for s in grey.shape)
        grey = grey[: h * DOWNSAMPLE, : w * DOWNSAMPLE].reshape(h, DOWNSAMPLE, w, DOWNSAMPLE).mean(axis=(1, 3))
        gh, gw = h // PATCH, w // PATCH
        patches = grey[: gh * PATCH, : gw * PATCH].reshape(gh, PATCH, gw, PATCH).transpose(0, 2, 1, 3)
        xs.append(patches.reshape(-1, 1, PATCH, PATCH))
        ys.append(np.full(gh * gw, label))
    x = torch.tensor(np.concatenate(xs) / 127.5 - 1.0, dtype=torch.float32)
    return x, torch.tensor(np.concatenate(ys), dtype=torch.int64)


def load_split(split: str) -> tuple[Tensor, Tensor]:
    """Patches (N, 1, 8, 8) and labels (N,) of the ``train`` or ``held_out`` split (fixed, stratified)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split: expected 'train' or 'held_out', got {split!r}")
    x, y = all_patches()
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.concatenate([rng.permutation(np.flatnonzero(y.numpy() == c))[:HELD_OUT_PER_CLASS]
                           for c in range(NUM_CLASSES)])
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    keep = torch.from_numpy(mask if split == "held_out" else ~mask)
    return x[keep], y[keep]


class PatchesDataset(DigitsDataset):
    """The training patches with the interface of :class:`full_scale.data.digits.DigitsDataset` (same epoch shuffling and
    rank sharding): yields (x float32 (1, 8, 8), label int64 scalar tensor)."""

    num_classes = NUM_CLASSES
    latent_shape = SHAPE
    load_split = staticmethod(load_split)


def _gaussian(x: Tensor) -> tuple[Tensor, Tensor]:
    f = x.flatten(1).double()
    return f.mean(0), torch.cov(f.T)


@torch.no_grad()
def evaluate(samples: Tensor, *, floor_seed: int = 0) -> dict:
    """Pixel-space Fréchet distance and exact W2 of generated patches (N, 1, 8, 8) to the held-out patches, with
    their floors (module docstring)."""
    if samples.shape[1:] != SHAPE:
        raise ValueError(f"samples: expected (N, 1, 8, 8), got {tuple(samples.shape)}")
    samples = samples.float().cpu()
    held_x, _ = load_split("held_out")
    train_x, _ = load_split("train")
    gen = torch.Generator().manual_seed(floor_seed)
    ref_x = train_x[torch.randperm(len(train_x), generator=gen)[: len(samples)]]
    held_stats = _gaussian(held_x)

    def scores(x: Tensor) -> tuple[float, float]:
        return w2_gaussian(*_gaussian(x), *held_stats) ** 2, w2(x.flatten(1).double(), held_x.flatten(1).double())

    fd, w2_pix = scores(samples)
    fd_floor, w2_floor = scores(ref_x)
    return {"n": len(samples), "frechet": fd, "frechet_floor": fd_floor, "w2": w2_pix, "w2_floor": w2_floor}
