"""Decode sampled latents to images, export ADM-style ``.npz`` batches, and compute FID / Inception Score.

Commands (each runs on one process or under ``torchrun``, the images split into contiguous per-rank chunks)::

    python -m full_scale.evaluation decode --latents samples.safetensors --vae stabilityai/sd-vae-ft-ema \\
        --latent-stats paper256 --out samples.npz          # ADM batch: arr_0 uint8 (N, H, W, 3), arr_1 labels
    python -m full_scale.evaluation export --images DIR --out samples.npz    # a folder of PNG/JPEG → ADM batch
    python -m full_scale.evaluation stats --images /data/in256 --out in256.pkl  # dataset statistics (edm2 form)
    python -m full_scale.evaluation fid --samples samples.npz --ref in256.pkl --out fid.json
    python -m full_scale.evaluation fid --samples samples.npz --ref VIRTUAL_imagenet256_labeled.npz --prc

Image inputs (``--images``, ``--samples``, ``--ref``) are an ADM ``.npz`` (``arr_0``), a folder of images, or a
folder of ``.npz`` batches (e.g. ``prepare --images``'s ``images-*.npz``: the training set's center crops).
Reference statistics (:func:`load_reference_stats`) come in two forms, both read by ``--ref`` and both written by
``stats`` (chosen by the suffix of ``--out``):

* **dataset statistics**, edm2's form: a ``.pkl`` holding ``{"fid": {"mu", "sigma"}, "num_images"}``, the Inception
  mean and covariance of every training image (edm2's ``calculate_metrics.py ref``; the official TVM evaluation,
  ``eval.ref_stats: dataset-refs/img256.pkl``, scores ``fid50k_full`` against it). ``stats --images`` on the
  prepared crops gives them here;
* **ADM's reference batch**, ``VIRTUAL_imagenet256_labeled.npz``: ``mu``/``sigma`` precomputed by ADM over its
  training set, plus 10,000 images (``arr_0``) for precision and recall; also the form of a ``stats --out X.npz``.

The two references are computed by different pipelines (ADM: TensorFlow; edm2: a TorchScript port of the same 2015
Inception graph, and edm2's own crops), so FIDs against them agree only to within that difference; which one is the
number of record is documented in docs/IMAGENET.md §3. This path uses the same network and resize as ADM's evaluator
(full_scale/evaluation/fid.py).

``fid --prc`` adds precision and recall (k = 3) and ``fid --fd-dinov2`` adds FD_DINOv2, both computed with
torch-fidelity (full_scale/evaluation/fidelity.py) against the reference *images*, so ``--ref`` must hold images
(ADM's reference batch holds 10,000 beside its ``mu``/``sigma``, which the FID keeps using).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pickle
import struct
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.io import atomic_savez, atomic_write

from ..data.latents import MANIFEST, manifest_stats
from ..data.vae import PAPER_LATENT_STATS, SD_VAE_ID, LatentStats, decode_latents, load_vae
from ..distributed import chunk, gather_rows, setup
from .fid import (FEATURE_DIM, frechet_distance, frechet_distance_to_samples, gaussian_stats, inception_score,
                  load_inception)
from .fidelity import DINOV2_DIM, load_dinov2, precision_recall
from .fidelity import reference as fidelity_reference

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# ----------------------------------------------------------------------------------------------------- image input

def npz_array(path: str | os.PathLike, key: str = "arr_0") -> np.ndarray:
    """One array of an ``.npz``, memory-mapped when it is stored uncompressed (``np.savez``), else loaded."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        if f"{key}.npy" not in zf.namelist():
            raise KeyError(f"{path}: no array '{key}' (has {[n[:-4] for n in zf.namelist()]})")
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return np.load(path)[key]
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))  # the local header's lengths (may differ from central)
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")


