"""full_scale.data and full_scale.data.vae: ADM center crop, preparation with a tiny random AutoencoderKL, shard
verification, the latent dataset's shuffling and rank split, channel statistics, and the offline error."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("diffusers", reason="full_scale data preparation needs the optional `diffusers` package")

from full_scale.data.latents import (  # noqa: E402
    ImageSource,
    LatentDataset,
    ShardError,
    center_crop_arr,
    compute_latent_stats,
    load_manifest,
    main,
    manifest_stats,
    prepare,
)
from full_scale.data import latents as latents_module  # noqa: E402
from full_scale.data.vae import (  # noqa: E402
    PAPER_LATENT_STATS,
    SD_VAE_ID,
    LatentStats,
    VAEWeightsError,
    decode_latents,
    encode_images,
    load_vae,
)

REPO = Path(__file__).resolve().parents[1]
RES = 16


def tiny_vae_folder(path: Path) -> Path:
    """A randomly initialised AutoencoderKL (downsampling factor 2, 4 latent channels) saved as a local folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=RES).save_pretrained(path)
    return path


def image_folder(path: Path, per_class: int = 3, classes=("n02", "n01", "n03")) -> Path:
    """Random RGB images of assorted sizes (some below, some above 2·RES) in per-class folders, PNG and JPEG."""
    rng = np.random.default_rng(1)
    for c in classes:
        (path / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(RES, 3 * RES, 2)
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img.save(path / c / (f"{i}.png" if i % 2 else f"{i}.JPEG"))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdata")
    vae = tiny_vae_folder(root / "vae")
    src = image_folder(root / "src")
    manifest = prepare(src, root / "out", resolution=RES, vae=str(vae), shard_size=4, batch_size=3, num_workers=0,
                       images=True)
    return root, manifest


@pytest.fixture(scope="module")
def prepared_mean(prepared):
    """The same images prepared with ``--posterior mean`` (only the posterior's mean stored)."""
    root, _ = prepared
    return root / "out-mean", prepare(root / "src", root / "out-mean", resolution=RES, vae=str(root / "vae"),
                                      shard_size=4, batch_size=3, num_workers=0, posterior="mean")


# ------------------------------------------------------------------------------------------------- center crop

@settings(max_examples=15, deadline=None)
@given(size=st.integers(3, 12), extra=st.integers(0, 8), tall=st.booleans(), seed=st.integers(0, 2**16))
def test_center_crop_halves_with_box_then_crops_the_center(size, extra, tall, seed):
    # A (2s) × (2s + 2e) image: one BOX halving gives the 2×2 block means, the bicubic step is then the identity
    # (scale 1), and the crop keeps columns e//2 … e//2 + s. Recomputed here with numpy.
    h, w = 2 * size, 2 * size + 2 * extra
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if tall:
        arr = arr.transpose(1, 0, 2).copy()
    out = center_crop_arr(Image.fromarray(arr), size)
    blocks = arr.astype(np.float64).reshape(arr.shape[0] // 2, 2, arr.shape[1] // 2, 2, 3).mean(axis=(1, 3))
    off = extra // 2
    want = blocks[off:off + size] if tall else blocks[:, off:off + size]
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - want).max() <= 1.0  # PIL resamples in 8-bit fixed point


def test_center_crop_bicubic_step_keeps_constants_and_errors():
    img = Image.new("RGB", (37, 23), (10, 200, 77))  # short side in [s, 2s): bicubic only
    out = center_crop_arr(img, 16)
    assert out.shape == (16, 16, 3) and (out == np.array([10, 200, 77], dtype=np.uint8)).all()
    with pytest.raises(ValueError, match="size"):
        center_crop_arr(img, 0)


def test_folder_and_zip_sources_list_the_same_items(tmp_path):
    src = image_folder(tmp_path / "src", per_class=2)
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        for p in sorted(src.rglob("*.*")):
            zf.write(p, Path("train") / p.relative_to(src))
    a, b = ImageSource(src), ImageSource(tmp_path / "src.zip")
    assert a.classes == b.classes == ["n01", "n02", "n03"]
    assert a.labels == b.labels == [0, 0, 1, 1, 2, 2]
    for i in range(len(a)):
        assert np.array_equal(np.asarray(a.open(i).convert("RGB")), np.asarray(b.open(i).convert("RGB")))
    with pytest.raises(FileNotFoundError, match="source"):
        ImageSource(tmp_path / "nothing-here")


# ------------------------------------------------------------------------------------------------- preparation

def test_prepare_stores_the_vae_encoding_of_the_center_crops(prepared):
    root, manifest = prepared
    out, src = root / "out", ImageSource(root / "src")
    assert manifest["num_items"] == 9 and manifest["num_classes"] == 3 and manifest["latent_shape"] == [4, 8, 8]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 1]
    assert manifest["format"] == "tvm-latents-v2" and manifest["posterior"] == "mean-std"  # the default
    crops = np.stack([center_crop_arr(src.open(i), RES) for i in range(len(src))])
    vae = load_vae(str(root / "vae"))
    want, want_std = encode_images(vae, crops)  # independent single-batch encoding
    dist = vae.encode(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist
    torch.testing.assert_close(want_std, torch.exp(0.5 * dist.logvar), atol=1e-6, rtol=1e-5)  # σ = exp(logvar / 2)
    from safetensors.torch import load_file

    shards = [load_file(out / s["file"]) for s in manifest["shards"]]
    got, got_std = torch.cat([s["latents"] for s in shards]), torch.cat([s["std"] for s in shards])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_std, want_std, atol=1e-5, rtol=1e-5)
    assert torch.cat([s["labels"] for s in shards]).tolist() == src.labels
    assert torch.cat([s["indices"] for s in shards]).tolist() == list(range(9))
    images = np.concatenate([np.load(out / b["file"])["arr_0"] for b in manifest["image_batches"]])
    assert np.array_equal(images, crops)
    # resolution 16 has no paper constants: they are recomputed as the moments of z = μ + σε over items, positions
    # and ε: E z = E μ, Var z = Var μ + E σ² (numpy, float64)
    mu = got.double().numpy().transpose(1, 0, 2, 3).reshape(4, -1)
    sd = got_std.double().numpy().transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(manifest["latent_mean"], mu.mean(1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(manifest["latent_std"], np.sqrt(mu.var(1) + (sd ** 2).mean(1)), rtol=1e-10, atol=0)


def test_prepare_resumes_and_refuses_a_different_plan(prepared):
    root, manifest = prepared
    out = root / "out"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("latents-*.safetensors")}
    (out / "latents-00001.safetensors").unlink()  # an interrupted run lost one shard
    again = prepare(root / "src", out, resolution=RES, vae=str(root / "vae"), shard_size=4, batch_size=3,
                    num_workers=0, images=True)
    assert again["shards"] == manifest["shards"]  # byte-identical redo (sha256 recorded in the manifest)
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("latents-*.safetensors")}
    assert [k for k in now if now[k] != mtimes[k]] == ["latents-00001.safetensors"]
    with pytest.raises(ValueError, match="different preparation.*shard_size"):
        prepare(root / "src", out, resolution=RES, vae=str(root / "vae"), shard_size=5, num_workers=0, images=True)


