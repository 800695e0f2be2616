"""SD-VAE (``diffusers.AutoencoderKL``) between uint8 images and per-channel standardized latents.

The paper trains on SD-VAE (ft-EMA) latents z standardized per channel c: z̃_c = (z_c − m_c) / s_c, with the
constants of docs/ANCHORS.md (:data:`PAPER_LATENT_STATS`); sampling inverts it, z = s ⊙ z̃ + m, then decodes. Images are
uint8 arrays in the ADM layout (N, H, W, 3); the VAE sees x = u / 127.5 − 1 ∈ [−1, 1] and decodes back with
u = round(127.5 · (x + 1)) clipped to [0, 255] (DiT's ``127.5 x + 128`` then truncation, i.e. the same rounding).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SD_VAE_ID = "stabilityai/sd-vae-ft-ema"


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean m and standard deviation s of the raw VAE latents."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"LatentStats: mean and std need one equal, non-zero length, got {self.mean}, {self.std}")
        if any(not np.isfinite(s) or s <= 0 for s in self.std):
            raise ValueError(f"LatentStats.std: expected finite positive values, got {self.std}")

    def _views(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if z.ndim != 4 or z.shape[1] != len(self.mean):
            raise ValueError(f"latents: expected shape (B, {len(self.mean)}, h, w), got {tuple(z.shape)}")
        m = torch.tensor(self.mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
        return m, s

    def standardize(self, z: Tensor) -> Tensor:
        """z̃ = (z − m) / s per channel; z of shape (B, C, h, w)."""
        m, s = self._views(z)
        return (z - m) / s

    def unstandardize(self, z_std: Tensor) -> Tensor:
        """z = s ⊙ z̃ + m per channel, the inverse of :meth:`standardize`."""
        m, s = self._views(z_std)
        return z_std * s + m


# docs/ANCHORS.md: SD-VAE (ft-EMA) raw latent statistics the paper standardizes with, by image resolution, to the
# digits of the official configs (encoder.raw_mean / raw_std of configs/im256_*.yaml and im512_*.yaml).
PAPER_LATENT_STATS = {
    256: LatentStats(mean=(0.86488, -0.27787343, 0.21616915, 0.3738409),
                     std=(4.85503674, 5.31922414, 3.93725398, 3.9870003)),
    512: LatentStats(mean=(1.56, -0.695, 0.483, 0.729), std=(5.27, 5.91, 4.21, 4.31)),
}


class VAEWeightsError(RuntimeError):
    """The VAE weights could not be found (offline, wrong path, or missing files)."""


def _how_to_provide() -> str:
    return (
        f"Provide the weights in one of two ways: (1) on a machine with network access run "
        f"`hf download {SD_VAE_ID} --local-dir /path/to/sd-vae-ft-ema` (`huggingface-cli download` before "
        f"huggingface_hub 1.0; or "
        f"`python -c \"from diffusers import AutoencoderKL; AutoencoderKL.from_pretrained('{SD_VAE_ID}')"
        f".save_pretrained('/path/to/sd-vae-ft-ema')\"`), copy the folder (config.json + "
        f"diffusion_pytorch_model.safetensors) here and pass --vae /path/to/sd-vae-ft-ema; or (2) let the hub "
        f"download '{SD_VAE_ID}' once with network access (it is then cached under HF_HOME), unset HF_HUB_OFFLINE."
    )


def load_vae(source: str = SD_VAE_ID, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load an ``AutoencoderKL`` from a local folder or a hub id, frozen and in eval mode.

    Raises :class:`VAEWeightsError` naming how to provide the weights when they cannot be found (no network,
    ``HF_HUB_OFFLINE=1``, or a local path that does not exist).
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:  # pragma: no cover - exercised only without the optional dependency
        raise ImportError("full_scale.data.vae needs `diffusers` (pip install 'tvm-theory[full]')") from e
    looks_local = os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)
    if looks_local:
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise VAEWeightsError(f"vae: no AutoencoderKL folder at '{path}' (config.json missing). "
                                  + _how_to_provide())
    try:
        vae = AutoencoderKL.from_pretrained(str(Path(source).expanduser()) if looks_local else source,
                                            torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise VAEWeightsError(f"vae: could not load '{source}' ({type(e).__name__}: {str(e).splitlines()[0]}). "
                              + _how_to_provide()) from e
    return vae.to(device).eval().requires_grad_(False)


def images_to_vae_input(images: Tensor | np.ndarray, device, dtype) -> Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [−1, 1]: x = u / 127.5 − 1."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 of shape (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    return images.to(device).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0


POSTERIORS = ("mean-std", "mean", "sample")


@torch.no_grad()
def encode_images(vae, images: Tensor | np.ndarray, *, posterior: str = "mean-std",
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """Raw (unstandardized) latents of uint8 images (B, H, W, 3): (z, σ), float32 (B, C, H/f, W/f) on the CPU.

    The encoder gives a diagonal Gaussian posterior N(μ(x), diag σ(x)²) per image. ``posterior`` says what is kept:

    * ``"mean-std"`` (default, the official code's ``StabilityVAEEncoder``): (μ, σ); the training set draws a fresh
      z = μ + σ ⊙ ε, ε ~ N(0, I), each time it uses the item (:class:`full_scale.data.latents.LatentDataset`);
    * ``"mean"``: (μ, None), every use sees the same z = μ;
    * ``"sample"``: (μ + σ ⊙ ε, None) with ε drawn once from ``generator`` (the DiT / fast-DiT convention).

    σ is diffusers' ``exp(logvar / 2)`` with logvar clamped to [−30, 20].
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior: expected one of {', '.join(POSTERIORS)}, got {posterior!r}")
    param = next(vae.parameters())
    dist = vae.encode(images_to_vae_input(images, param.device, param.dtype)).latent_dist
    mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
    if posterior == "mean-std":
        return mean, std
    if posterior == "mean":
        return mean, None
    eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return mean + std * eps, None


@torch.no_grad()
def decode_latents(vae, latents: Tensor, stats: LatentStats, *, batch_size: int = 32) -> np.ndarray:
    """Standardized latents (B, C, h, w) → uint8 images (B, H, W, 3): z = s ⊙ z̃ + m, x = D(z), round to uint8.

    This is the sampler's decode hook; it runs in chunks of ``batch_size`` on the VAE's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    param = next(vae.parameters())
    out = []
    for chunk in torch.as_tensor(latents).split(batch_size):
        z = stats.unstandardize(chunk.to(param.device, torch.float32)).to(param.dtype)
        x = vae.decode(z).sample.float()
        u = torch.clamp(torch.round(127.5 * (x + 1.0)), 0, 255).to(torch.uint8)
        out.append(u.permute(0, 2, 3, 1).cpu().numpy())
    if not out:
        raise ValueError("latents: expected at least one latent, got an empty batch")
    return np.concatenate(out)