class ImageSet:
    """uint8 (N, H, W, 3) images from an ADM ``.npz``, a folder of images, or a folder of ``.npz`` batches;
    ``batch(start, stop)`` returns a contiguous slice as an array."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path, self._arrays, self._files = path, [], []
        if path.is_file():
            self._arrays = [npz_array(path)]
        elif path.is_dir():
            batches = sorted(path.glob("*.npz"))
            if batches:
                self._arrays = [npz_array(p) for p in batches]
            else:
                self._files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            raise FileNotFoundError(f"images: '{path}' is neither an .npz file nor a folder")
        for a in self._arrays:
            if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
                raise ValueError(f"images: {path} holds {a.dtype} {a.shape}, expected uint8 (N, H, W, 3) (ADM)")
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays]).tolist()
        if len(self) == 0:
            raise ValueError(f"images: no images in '{path}'")

    def __len__(self) -> int:
        return len(self._files) if self._files else self._starts[-1]

    def batch(self, start: int, stop: int) -> np.ndarray:
        if self._files:
            from PIL import Image

            arrays = [np.asarray(Image.open(p).convert("RGB")) for p in self._files[start:stop]]
            if len({a.shape for a in arrays}) > 1:
                raise ValueError(f"images: files in {self.path} differ in size; export equal-size images")
            return np.stack(arrays)
        parts = []
        for a, s in zip(self._arrays, self._starts):
            lo, hi = max(start - s, 0), min(stop - s, len(a))
            if lo < hi:
                parts.append(np.asarray(a[lo:hi]))
        return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------------- features

@torch.no_grad()
def _outputs(images: ImageSet, model, widths: tuple[int, ...], batch_size: int) -> list[np.ndarray]:
    """The outputs of ``model`` (uint8 (B, 3, H, W) → a tuple of (B, width) tensors, one per entry of ``widths``) on
    all images, as float64 numpy arrays on every rank, each rank computing its contiguous chunk."""
    d = setup(timeout=timedelta(hours=2))
    rank, world, device = d.rank, d.world_size, d.device
    lo, hi = chunk(len(images), rank, world)
    parts = [[] for _ in widths]
    for s in range(lo, hi, batch_size):
        x = torch.from_numpy(images.batch(s, min(s + batch_size, hi))).to(device).permute(0, 3, 1, 2)
        for part, out in zip(parts, model(x.contiguous()), strict=True):
            part.append(out.double())
    empty = torch.zeros(0, dtype=torch.float64, device=device)
    joined = [torch.cat(part) if part else empty.reshape(0, width) for part, width in zip(parts, widths)]
    return [gather_rows(x, len(images), world).cpu().numpy() for x in joined]


def inception_outputs(images: ImageSet, model, *, batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """pool_3 features (N, 2048) and bias-free logits (N, 1008) of all images under ``model``
    (:func:`full_scale.evaluation.fid.load_inception`), float64 on every rank."""
    feats, logits = _outputs(images, model, (FEATURE_DIM, model.fc.out_features), batch_size)
    return feats, logits


def dinov2_features(images: ImageSet, model, *, batch_size: int = 200) -> np.ndarray:
    """DINOv2 ViT-L/14 features (N, 1024) of all images under ``model``
    (:func:`full_scale.evaluation.fidelity.load_dinov2`), float64 on every rank."""
    return _outputs(images, model, (DINOV2_DIM,), batch_size)[0]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and numpy arrays, and nothing else (a ``.pkl`` of statistics must not
    run code)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    # numpy ≥ 2 names its core package numpy._core (numpy.core is a deprecated alias), numpy < 2 only numpy.core;
    # a file written by either is read with the running numpy's name
    CORE = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array part")
        if module.startswith(("numpy.core.", "numpy._core.")):
            module = self.CORE + module[module.index("core.") + len("core"):]
        return getattr(importlib.import_module(module), name)


def load_reference_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(mu, sigma, form) of a file of reference statistics, or None when ``path`` holds images instead.

    ``form`` is ``"dataset statistics (edm2 .pkl)"`` for a ``.pkl`` with ``{"fid": {"mu", "sigma"}}`` (read with
    numpy arrays the only objects allowed) and ``"mu/sigma .npz"`` for an ``.npz`` with ``mu`` and ``sigma`` (ADM's
    reference batch, or ``stats --out X.npz``); see the module docstring for what each reference is."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pkl":
        try:
            with open(path, "rb") as f:
                data = _ArraysOnly(f).load()
            mu, sigma = data["fid"]["mu"], data["fid"]["sigma"]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
            raise ValueError(f"ref: {path} is not edm2-style reference statistics ({{'fid': {{'mu', 'sigma'}}}}): "
                             f"{type(err).__name__}: {err}") from None
        mu, sigma, form = np.asarray(mu, np.float64), np.asarray(sigma, np.float64), "dataset statistics (edm2 .pkl)"
    elif path.is_file() and path.suffix == ".npz":
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                return None
            mu, sigma, form = data["mu"].astype(np.float64), data["sigma"].astype(np.float64), "mu/sigma .npz"
    else:
        return None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"ref: {path} has mu {mu.shape} and sigma {sigma.shape}, expected (D,) and (D, D)")
    return mu, sigma, form


def save_reference_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, num_images: int) -> None:
    """Write reference statistics in edm2's form (``.pkl``: ``{"fid": {"mu", "sigma"}, "num_images"}``) or as an
    ``.npz`` with ``mu``, ``sigma`` and ``num_images`` (ADM's evaluator reads its ``mu`` and ``sigma``)."""
    path = Path(path)
    if path.suffix == ".pkl":
        stats = {"fid": {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)},
                 "num_images": int(num_images)}
        atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(stats)))
    elif path.suffix == ".npz":
        atomic_savez(path, mu=mu, sigma=sigma, num_images=np.int64(num_images))
    else:
        raise ValueError(f"out: expected a .pkl (edm2 form) or .npz (mu, sigma) path, got '{path}'")