def test_stats_and_verify_commands(prepared, capsys, tmp_path):
    root, manifest = prepared
    stats, count = compute_latent_stats(root / "out")
    assert count == 9 * 8 * 8 and stats.mean == pytest.approx(manifest["latent_mean"], abs=1e-12)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in (root / "out").iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    m = json.loads((copy / "manifest.json").read_text())
    m["latent_mean"] = [0.0] * 4
    (copy / "manifest.json").write_text(json.dumps(m))
    main(["stats", "--root", str(copy), "--write"])
    assert json.loads(capsys.readouterr().out)["latent_mean"] == pytest.approx(manifest["latent_mean"], abs=1e-12)
    assert json.loads((copy / "manifest.json").read_text())["latent_mean"] == pytest.approx(stats.mean, abs=1e-12)
    main(["verify", "--root", str(copy), "--full"])
    assert capsys.readouterr().out.startswith("ok: 9 items in 3 shards")


# -------------------------------------------------------------------------------------------------- the dataset

def test_dataset_yields_standardized_latents_with_labels(prepared_mean):
    out, manifest = prepared_mean
    ds = LatentDataset(out, seed=3)
    assert ds.num_classes == 3 and ds.latent_shape == (4, 8, 8) and len(ds) == 9
    from safetensors.torch import load_file

    raw = torch.cat([load_file(out / s["file"])["latents"] for s in manifest["shards"]])
    assert "std" not in load_file(out / manifest["shards"][0]["file"])  # --posterior mean stores μ only
    labels = ImageSource(out.parent / "src").labels
    mean = torch.tensor(manifest["latent_mean"]).view(4, 1, 1)
    std = torch.tensor(manifest["latent_std"]).view(4, 1, 1)
    items = list(ds)
    for g, (z, y) in zip(ds.rank_indices().tolist(), items):
        assert z.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == labels[g]
        torch.testing.assert_close(z, (raw[g] - mean) / std)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert batches[0][0].shape == (4, 4, 8, 8) and batches[0][1].shape == (4,)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(labels)


