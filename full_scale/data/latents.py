"""ImageNet → ADM-style center crops → SD-VAE latents in verified shards, and the latent dataset the trainer streams.

Commands::

    python -m full_scale.data prepare --source /data/imagenet/train --out /data/in256 --resolution 256 [--images]
    torchrun --nproc_per_node 8 -m full_scale.data prepare ...        # shards split over ranks, resumable
    python -m full_scale.data stats --root /data/in256 [--write]      # recompute the per-channel constants
    python -m full_scale.data verify --root /data/in256 [--full]      # shapes, sizes, counts (+ sha256 with --full)

Layout of ``--out`` (format ``tvm-latents-v2``): ``plan.json`` (what is being built); ``latents-KKKKK.safetensors``
with ``latents`` float32 (n, C, h, w) raw, i.e. unstandardized (the VAE posterior's mean μ, or one draw with
``--posterior sample``), ``std`` float32 (n, C, h, w) the posterior's σ (only with ``--posterior mean-std``, the
default), ``labels`` int64 (n,) and ``indices`` int64 (n,) positions in the sorted listing; a sidecar
``latents-KKKKK.json`` per finished shard; optional ``images-KKKKK.npz`` (ADM batch: ``arr_0`` uint8 (n, H, W, 3),
``arr_1`` labels); and ``manifest.json``, written last, which records ``posterior`` and the standardization constants
(the paper's by resolution, docs/ANCHORS.md, or recomputed from the data) that :class:`LatentDataset` applies.
Folders of the previous format ``tvm-latents-v1`` (no ``std``; ``posterior`` mean or sample) are still read.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import zipfile
from bisect import bisect_right
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tvm_theory.cli import DefaultsHelpFormatter
from tvm_theory.io import atomic_savez, atomic_write, atomic_write_text, sha256_file

from ..distributed import setup
from .vae import PAPER_LATENT_STATS, POSTERIORS, SD_VAE_ID, LatentStats, encode_images, load_vae

MANIFEST = "manifest.json"
PLAN = "plan.json"
FORMAT = "tvm-latents-v2"
READABLE_FORMATS = (FORMAT, "tvm-latents-v1")  # v1: the same layout without ``std`` (posterior mean or sample)
DRAW_STREAM = 0x5EED  # last word of the seed of an item's posterior draw, so it never equals the permutation's seed
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class ShardError(RuntimeError):
    """A shard or the manifest is missing, truncated, or does not match what the manifest says."""


# ----------------------------------------------------------------------------------------------------------- images

def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image. 16-bit grayscale (modes ``I;16*`` and ``I``, as PIL opens 16-bit PNG and TIFF) is scaled
    by 255/65535 instead of being clipped to white by ``convert``; float images (mode ``F``) have no defined
    range and are refused; every other mode (palette, L, LA, RGBA, CMYK, …) goes through ``convert("RGB")``."""
    if image.mode == "F":
        raise ValueError("image: mode F (floating point) has no defined intensity range; convert it to 8 or 16 bits")
    if image.mode.startswith("I"):
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's center crop of :func:`to_rgb8` of the image: halve with BOX while the short side is ≥ 2·size,
    BICUBIC-resize the short side to ``size``, then cut the central size × size window. Returns uint8 (size, size, 3).
    """
    if size < 1:
        raise ValueError(f"size: expected a positive int, got {size}")
    image = to_rgb8(image)
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(d // 2 for d in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(d * scale) for d in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.array(arr[top:top + size, left:left + size])  # a writable copy


class ImageSource:
    """An ImageNet-style folder (one subfolder per class, searched recursively) or a zip whose images sit in
    per-class folders (the class is an image's parent folder). Classes are sorted names, labels their positions,
    items sorted by (class, path) — the torchvision ``ImageFolder`` order.

    A class folder without images would silently shift every later label, so it is an error (as in torchvision)
    unless ``allow_empty_classes``: then the class keeps its label and simply has no items."""

    def __init__(self, path: str | os.PathLike, *, allow_empty_classes: bool = False):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            folders = {p.name for p in self.path.iterdir() if p.is_dir()}
            pairs = [(p.parent.relative_to(self.path).parts[0], str(p.relative_to(self.path)))
                     for p in self.path.rglob("*")
                     if p.suffix.lower() in IMAGE_EXTENSIONS and p.parent != self.path and p.is_file()]
        elif zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
            folders = {Path(n).parts[0] for n in names if len(Path(n).parts) > 1 or n.endswith("/")}
            pairs = [(Path(n).parent.name, n) for n in names
                     if Path(n).suffix.lower() in IMAGE_EXTENSIONS and Path(n).parent.name]
        else:
            raise FileNotFoundError(f"source: '{path}' is neither a folder nor a zip file")
        if not pairs:
            raise ValueError(f"source: no images with extensions {IMAGE_EXTENSIONS} in class folders of '{path}'")
        pairs.sort()
        empty = sorted(folders - {c for c, _ in pairs}) if self.path.is_dir() else []
        if empty and not allow_empty_classes:
            raise ValueError(f"source: class folders without images: {empty}; every later label would shift. "
                             "Remove them, or keep them as empty classes with --allow-empty-classes")
        self.classes = sorted({c for c, _ in pairs} | set(empty))
        index = {c: i for i, c in enumerate(self.classes)}
        self.entries = [e for _, e in pairs]
        self.labels = [index[c] for c, _ in pairs]

    def __len__(self) -> int:
        return len(self.entries)

    def fingerprint(self) -> str:
        """sha256 of the sorted listing, to refuse resuming into a folder built from other data."""
        return hashlib.sha256("\n".join(self.entries).encode()).hexdigest()

    def open(self, i: int) -> Image.Image:
        if self.path.is_dir():
            return Image.open(self.path / self.entries[i])
        if self._zip is None:  # one handle per process (DataLoader workers fork after construction)
            self._zip = zipfile.ZipFile(self.path)
        with self._zip.open(self.entries[i]) as f:
            image = Image.open(f)
            image.load()
        return image

    def __getstate__(self):
        return {**self.__dict__, "_zip": None}


class UnreadableImage(ValueError):
    """A source image that PIL cannot decode (empty, truncated, not an image)."""


class _CroppedImages(torch.utils.data.Dataset):
    """Center crops of ``indices``; an unreadable image raises :class:`UnreadableImage`, or with ``skip_bad`` gives
    ``None`` (left out by :func:`_collate_readable` and listed in the shard's sidecar)."""

    def __init__(self, source: ImageSource, indices: range, size: int, skip_bad: bool = False):
        self.source, self.indices, self.size, self.skip_bad = source, indices, size, skip_bad

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = self.indices[k]
        try:
            image = self.source.open(i)
            image.load()
        except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for undecodable files
            if self.skip_bad:
                return i
            raise UnreadableImage(f"source: {self.source.entries[i]} cannot be read ({err}); rerun with "
                                  "--skip-bad-images to leave such images out (they are listed in the manifest)") from None
        return center_crop_arr(image, self.size), self.source.labels[i], i


def _collate_readable(items):
    """Batch the readable items; return (images, labels, indices, indices of the unreadable ones)."""
    good = [it for it in items if isinstance(it, tuple)]
    bad = [it for it in items if not isinstance(it, tuple)]
    if not good:
        return None, None, None, bad
    images, labels, indices = torch.utils.data.default_collate(good)
    return images, labels, indices, bad


# ----------------------------------------------------------------------------------------------------------- shards

def _shard_name(k: int) -> str:
    return f"latents-{k:05d}"


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header without loading data: ({name: {dtype, shape, data_offsets}}, data start).

    Raises :class:`ShardError` when the file is shorter than its header says (truncated) or the header is invalid.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise ShardError(f"{path}: truncated or not a safetensors file (size {size} bytes)")
        try:
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError) as e:
            raise ShardError(f"{path}: corrupt safetensors header ({type(e).__name__}: {e})") from None
    if size != 8 + n + end:
        raise ShardError(f"{path}: truncated: {size} bytes on disk, header describes {8 + n + end}")
    return header, 8 + n


_DTYPES = {"F32": np.float32, "I64": np.int64}


def _memmap(path: Path, header: dict, start: int, name: str) -> np.ndarray:
    t = header[name]
    return np.memmap(path, dtype=np.dtype(_DTYPES[t["dtype"]]).newbyteorder("<"), mode="r",
                     offset=start + t["data_offsets"][0], shape=tuple(t["shape"]))


def verify_shard(root: Path, entry: dict, latent_shape: tuple, num_classes: int, full: bool = False,
                 with_std: bool = False) -> dict:
    """Check one shard against its manifest entry: size, dtypes, shapes (count, *latent_shape) of ``latents`` (and
    of ``std`` when ``with_std``), label range, and with ``full`` the sha256. Returns the parsed header for
    memory-mapping."""
    path = root / entry["file"]
    if not path.is_file():
        raise ShardError(f"{path}: missing (listed in {root / MANIFEST})")
    if path.stat().st_size != entry["bytes"]:
        raise ShardError(f"{path}: truncated or replaced: {path.stat().st_size} bytes on disk, manifest says "
                         f"{entry['bytes']}")
    header, start = read_safetensors_header(path)
    want = {"latents": ("F32", [entry["count"], *latent_shape]), "labels": ("I64", [entry["count"]]),
            "indices": ("I64", [entry["count"]])}
    if with_std:
        want["std"] = ("F32", [entry["count"], *latent_shape])
    for name, (dtype, shape) in want.items():
        got = header.get(name)
        if got is None or got["dtype"] != dtype or got["shape"] != shape:
            raise ShardError(f"{path}: tensor '{name}' is {got and (got['dtype'], got['shape'])}, manifest expects "
                             f"({dtype}, {shape})")
    labels = _memmap(path, header, start, "labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ShardError(f"{path}: labels outside [0, {num_classes}): range [{labels.min()}, {labels.max()}]")
    if full and sha256_file(path) != entry["sha256"]:
        raise ShardError(f"{path}: sha256 differs from the manifest (content corrupted)")
    return {"header": header, "start": start, "path": path}


def read_manifest(root: str | os.PathLike) -> dict:
    """``manifest.json`` of a prepared folder, its format and posterior checked (no shard is read)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: missing; run `python -m full_scale.data prepare` (it writes the manifest last)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") not in READABLE_FORMATS:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected one of {READABLE_FORMATS}; prepare "
                         "the folder again with this version (python -m full_scale.data prepare)")
    if manifest.get("posterior") not in POSTERIORS:
        raise ShardError(f"{path}: posterior {manifest.get('posterior')!r}, expected one of {POSTERIORS}")
    if manifest["format"] != FORMAT and manifest["posterior"] == "mean-std":
        raise ShardError(f"{path}: format {manifest['format']!r} has no posterior 'mean-std'")
    return manifest


def manifest_stats(root: str | os.PathLike) -> LatentStats:
    """The per-channel standardization constants a prepared folder records (what decoding needs; no shard read)."""
    return _stats(read_manifest(root))


def _stats(manifest: dict) -> LatentStats:
    return LatentStats(tuple(manifest["latent_mean"]), tuple(manifest["latent_std"]))


def load_manifest(root: str | os.PathLike, *, full: bool = False,
                  part: tuple[int, int] = (0, 1)) -> tuple[dict, list[dict]]:
    """Read ``manifest.json`` and verify every shard (:func:`verify_shard`); returns (manifest, shard infos).

    With ``full`` the SHA-256 of the shards ``part = (r, R)`` selects, every R-th from the r-th, is checked too: R ranks
    that each pass their own part hash every shard once between them (a corrupt shard stops its rank, and torchrun
    then the job) instead of each reading the whole data set."""
    root = Path(root)
    path = root / MANIFEST
    manifest = read_manifest(root)
    counts = [s["count"] for s in manifest["shards"]]
    if sum(counts) != manifest["num_items"]:
        raise ShardError(f"{path}: shard counts add to {sum(counts)}, manifest says num_items={manifest['num_items']}")
    shape = tuple(manifest["latent_shape"])
    with_std = manifest["posterior"] == "mean-std"
    r, world = part
    infos = [verify_shard(root, s, shape, manifest["num_classes"], full and i % world == r, with_std)
             for i, s in enumerate(manifest["shards"])]
    return manifest, infos


# ---------------------------------------------------------------------------------------------------------- dataset

class LatentDataset(torch.utils.data.IterableDataset):
    """Standardized SD-VAE latents and labels, globally shuffled per epoch, split evenly across ranks.

    Epoch e draws one permutation π of all N items from ``numpy.random.default_rng([seed, e])``; rank r of R
    takes π[r], π[r + R], … over the first ⌊N/R⌋·R entries (every rank gets ⌊N/R⌋ items, the same on every run),
    and DataLoader worker w of W takes every W-th of those. Items are read from memory-mapped shards after the
    manifest check (:func:`load_manifest`; with ``verify_checksums``, the default, the SHA-256 of this rank's share of
    the shards too, once when the dataset is made: the ranks together catch a flipped byte before training reads it)
    and standardized with the manifest's constants: yields (z̃ float32 (C, h, w), label int64 scalar tensor).

    Posterior draw (``posterior: mean-std``, the default of ``prepare``, as the official code): item i used in epoch
    e is z = μ_i + σ_i ⊙ ε with ε ~ N(0, I) float32 from ``numpy.random.default_rng([seed, e, i, DRAW_STREAM])``,
    so the draw is a function of (seed, epoch, item index) only: the same on any number of ranks or DataLoader
    workers, fresh in every epoch. With ``posterior`` mean or sample the stored latent is used as it is.
    """

    def __init__(self, root: str | os.PathLike, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 verify_checksums: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        self.root = Path(root)
        manifest, self._infos = load_manifest(self.root, full=verify_checksums, part=(rank, world_size))
        self.num_classes = int(manifest["num_classes"])
        self.latent_shape = tuple(manifest["latent_shape"])
        self.stats = _stats(manifest)
        self.posterior = manifest["posterior"]
        self.num_items = int(manifest["num_items"])
        if self.num_items < world_size:
            raise ValueError(f"world_size: {world_size} ranks but only {self.num_items} items in {self.root}")
        self._starts = np.cumsum([0] + [s["count"] for s in manifest["shards"]]).tolist()
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self._maps = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getstate__(self):  # DataLoader workers (spawn) re-open the memory maps instead of copying them
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return self.num_items // self.world_size

    def rank_indices(self) -> np.ndarray:
        """This rank's global item indices for the current epoch, in iteration order (before worker split)."""
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        return perm[: len(self) * self.world_size][self.rank:: self.world_size]

    def draw(self, g: int, latent: np.ndarray, std: np.ndarray | None) -> np.ndarray:
        """The raw latent of item ``g`` in the current epoch: μ + σ ⊙ ε (see the class docstring), or ``latent``
        itself when the folder stores no σ."""
        if std is None:
            return np.array(latent, dtype=np.float32)
        eps = np.random.default_rng([self.seed, self.epoch, g, DRAW_STREAM]).standard_normal(std.shape, np.float32)
        return latent + std * eps

    def __iter__(self):
        if self._maps is None:
            names = ("latents", "labels") + (("std",) if self.posterior == "mean-std" else ())
            self._maps = [tuple(_memmap(i["path"], i["header"], i["start"], n) for n in names) for i in self._infos]
        indices = self.rank_indices()
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            indices = indices[worker.id:: worker.num_workers]
        for g in indices.tolist():
            k = bisect_right(self._starts, g) - 1
            j = g - self._starts[k]
            latents, labels, *std = self._maps[k]
            z = torch.from_numpy(self.draw(g, latents[j], std[0][j] if std else None))
            yield self.stats.standardize(z[None])[0], torch.tensor(int(labels[j]))


# ------------------------------------------------------------------------------------------------- channel statistics

def compute_latent_stats(root: str | os.PathLike, files: list[str] | None = None) -> tuple[LatentStats, int]:
    """Per-channel mean and (population) standard deviation of the raw latents the network is trained on, over all
    items and positions, accumulated in float64. Reads the manifest's shards, or ``files`` (shard file names under
    ``root``) while the manifest is still being written. Returns (stats, n values per channel).

    Of what: of the latent z that :class:`LatentDataset` standardizes, because standardization is meant to give the
    network inputs of zero mean and unit variance per channel. Stored latents (posterior mean or sample):
    m_c = Σz/n, s_c = sqrt(Σz²/n − m_c²). Stored posteriors (``mean-std``): z = μ + σ ⊙ ε is drawn afresh at every
    use, so the statistics are those of that mixture, exactly in ε (no draw): E z = E μ and E z² = E μ² + E σ²,
    m_c = Σμ/n, s_c = sqrt(Σ(μ² + σ²)/n − m_c²); s_c exceeds the spread of the means alone by the posterior noise.
    (The official ``dataset_tool.py getstats`` estimates the same std from one draw per item.)
    """
    root = Path(root)
    if files is None:
        files = [s["file"] for s in load_manifest(root)[0]["shards"]]
    s1 = s2 = 0.0
    n = 0
    for name in files:
        header, start = read_safetensors_header(root / name)

        def channels(key):  # (C, count·h·w) float64
            z = torch.from_numpy(np.array(_memmap(root / name, header, start, key), dtype=np.float64))
            return z.transpose(0, 1).reshape(z.shape[1], -1)

        z = channels("latents")
        second = z * z + (channels("std") ** 2 if "std" in header else 0.0)
        s1, s2, n = s1 + z.sum(1), s2 + second.sum(1), n + z.shape[1]
    if not n:
        raise ValueError(f"root: no latents to compute statistics from in {root}")
    mean = s1 / n
    std = torch.sqrt(torch.clamp(s2 / n - mean * mean, min=0.0))
    return LatentStats(tuple(mean.tolist()), tuple(std.tolist())), n


# --------------------------------------------------------------------------------------------------------- prepare

def _shard_done(out: Path, k: int, want_images: bool) -> bool:
    side = out / f"{_shard_name(k)}.json"
    if not side.is_file():
        return False
    info = json.loads(side.read_text())
    entries = [info] + ([info.get("images")] if want_images else [])
    return all(e is not None and (out / e["file"]).is_file() and (out / e["file"]).stat().st_size == e["bytes"]
               for e in entries)


def _write_shard(out: Path, k: int, latents, std, labels, indices, images, skipped: list[str]) -> None:
    from safetensors.torch import save_file

    name = _shard_name(k)
    info = {"file": f"{name}.safetensors", "count": int(labels.shape[0]), "start": int(indices[0]),
            "skipped": skipped}
    tensors = {"latents": latents.contiguous(), "labels": labels, "indices": indices}
    if std is not None:
        tensors["std"] = std.contiguous()
    atomic_write(out / info["file"], lambda tmp: save_file(tensors, str(tmp)))
    info.update(bytes=(out / info["file"]).stat().st_size, sha256=sha256_file(out / info["file"]))
    if images is not None:
        img_file = out / f"images-{k:05d}.npz"
        atomic_savez(img_file, arr_0=images, arr_1=labels.numpy())
        info["images"] = {"file": img_file.name, "count": int(images.shape[0]), "bytes": img_file.stat().st_size}
    atomic_write_text(out / f"{name}.json", json.dumps(info))


def prepare(source, out, *, resolution: int = 256, vae: str = SD_VAE_ID, shard_size: int = 10_000,
            batch_size: int = 64, num_workers: int = 8, images: bool = False, posterior: str = "mean-std",
            seed: int = 0, limit: int | None = None, latent_stats: str = "auto", dtype: str = "fp32",
            skip_bad_images: bool = False, allow_empty_classes: bool = False) -> dict | None:
    """Encode ``source`` into shards under ``out`` (see the module docstring); returns the manifest on rank 0.

    Resumable: finished shards (sidecar present, size matching) are skipped; a ``plan.json`` left by another
    listing, resolution, shard size or VAE makes it stop instead of mixing data. Shard k goes to rank k mod R.
    The source listing and the VAE are checked (the VAE loaded) before ``plan.json`` is written, so a mistyped
    argument leaves nothing behind. An unreadable image stops the job with its name, or with ``skip_bad_images`` is
    left out: its index is missing from its shard and listed under ``skipped`` in the manifest, beside a fingerprint
    of the items actually encoded (``used_fingerprint``); the listing's fingerprint, and so the plan, is unchanged,
    so a rerun with the flag reuses the finished shards.
    ``latent_stats``: "paper" (docs/ANCHORS.md constants, 256/512 only), "data" (recomputed,
    :func:`compute_latent_stats`), or "auto" (paper when available, else data).
    ``posterior``: "mean-std" (store μ and σ; a fresh draw at every use, the official recipe), "mean" (store μ) or
    "sample" (store one draw μ + σ ⊙ ε, ε from ``seed`` and the shard index); see
    :func:`full_scale.data.vae.encode_images`.
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior: expected one of {', '.join(POSTERIORS)}, got {posterior!r}")
    if latent_stats not in ("auto", "paper", "data"):
        raise ValueError(f"latent_stats: expected 'auto', 'paper' or 'data', got {latent_stats!r}")
    if latent_stats == "paper" and resolution not in PAPER_LATENT_STATS:
        raise ValueError(f"latent_stats: the paper gives constants for {sorted(PAPER_LATENT_STATS)}, not {resolution}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size, batch_size: expected positive ints, got {shard_size}, {batch_size}")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"dtype: expected fp32, bf16 or fp16, got {dtype!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive int or None, got {limit}")
    d = setup(backend="gloo", timeout=timedelta(hours=12))  # barriers only
    rank, world = d.rank, d.world_size
    out = Path(out)
    src = ImageSource(source, allow_empty_classes=allow_empty_classes)
    n = len(src) if limit is None else min(limit, len(src))
    device = d.device
    model = load_vae(vae, device=device, dtype=torch_dtype)  # before the plan: a bad --vae leaves nothing behind
    plan = {"format": FORMAT, "source_fingerprint": src.fingerprint(), "num_items": n, "resolution": resolution,
            "shard_size": shard_size, "vae": vae, "dtype": dtype, "posterior": posterior, "seed": seed,
            "images": images, "classes": src.classes}
    if (out / PLAN).is_file():  # every rank checks, so all stop together
        old = json.loads((out / PLAN).read_text())
        diff = sorted(key for key in plan if old.get(key) != plan[key])
        if diff:
            raise ValueError(f"out: {out} holds a different preparation (differs in {diff}; plan format "
                             f"{old.get('format')!r}, this version writes {FORMAT!r}); use a new folder")
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / PLAN, json.dumps(plan, indent=1))
    d.barrier()
    num_shards = -(-n // shard_size)
    shard_items = [range(k * shard_size, min(n, (k + 1) * shard_size)) for k in range(num_shards)]
    mine = [k for k in range(rank, num_shards, world) if not _shard_done(out, k, images)]
    if mine:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(shard_items[k]) for k in mine), desc=f"prepare (rank {rank}/{world})", unit="img",
                   disable=rank != 0)
        for k in mine:
            ds = _CroppedImages(src, shard_items[k], resolution, skip_bad=skip_bad_images)
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                                 collate_fn=_collate_readable)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
            latents, stds, labels, indices, crops, skipped = [], [], [], [], [], []
            for img, lab, idx, bad in loader:  # img: uint8 (b, H, W, 3)
                skipped += bad
                bar.update(len(bad))
                if img is None:
                    continue
                z, std = encode_images(model, img, posterior=posterior, generator=gen)
                latents.append(z)
                stds.append(std)
                labels.append(lab.long())
                indices.append(idx.long())
                if images:
                    crops.append(img.numpy())
                bar.update(len(lab))
            if not latents:
                raise UnreadableImage(f"source: no readable image in shard {k} (items {shard_items[k].start}–"
                                      f"{shard_items[k].stop - 1}); nothing to encode")
            _write_shard(out, k, torch.cat(latents), torch.cat(stds) if posterior == "mean-std" else None,
                         torch.cat(labels), torch.cat(indices), np.concatenate(crops) if images else None,
                         [src.entries[i] for i in skipped])
        bar.close()
    d.barrier()
    if rank != 0:
        return None
    shards = [json.loads((out / f"{_shard_name(k)}.json").read_text()) for k in range(num_shards)]
    latent_shape = list(read_safetensors_header(out / shards[0]["file"])[0]["latents"]["shape"][1:])
    use_paper = latent_stats == "paper" or (latent_stats == "auto" and resolution in PAPER_LATENT_STATS)
    if use_paper:
        stats, stats_source = PAPER_LATENT_STATS[resolution], "paper (docs/ANCHORS.md)"
    else:
        stats, count = compute_latent_stats(out, [s["file"] for s in shards])
        stats_source = f"data ({count} values per channel)"
    skipped = [e for s in shards for e in s.get("skipped", [])]
    left_out = set(skipped)
    used = [e for e in src.entries[:n] if e not in left_out]
    manifest = {**plan, "latent_shape": latent_shape, "num_classes": len(src.classes), "num_items": len(used),
                "skipped": skipped, "used_fingerprint": hashlib.sha256("\n".join(used).encode()).hexdigest(),
                "latent_mean": list(stats.mean), "latent_std": list(stats.std), "stats_source": stats_source,
                "shards": [{key: s[key] for key in ("file", "count", "start", "bytes", "sha256")} for s in shards],
                "image_batches": [s["images"] for s in shards] if images else None}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


# ------------------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m full_scale.data", description=__doc__.split("\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="center-crop, encode with the SD-VAE, write shards and the manifest",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--source", required=True, help="ImageNet-style folder (class subfolders) or zip")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--vae", default=SD_VAE_ID, help="hub id or local AutoencoderKL folder")
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--images", action="store_true", help="also write the center crops as ADM-style npz batches")
    p.add_argument("--posterior", choices=POSTERIORS, default="mean-std",
                   help="mean-std: store the VAE posterior's mean and std, draw z = mean + std·eps at every use "
                        "(the official recipe); mean: store the mean; sample: store one draw (seeded per shard)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of the sorted listing")
    p.add_argument("--latent-stats", choices=("auto", "paper", "data"), default="auto")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out images that cannot be decoded (listed in the manifest) instead of stopping")
    p.add_argument("--allow-empty-classes", action="store_true",
                   help="keep class folders without images as empty classes (their labels stay reserved)")
    s = sub.add_parser("stats", help="recompute the per-channel latent mean/std from the shards",
                       formatter_class=DefaultsHelpFormatter)
    s.add_argument("--root", required=True)
    s.add_argument("--write", action="store_true", help="store them in manifest.json (the dataset then uses them)")
    v = sub.add_parser("verify", help="check every shard against the manifest",
                       formatter_class=DefaultsHelpFormatter)
    v.add_argument("--root", required=True)
    v.add_argument("--full", action="store_true", help="also compare sha256 checksums (reads everything)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.source, args.out, resolution=args.resolution, vae=args.vae, shard_size=args.shard_size,
                batch_size=args.batch_size, num_workers=args.workers, images=args.images, posterior=args.posterior,
                seed=args.seed, limit=args.limit, latent_stats=args.latent_stats, dtype=args.dtype,
                skip_bad_images=args.skip_bad_images, allow_empty_classes=args.allow_empty_classes)
    elif args.command == "stats":
        stats, count = compute_latent_stats(args.root)
        print(json.dumps({"latent_mean": stats.mean, "latent_std": stats.std, "values_per_channel": count}))
        if args.write:
            path = Path(args.root) / MANIFEST
            manifest = json.loads(path.read_text())
            manifest.update(latent_mean=list(stats.mean), latent_std=list(stats.std),
                            stats_source=f"data ({count} values per channel)")
            atomic_write_text(path, json.dumps(manifest, indent=1))
    else:
        manifest, _ = load_manifest(args.root, full=args.full)
        print(f"ok: {manifest['num_items']} items in {len(manifest['shards'])} shards, latent shape "
              f"{tuple(manifest['latent_shape'])}, {manifest['num_classes']} classes")