def reference_stats(ref: str | os.PathLike, model, *, batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma): read from a file of reference statistics (:func:`load_reference_stats`), else computed from
    the images with ``model``."""
    stored = load_reference_stats(ref)
    if stored is not None:
        return stored[:2]
    return gaussian_stats(inception_outputs(ImageSet(ref), model, batch_size=batch_size)[0])


def reference_images(ref: str | os.PathLike, needed_by: str) -> ImageSet:
    """The images of ``ref``, which ``needed_by`` (e.g. "--prc") needs: statistics alone do not do."""
    path = Path(ref)
    stats_only = path.suffix == ".pkl"
    if path.suffix == ".npz" and path.is_file():
        with zipfile.ZipFile(path) as zf:  # closed again: only the listing is needed
            stats_only = "arr_0.npy" not in zf.namelist()
    if path.is_file() and stats_only:
        raise ValueError(f"ref: {needed_by} needs the reference images (an ADM .npz with arr_0 such as ADM's "
                         f"reference batch VIRTUAL_imagenet256_labeled.npz, a folder of images, or a folder of .npz "
                         f"batches), but {path} holds only statistics")
    return ImageSet(path)


def _frechet_to(feats: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD of the features' Gaussian to (mu2, sigma2); with no more samples than dimensions by the exact low-rank
    route (the covariance is singular anyway)."""
    if feats.shape[0] <= feats.shape[1]:
        return frechet_distance_to_samples(feats, mu2, sigma2)
    return frechet_distance(*gaussian_stats(feats), mu2, sigma2)