@settings(max_examples=20, deadline=None)
@given(world=st.integers(1, 4), seed=st.integers(0, 100), epoch=st.integers(0, 5))
def test_dataset_epochs_split_disjointly_and_evenly_across_ranks(prepared, world, seed, epoch):
    root, _ = prepared
    shares = []
    for rank in range(world):
        ds = LatentDataset(root / "out", rank=rank, world_size=world, seed=seed)
        ds.set_epoch(epoch)
        shares.append(ds.rank_indices())
        assert len(shares[-1]) == len(ds) == 9 // world
    flat = np.concatenate(shares)
    assert len(set(flat.tolist())) == len(flat) == (9 // world) * world  # disjoint, nothing repeated
    again = LatentDataset(root / "out", rank=0, world_size=world, seed=seed)
    again.set_epoch(epoch)
    assert np.array_equal(again.rank_indices(), shares[0])  # the seed fixes the order
    orders = set()
    whole = LatentDataset(root / "out", seed=seed)
    for e in range(4):
        whole.set_epoch(e)
        orders.add(tuple(whole.rank_indices()))
    assert len(orders) > 1


def _raw_draws(ds: LatentDataset, epoch: int) -> dict[int, torch.Tensor]:
    """{item index: raw latent} of one epoch of ``ds`` (its standardization undone, float64)."""
    ds.set_epoch(epoch)
    return {g: ds.stats.unstandardize(z[None].double())[0] for g, (z, _) in zip(ds.rank_indices().tolist(), ds)}


def _posterior(out: Path, manifest: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    shards = [load_file(out / s["file"]) for s in manifest["shards"]]
    return (torch.cat([s["latents"] for s in shards]).double(), torch.cat([s["std"] for s in shards]).double())


def test_posterior_draws_have_the_stored_mean_and_std(prepared):
    """z = μ + σε at every use: over 300 epochs the residuals (z − μ)/σ are N(0, 1) (mean, variance, and a
    4-sigma check per element), the same epoch gives the same draw and every epoch a new one."""
    root, manifest = prepared
    mu, sd = _posterior(root / "out", manifest)
    ds = LatentDataset(root / "out", seed=7, verify_checksums=False)
    epochs = [_raw_draws(ds, e) for e in range(300)]
    r = torch.stack([torch.stack([(d[g] - mu[g]) / sd[g] for g in range(9)]) for d in epochs])  # (E, 9, C, h, w)
    n = r.numel()
    assert abs(float(r.mean())) < 5 / n ** 0.5 and abs(float(r.var()) - 1) < 5 * (2 / n) ** 0.5
    per_element = r.mean(0) * len(epochs) ** 0.5  # ~ N(0, 1) per element
    assert float(per_element.abs().max()) < 5.0
    again = _raw_draws(ds, 3)
    assert all(torch.equal(z, epochs[3][g]) for g, z in again.items())
    assert not torch.equal(epochs[0][0], epochs[1][0])  # a fresh draw in every epoch


def test_latent_stats_are_those_of_the_draws(prepared):
    """compute_latent_stats on μ and σ against the empirical per-channel moments of 300 epochs of draws."""
    root, _ = prepared
    stats, count = compute_latent_stats(root / "out")
    ds = LatentDataset(root / "out", seed=1, verify_checksums=False)
    z = torch.stack([torch.stack(list(_raw_draws(ds, e).values())) for e in range(300)])  # (E, 9, C, h, w)
    per_channel = z.transpose(0, 2).reshape(4, -1)
    n = per_channel.shape[1]
    m, s = torch.tensor(stats.mean, dtype=torch.float64), torch.tensor(stats.std, dtype=torch.float64)
    # the 9 items' means are fixed, so only the draws vary: the sample moments are within a few σ/sqrt(n)
    assert torch.all((per_channel.mean(1) - m).abs() < 5 * s / n ** 0.5)
    assert torch.all((per_channel.std(1) / s - 1).abs() < 0.02)
    assert count == 9 * 8 * 8


@settings(max_examples=8, deadline=None)
@given(world=st.integers(1, 3), seed=st.integers(0, 50), epoch=st.integers(0, 4))
def test_posterior_draw_depends_on_seed_epoch_and_item_only(prepared, world, seed, epoch):
    root, _ = prepared
    whole = _raw_draws(LatentDataset(root / "out", seed=seed, verify_checksums=False), epoch)
    for rank in range(world):
        part = _raw_draws(LatentDataset(root / "out", rank=rank, world_size=world, seed=seed,
                                        verify_checksums=False), epoch)
        assert all(torch.equal(z, whole[g]) for g, z in part.items())


def test_posterior_draw_is_the_same_with_dataloader_workers(prepared):
    root, _ = prepared
    ds = LatentDataset(root / "out", seed=4, verify_checksums=False)
    ds.set_epoch(2)
    alone = {int(g): z for g, (z, _) in zip(ds.rank_indices(), ds)}
    workers = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    split = [z for z, _ in workers]  # worker w yields every 2nd index of the epoch's order, interleaved
    order, got = ds.rank_indices(), {}
    for k, z in enumerate(split):
        w, j = k % 2, k // 2
        got[int(order[w::2][j])] = z
    assert got.keys() == alone.keys() and all(torch.equal(got[g], alone[g]) for g in alone)


def test_format_v1_is_read_and_other_formats_are_refused(prepared_mean, prepared, tmp_path):
    out, manifest = prepared_mean
    for p in out.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    _edit_manifest(tmp_path, lambda m: m.update(format="tvm-latents-v1"))  # the previous format: μ only
    old, new = list(LatentDataset(tmp_path, seed=2)), list(LatentDataset(out, seed=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(old, new))
    _edit_manifest(tmp_path, lambda m: m.update(posterior="mean-std"))
    with pytest.raises(ShardError, match="tvm-latents-v1' has no posterior 'mean-std'"):
        LatentDataset(tmp_path)
    _edit_manifest(tmp_path, lambda m: m.update(format="tvm-latents-v0", posterior="mean"))
    with pytest.raises(ShardError, match="format 'tvm-latents-v0', expected one of.*prepare the folder again"):
        LatentDataset(tmp_path)
    root, _ = prepared
    with pytest.raises(ValueError, match="posterior: expected one of mean-std, mean, sample"):
        prepare(root / "src", tmp_path / "x", resolution=RES, vae=str(root / "vae"), posterior="median")
    with pytest.raises(ValueError, match=r"different preparation \(differs in \['posterior'\]"):
        prepare(root / "src", out, resolution=RES, vae=str(root / "vae"), shard_size=4, num_workers=0)


def test_missing_or_misshapen_std_is_caught(prepared, tmp_path):
    from safetensors.torch import load_file, save_file

    root, _ = prepared
    for p in (root / "out").iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    path = tmp_path / "latents-00001.safetensors"
    t = load_file(path)
    save_file({**t, "std": t["std"][:, :2].contiguous()}, str(path))
    _edit_manifest(tmp_path, lambda m: m["shards"][1].update(bytes=path.stat().st_size))
    with pytest.raises(ShardError, match=r"latents-00001.*tensor 'std'.*\[4, 4, 8, 8\]"):
        LatentDataset(tmp_path, verify_checksums=False)


def test_dataset_rejects_bad_rank_arguments(prepared):
    root, _ = prepared
    with pytest.raises(ValueError, match="rank"):
        LatentDataset(root / "out", rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        LatentDataset(root / "out", rank=0, world_size=10)


# ------------------------------------------------------------------------------------------- shard verification

@pytest.fixture()
def copy_of(prepared, tmp_path):
    root, _ = prepared
    for p in (root / "out").iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    return tmp_path


def _edit_manifest(root: Path, fn) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_truncated_shard_is_caught(copy_of):
    path = copy_of / "latents-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ShardError, match="latents-00001.safetensors: truncated"):
        LatentDataset(copy_of)
    _edit_manifest(copy_of, lambda m: m["shards"][1].update(bytes=path.stat().st_size))  # a consistent manifest
    with pytest.raises(ShardError, match="truncated: .* header describes"):
        LatentDataset(copy_of)


def test_wrong_shape_shard_is_caught(copy_of):
    from safetensors.torch import load_file, save_file

    path = copy_of / "latents-00000.safetensors"
    t = load_file(path)
    save_file({**t, "latents": t["latents"][:, :, :, :4].contiguous()}, str(path))  # (4, 4, 8, 4), not (4, 4, 8, 8)
    _edit_manifest(copy_of, lambda m: m["shards"][0].update(bytes=path.stat().st_size))
    with pytest.raises(ShardError, match=r"tensor 'latents'.*\[4, 4, 8, 8\]"):
        LatentDataset(copy_of)


def test_manifest_mismatches_are_caught(copy_of):
    _edit_manifest(copy_of, lambda m: m.update(num_items=10))
    with pytest.raises(ShardError, match="add to 9.*num_items=10"):
        LatentDataset(copy_of)
    _edit_manifest(copy_of, lambda m: (m.update(num_items=10), m["shards"][2].update(count=2)))
    with pytest.raises(ShardError, match=r"latents-00002.*\[2, 4, 8, 8\]"):
        LatentDataset(copy_of)
    _edit_manifest(copy_of, lambda m: (m.update(num_items=9, num_classes=2), m["shards"][2].update(count=1)))
    with pytest.raises(ShardError, match=r"labels outside \[0, 2\)"):
        LatentDataset(copy_of)
    (copy_of / "manifest.json").unlink()
    with pytest.raises(ShardError, match="manifest.json: missing"):
        load_manifest(copy_of)


def test_corrupted_content_is_caught_by_checksums(copy_of):
    path = copy_of / "latents-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # same size, one byte of the payload flipped
    path.write_bytes(bytes(data))
    LatentDataset(copy_of, verify_checksums=False)  # the header-only check cannot see it …
    with pytest.raises(ShardError, match="sha256"):
        LatentDataset(copy_of, verify_checksums=True)  # … the checksum can
    with pytest.raises(ShardError, match="sha256"):
        LatentDataset(copy_of)  # and training verifies it by default
    # R ranks share the hashing: each shard once, by rank (index mod R); only shard 2's owner sees the flip
    n_shards, real = len(load_manifest(copy_of)[0]["shards"]), latents_module.sha256_file
    for world in (2, 3):
        hashed = []
        spy = mock.patch("full_scale.data.latents.sha256_file", side_effect=lambda p: hashed.append(p.name) or real(p))
        with spy:
            for rank in range(world):
                with contextlib.suppress(ShardError):
                    LatentDataset(copy_of, rank=rank, world_size=world)
        assert sorted(hashed) == sorted(f"latents-{i:05d}.safetensors" for i in range(n_shards))
        for rank in range(world):
            if rank == 2 % world:
                with pytest.raises(ShardError, match="latents-00002.*sha256"):
                    LatentDataset(copy_of, rank=rank, world_size=world)
            else:
                LatentDataset(copy_of, rank=rank, world_size=world)
    assert manifest_stats(copy_of) == LatentDataset(copy_of, verify_checksums=False).stats  # no shard read
    from full_scale.evaluation.scoring import resolve_latent_stats
    assert resolve_latent_stats(str(copy_of)) == resolve_latent_stats(str(copy_of / "manifest.json")) == \
        manifest_stats(copy_of)
    with pytest.raises(ValueError, match="latent_stats: expected paper256, paper512 or a manifest.json"):
        resolve_latent_stats(str(copy_of / "latents-00002.safetensors"))


# ------------------------------------------------------------------------------------------------------ the VAE

def test_latent_stats_invert_and_decode_rounds_to_uint8(prepared):
    root, _ = prepared
    for stats in PAPER_LATENT_STATS.values():
        z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
        torch.testing.assert_close(stats.unstandardize(stats.standardize(z)), z)
    with pytest.raises(ValueError, match="std"):
        LatentStats((0.0,), (0.0,))
    stats = LatentStats((0.5, -1.0, 0.0, 2.0), (2.0, 1.0, 3.0, 0.5))
    vae = load_vae(str(root / "vae"))
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = decode_latents(vae, z, stats, batch_size=2)
    x = vae.decode(stats.unstandardize(z)).sample
    want = torch.clamp(torch.round(127.5 * (x + 1)), 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert images.dtype == np.uint8 and images.shape == (3, RES, RES, 3)
    assert np.abs(images.astype(int) - want.astype(int)).max() <= 1  # batch-size rounding of the last ulp


def test_missing_weights_give_instructions(tmp_path):
    with pytest.raises(VAEWeightsError, match="hf download stabilityai/sd-vae-ft-ema"):
        load_vae(str(tmp_path / "no-such-vae"))
    # a hub id with the hub switched off (no network, nothing cached): same clear error
    code = ("from full_scale.data.vae import load_vae, VAEWeightsError\n"
            "try:\n    load_vae('%s')\nexcept VAEWeightsError as e:\n    print('CLEAR', e)\n" % SD_VAE_ID)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.startswith("CLEAR vae: could not load 'stabilityai/sd-vae-ft-ema'"), res.stderr[-2000:]
    assert "--vae /path/to/sd-vae-ft-ema" in res.stdout


def test_torchrun_two_ranks_write_the_same_shards(prepared, tmp_path):
    root, manifest = prepared
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "full_scale.data", "prepare", "--source", str(root / "src"), "--out", str(tmp_path / "out"),
           "--resolution", str(RES), "--vae", str(root / "vae"), "--shard-size", "4", "--batch-size", "3",
           "--workers", "0", "--images"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["count"] for s in got["shards"]] == [s["count"] for s in manifest["shards"]]
    from safetensors.torch import load_file

    for a, b in zip(got["shards"], manifest["shards"]):  # equal up to the thread count's float summation order
        ta, tb = load_file(tmp_path / "out" / a["file"]), load_file(root / "out" / b["file"])
        assert torch.equal(ta["labels"], tb["labels"]) and torch.equal(ta["indices"], tb["indices"])
        torch.testing.assert_close(ta["latents"], tb["latents"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["latent_std"], manifest["latent_std"], rtol=1e-5)
