"""FID and Inception Score with the 2015 TensorFlow Inception-v3 graph that ADM's reference evaluator uses.

The network is the TF graph's architecture (the "FID Inception": average pools that exclude padding, a max pool in
the last block's pool branch, 1008 logits) written in PyTorch, with parameter names of the standard PyTorch port of
those weights (``pt_inception-2015-12-05-6726825d.pth``, shared by pytorch-fid and torch-fidelity), so that file
loads directly. Its input path follows the graph: uint8 RGB → legacy TF1 bilinear resize to 299×299
(``align_corners=False`` without half-pixel centres) → (x − 128) / 128. Features are pool_3 (2048); the IS uses the
logits without the fc bias (as ADM's and the original IS code do).

FID = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) = W2(N(μ₁, Σ₁), N(μ₂, Σ₂))² (docs/THEORY.md §7), computed with
:func:`tvm_theory.analysis.transport.w2_gaussian`, or — when one side is n < D samples — exactly through an n × n matrix
(:func:`frechet_distance_to_samples`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvm_theory.analysis.transport import w2_gaussian

INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008


class InceptionWeightsError(RuntimeError):
    """The Inception weights could not be found or downloaded."""


# --------------------------------------------------------------------------------------------------------- resize

def tf1_bilinear_matrix(n_in: int, n_out: int, dtype=torch.float64) -> Tensor:
    """(n_out, n_in) matrix of TF1 ``resize_bilinear`` (align_corners=False, legacy): output i samples the input at
    x = i · (n_in / n_out) (float32, as TF does), i.e. (1 − f)·in[⌊x⌋] + f·in[min(⌊x⌋ + 1, n_in − 1)] with
    f = x − ⌊x⌋."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)  # TF computes the source position in float32
    x = (torch.arange(n_out, dtype=torch.float32) * scale).double()
    lo = x.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = x - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - frac
    m[torch.arange(n_out), hi] += frac
    return m.to(dtype)


def resize_tf1(x: Tensor, size: int) -> Tensor:
    """Resize (B, C, H, W) to (B, C, size, size) with :func:`tf1_bilinear_matrix` along each axis."""
    mh = tf1_bilinear_matrix(x.shape[2], size, x.dtype).to(x.device)
    mw = tf1_bilinear_matrix(x.shape[3], size, x.dtype).to(x.device)
    return torch.einsum("oh,bchw,pw->bcop", mh, x, mw)


# -------------------------------------------------------------------------------------------------------- network

class _Conv(nn.Sequential):
    """conv (no bias) → batch norm (ε = 1e-3) → ReLU; parameter names ``conv.*`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)
        self.relu = nn.ReLU()


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b/c/d, 35×35: 64 + 64 + 96 + pool_features channels
    def __init__(self, c: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(c, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(c, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(c, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(c, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _BlockB(nn.Module):  # Mixed_6a: 35×35 → 17×17, 384 + 96 + c channels
    def __init__(self, c: int):
        super().__init__()
        self.branch3x3 = _Conv(c, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(c, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):  # Mixed_6b–e, 17×17: factorized 7×7 convolutions, 4 × 192 channels
    def __init__(self, c: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(c, 192, 1)
        self.branch7x7_1 = _Conv(c, c7, 1)
        self.branch7x7_2, self.branch7x7_3 = _Conv(c7, c7, **row), _Conv(c7, 192, **col)
        self.branch7x7dbl_1 = _Conv(c, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = _Conv(c7, c7, **col), _Conv(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _Conv(c7, c7, **col), _Conv(c7, 192, **row)
        self.branch_pool = _Conv(c, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):  # Mixed_7a: 17×17 → 8×8, 320 + 192 + c channels
    def __init__(self, c: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(c, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(c, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b/c, 8×8: 320 + 768 + 768 + 192 = 2048 channels
    def __init__(self, c: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the TF graph's last block pools with max, the one before with average
        self.branch1x1 = _Conv(c, 320, 1)
        self.branch3x3_1 = _Conv(c, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(c, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(c, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3. ``forward(images)`` takes uint8 (B, 3, H, W) and returns (pool_3 features (B, 2048),
    logits without bias (B, 1008)), both float32."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = (resize_tf1(images.float(), INPUT_SIZE) - 128.0) / 128.0  # (B, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (B, 64, 73, 73)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # … → (B, 768, 17, 17) → (B, 2048, 8, 8)
        pool3 = x.mean(dim=(2, 3))  # (B, 2048)
        return pool3, pool3 @ self.fc.weight.T


def load_inception(weights: str | os.PathLike | None = None, *, device="cpu") -> InceptionV3:
    """The FID Inception in eval mode with weights from a local ``.pth`` / ``.safetensors`` state dict, or (None)
    from the usual download into torch.hub's cache. Raises :class:`InceptionWeightsError` with instructions."""
    if weights is None:
        try:
            state = torch.hub.load_state_dict_from_url(INCEPTION_URL, map_location="cpu", progress=False,
                                                       check_hash=True, weights_only=True)
        except Exception as e:  # urllib / ssl / hash errors: all mean "not available here"
            name = INCEPTION_URL.rsplit("/", 1)[1]
            raise InceptionWeightsError(
                f"inception: could not download the FID Inception weights ({type(e).__name__}: {e}). Download "
                f"{INCEPTION_URL} on a machine with network access and pass its path with --inception, or place it "
                f"at {Path(torch.hub.get_dir()) / 'checkpoints' / name}.") from e
    else:
        path = Path(weights)
        if not path.is_file():
            raise InceptionWeightsError(f"inception: no weights file at '{path}'; get {INCEPTION_URL}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    model = InceptionV3()
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("AuxLogits.")]
    if missing or unexpected:
        raise InceptionWeightsError(f"inception: weights do not fit the FID Inception: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}")
    return model.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------- metrics