def fid_and_is(samples, ref, *, weights=None, splits: int = 10, batch_size: int = 200, model=None, prc: bool = False,
               fd_dinov2: bool = False, dinov2=None) -> dict:
    """FID of ``samples`` against ``ref`` and the samples' Inception Score (see the module docstring); the
    Inception comes from ``weights`` (a file, or None for the usual download) unless ``model`` is given.

    ``prc``: also precision and recall (k = 3, :func:`full_scale.evaluation.fidelity.precision_recall`) of the
    samples' Inception features against those of the reference images. ``fd_dinov2``: also FD_DINOv2 against the
    reference images, with ``dinov2`` (default :func:`full_scale.evaluation.fidelity.load_dinov2`). Both need ``ref``
    to hold images; the FID still uses ``ref``'s statistics where it has them (ADM's reference batch has both)."""
    device = setup(timeout=timedelta(hours=2)).device
    needed_by = " and ".join(flag for flag, on in (("--prc", prc), ("--fd-dinov2", fd_dinov2)) if on)
    ref_images = reference_images(ref, needed_by) if needed_by else None
    if prc:
        fidelity_reference()  # before any Inception work: fails at once without torch-fidelity
    if fd_dinov2 and dinov2 is None:
        dinov2 = load_dinov2(device)  # likewise without torchvision or DINOv2's weights
    model = model if model is not None else load_inception(weights, device=device)
    stored = load_reference_stats(ref)
    ref_feats = None
    if stored is None or prc:
        ref_set = ref_images if ref_images is not None else ImageSet(ref)
        ref_feats = inception_outputs(ref_set, model, batch_size=batch_size)[0]
    mu2, sigma2, form = stored if stored is not None else (*gaussian_stats(ref_feats), f"images ({len(ref_feats)})")
    samples_set = ImageSet(samples)
    feats, logits = inception_outputs(samples_set, model, batch_size=batch_size)
    is_mean, is_std = inception_score(logits, splits=min(splits, len(logits)))
    result = {"fid": _frechet_to(feats, mu2, sigma2), "inception_score": is_mean, "inception_score_std": is_std,
              "num_samples": len(feats), "samples": str(samples), "ref": str(ref), "ref_form": form}
    if prc:
        result["precision"], result["recall"] = precision_recall(feats, ref_feats, k=3, device=device)
        result["prc_num_ref"] = len(ref_feats)
    if fd_dinov2:
        real = dinov2_features(ref_images, dinov2, batch_size=batch_size)
        result["fd_dinov2"] = _frechet_to(dinov2_features(samples_set, dinov2, batch_size=batch_size),
                                          *gaussian_stats(real))
        result["fd_dinov2_num_ref"] = len(real)
    return result


# --------------------------------------------------------------------------------------------------- decode/export

