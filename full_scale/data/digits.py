"""scikit-learn's handwritten digits as a class-conditional image data set, and how generated digits are scored.

Data: ``sklearn.datasets.load_digits`` — 1797 grey 8×8 images with pixel values 0…16 and labels 0…9, mapped to
x = pixel / 8 − 1 ∈ [−1, 1], shape (1, 8, 8). A fixed stratified split holds out 30 images per class (300) for
evaluation; the remaining 1497 train the generator and the classifier.

Scores of generated samples x̂ conditioned on labels c (:func:`evaluate`):

* accuracy — fraction with argmax classifier(x̂) = c (chance: 0.1);
* Fréchet distance — W2²(N(m̂, Ĉ), N(m, C)) between Gaussians fitted to classifier features of the samples and of the
  held-out digits (``tvm_theory.analysis.transport.w2_gaussian`` squared), like FID with a digits network;
* W2 — exact W2 in pixel space (``tvm_theory.analysis.transport.w2``, POT) between the samples and the held-out digits.

Each comes with its floor: the same score between an equally sized draw of *training* digits and the held-out set,
the value a perfect generator would reach up to sampling noise.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tvm_theory.analysis.transport import w2, w2_gaussian
from tvm_theory.io import atomic_write

HELD_OUT_PER_CLASS = 30
SPLIT_SEED = 0
NUM_CLASSES = 10
SHAPE = (1, 8, 8)


def load_split(split: str) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 8, 8) float32 in [−1, 1] and labels (N,) int64 of the ``train`` or ``held_out`` split."""
    from sklearn.datasets import load_digits

    if split not in ("train", "held_out"):
        raise ValueError(f"split: expected 'train' or 'held_out', got {split!r}")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div(8.0).sub(1.0)[:, None]
    y = torch.tensor(digits.target, dtype=torch.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.concatenate([rng.permutation(np.flatnonzero(digits.target == c))[:HELD_OUT_PER_CLASS]
                           for c in range(NUM_CLASSES)])
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    keep = torch.from_numpy(mask if split == "held_out" else ~mask)
    return x[keep], y[keep]


class DigitsDataset(torch.utils.data.IterableDataset):
    """The training digits with the interface of ``full_scale.data.latents.LatentDataset``.

    Epoch e shuffles all N items with ``numpy.random.default_rng([seed, e])``; rank r of R takes π[r], π[r + R], …
    over the first ⌊N/R⌋·R entries. Yields (x float32 (1, 8, 8), label int64 scalar tensor).
    """

    num_classes = NUM_CLASSES
    latent_shape = SHAPE
    load_split = staticmethod(load_split)  # subclasses over other images override this

    def __init__(self, *, rank: int = 0, world_size: int = 1, seed: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        self.x, self.y = self.load_split("train")
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.y) // self.world_size

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))
        for i in perm[: len(self) * self.world_size][self.rank:: self.world_size].tolist():
            yield self.x[i], self.y[i]


class Classifier(nn.Module):
    """MLP 64 → 256 → 64 → 10 with SiLU; :meth:`features` is the 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.SiLU(), nn.Linear(256, 64), nn.SiLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def default_cache_dir() -> Path:
    return Path(os.environ.get("TVM_THEORY_CACHE", Path.home() / ".cache" / "tvm_theory"))


def train_classifier(epochs: int = 300, seed: int = 0) -> Classifier:
    """Full-batch AdamW with light Gaussian input noise on the training split (deterministic given ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = Classifier()
    x, y = load_split("train")
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(epochs):
        noisy = x + 0.1 * torch.randn(x.shape, generator=gen)
        loss = nn.functional.cross_entropy(clf(noisy), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


def load_classifier(cache_dir: str | os.PathLike | None = None) -> Classifier:
    """The digits classifier from ``cache_dir/digits_classifier.safetensors``, trained and cached on first use."""
    path = Path(cache_dir or default_cache_dir()) / "digits_classifier.safetensors"
    clf = Classifier()
    if path.exists():
        try:
            clf.load_state_dict(load_file(path), strict=True)
        except Exception as err:  # a corrupted or foreign file must not be used silently
            raise RuntimeError(f"{path}: not a valid digits classifier ({err}); delete it to retrain") from err
        return clf.eval()
    clf = train_classifier()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp)))
    return clf


def _gaussian(features: Tensor) -> tuple[Tensor, Tensor]:
    f = features.double()
    return f.mean(0), torch.cov(f.T)


@torch.no_grad()
def evaluate(samples: Tensor, labels: Tensor, classifier: Classifier, *, floor_seed: int = 0) -> dict:
    """Scores of generated digits (N, 1, 8, 8) conditioned on ``labels`` (N,), and their floors (module docstring)."""
    if samples.shape[1:] != SHAPE or labels.shape != samples.shape[:1]:
        raise ValueError(f"samples, labels: expected (N, 1, 8, 8) and (N,), got {tuple(samples.shape)}, "
                         f"{tuple(labels.shape)}")
    samples = samples.float().cpu()
    held_x, held_y = load_split("held_out")
    train_x, _ = load_split("train")
    gen = torch.Generator().manual_seed(floor_seed)
    ref_x = train_x[torch.randperm(len(train_x), generator=gen)[: len(samples)]]
    feats_held = classifier.features(held_x)

    def scores(x: Tensor) -> tuple[float, float]:
        m, c = _gaussian(classifier.features(x))
        fd = w2_gaussian(m, c, *_gaussian(feats_held)) ** 2
        return fd, w2(x.flatten(1).double(), held_x.flatten(1).double())

    fd, w2_pix = scores(samples)
    fd_floor, w2_floor = scores(ref_x)
    return {
        "n": len(samples),
        "accuracy": float((classifier(samples).argmax(1) == labels.cpu()).float().mean()),
        "classifier_held_out_accuracy": float((classifier(held_x).argmax(1) == held_y).float().mean()),
        "frechet": fd, "frechet_floor": fd_floor,
        "w2": w2_pix, "w2_floor": w2_floor,
    }