def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features in float64 (``np.cov(rowvar=False)``)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected (N, D) with N >= 2, got {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))  # np.cov gives a 0-d array for D = 1


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}), the squared W2 between the two Gaussians."""
    m1, s1, m2, s2 = (torch.as_tensor(np.asarray(a, np.float64)) for a in (mu1, sigma1, mu2, sigma2))
    return w2_gaussian(m1, s1, m2, s2) ** 2


def frechet_distance_to_samples(features: np.ndarray, mu2, sigma2) -> float:
    """The same distance with (μ₁, Σ₁) the mean and unbiased covariance of n feature rows, exact for any n.

    With B = (F − μ₁)ᵀ / sqrt(n − 1) (D × n), Σ₁ = B Bᵀ, and Σ₂^{1/2} Σ₁ Σ₂^{1/2} has the non-zero spectrum of
    the n × n matrix Bᵀ Σ₂ B, so tr((Σ₁Σ₂)^{1/2}) = Σ sqrt(eig(Bᵀ Σ₂ B)): O(n D²) work instead of O(D³).
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected (N, D) with N >= 2, got {f.shape}")
    mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    if mu2.shape != (f.shape[1],) or sigma2.shape != (f.shape[1],) * 2:
        raise ValueError(f"mu2, sigma2: expected shapes ({f.shape[1]},) and {(f.shape[1],) * 2}, got "
                         f"{mu2.shape} and {sigma2.shape}")
    mu1 = f.mean(0)
    b = (f - mu1).T / math.sqrt(f.shape[0] - 1)
    small = b.T @ sigma2 @ b
    evals = np.linalg.eigvalsh(0.5 * (small + small.T))
    cross = np.sqrt(np.clip(evals, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + (b * b).sum() + np.trace(sigma2) - 2 * cross)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))) on each of ``splits`` consecutive chunks, p = softmax(logits); returns
    (mean, std) over chunks. Chunk i holds rows ⌊iN/splits⌋ … ⌊(i+1)N/splits⌋ − 1, as in the original IS code and
    torch-fidelity (ADM cuts chunks of 5000, the same ten for N = 50,000)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.ndim != 2 or not 1 <= splits <= z.shape[0]:
        raise ValueError(f"logits, splits: expected (N, K) logits and 1 <= splits <= N, got {tuple(z.shape)}, {splits}")
    logp = torch.log_softmax(z, dim=1)
    n = z.shape[0]
    scores = []
    for i in range(splits):
        chunk = logp[i * n // splits:(i + 1) * n // splits]
        log_py = torch.logsumexp(chunk, dim=0) - math.log(chunk.shape[0])  # log of the chunk's marginal p(y)
        kl = (chunk.exp() * (chunk - log_py)).sum(1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))