def read_latents(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Standardized latents (N, C, h, w) and optional labels from ``.safetensors`` (``latents``, ``labels``),
    ``.npz`` (same keys; ``samples``/``labels`` as ``full_scale.sample`` writes; or ``arr_0``/``arr_1``) or ``.pt``
    (a tensor or such a dict; weights_only). Negative labels (unconditional samples) are dropped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(path)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            data = {k: torch.from_numpy(z[k]) for k in z.files}
    elif path.suffix == ".pt":
        data = torch.load(path, map_location="cpu", weights_only=True)
        data = data if isinstance(data, dict) else {"latents": data}
    else:
        raise ValueError(f"latents: expected a .safetensors, .npz or .pt file, got '{path}'")
    latents = next((data[k] for k in ("latents", "samples", "arr_0") if k in data), None)
    if latents is None or latents.ndim != 4:
        raise ValueError(f"latents: {path} has no (N, C, h, w) array named 'latents', 'samples' or 'arr_0'")
    labels = next((data[k] for k in ("labels", "arr_1") if k in data), None)
    if labels is not None and (labels.shape != (len(latents),) or bool((labels < 0).any())):
        labels = None
    return latents.float(), (labels.long() if labels is not None else None)


def resolve_latent_stats(spec: str) -> LatentStats:
    """'paper256' / 'paper512' (docs/ANCHORS.md) or a prepared dataset's manifest.json (or its folder)."""
    if spec.startswith("paper") and spec[5:].isdigit() and int(spec[5:]) in PAPER_LATENT_STATS:
        return PAPER_LATENT_STATS[int(spec[5:])]
    path = Path(spec)
    folder = path if path.is_dir() else path.parent
    if not (path.is_dir() or path.name == MANIFEST) or not (folder / MANIFEST).is_file():
        raise ValueError(f"latent_stats: expected paper256, paper512 or a manifest.json, got {spec!r}")
    return manifest_stats(folder)


def write_adm_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """ADM's sample batch: ``arr_0`` uint8 (N, H, W, 3) (+ ``arr_1`` int64 labels), written uncompressed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, np.int64)}
    atomic_savez(path, **arrays)


def decode_to_npz(latents_path, out, *, vae: str = SD_VAE_ID, latent_stats: str = "paper256",
                  batch_size: int = 32, dtype: torch.dtype = torch.float32) -> None:
    """Decode standardized latents with the VAE (:func:`full_scale.data.vae.decode_latents`) into an ADM ``.npz``;
    under torchrun each rank decodes its chunk into ``out.partR.npy`` and rank 0 joins them."""
    d = setup(timeout=timedelta(hours=2))
    rank, world, device = d.rank, d.world_size, d.device
    latents, labels = read_latents(latents_path)
    stats = resolve_latent_stats(latent_stats)
    lo, hi = chunk(len(latents), rank, world)
    model = load_vae(vae, device=device, dtype=dtype)
    out = Path(out)
    part = out.with_name(f"{out.name}.part{rank}.npy")
    if hi > lo:
        np.save(part, decode_latents(model, latents[lo:hi], stats, batch_size=batch_size))
    d.barrier()
    if rank == 0:
        parts = [out.with_name(f"{out.name}.part{r}.npy") for r in range(world)]
        images = np.concatenate([np.load(p) for p in parts if p.exists()])
        write_adm_npz(out, images, None if labels is None else labels.numpy())
        for p in parts:
            p.unlink(missing_ok=True)
    d.barrier()


# ---------------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m full_scale.evaluation", description=__doc__.split("\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("decode", help="standardized latents → ADM .npz of uint8 images",
                       formatter_class=DefaultsHelpFormatter)
    d.add_argument("--latents", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--vae", default=SD_VAE_ID)
    d.add_argument("--latent-stats", default="paper256", help="paper256, paper512, or a prepared manifest.json")
    d.add_argument("--batch-size", type=int, default=32)
    e = sub.add_parser("export", help="a folder of images (or .npz batches) → one ADM .npz",
                       formatter_class=DefaultsHelpFormatter)
    e.add_argument("--images", required=True)
    e.add_argument("--out", required=True)
    for name, helptext in (("stats", "Inception mean/covariance of images → .pkl (edm2's dataset statistics) or "
                                      ".npz (mu, sigma)"),
                           ("fid", "FID and Inception Score of samples against a reference")):
        p = sub.add_parser(name, help=helptext,
                           formatter_class=DefaultsHelpFormatter)
        if name == "stats":
            p.add_argument("--images", required=True)
        else:
            p.add_argument("--samples", required=True)
            p.add_argument("--ref", required=True, help="reference statistics (edm2 .pkl or .npz with mu, sigma) "
                                                        "or images")
            p.add_argument("--splits", type=int, default=10)
            p.add_argument("--prc", action="store_true",
                           help="also precision and recall (k = 3, on Inception features, via torch-fidelity); --ref "
                                "must hold images, e.g. ADM's reference batch")
            p.add_argument("--fd-dinov2", action="store_true",
                           help="also FD_DINOv2 against the reference images (torch-fidelity's DINOv2 ViT-L/14: needs "
                                "torchvision and torch.hub's facebookresearch/dinov2)")
        p.add_argument("--out", required=name == "stats")
        p.add_argument("--inception", default=None, help="local weights file (default: the usual download)")
        p.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as the reference evaluator
    torch.backends.cudnn.allow_tf32 = False
    d = setup(timeout=timedelta(hours=2))
    if args.command == "decode":
        decode_to_npz(args.latents, args.out, vae=args.vae, latent_stats=args.latent_stats,
                      batch_size=args.batch_size)
    elif args.command == "export":
        images = ImageSet(args.images)
        if d.main:
            write_adm_npz(args.out, images.batch(0, len(images)))
    elif args.command == "stats":
        model = load_inception(args.inception, device=d.device)
        feats = inception_outputs(ImageSet(args.images), model, batch_size=args.batch_size)[0]
        if d.main:
            save_reference_stats(args.out, *gaussian_stats(feats), num_images=len(feats))
    else:
        result = fid_and_is(args.samples, args.ref, splits=args.splits, weights=args.inception,
                            batch_size=args.batch_size, prc=args.prc, fd_dinov2=args.fd_dinov2)
        if d.main:
            print(json.dumps(result))
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=1))
