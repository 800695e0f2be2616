"""full_scale.evaluation.fid and full_scale.evaluation.scoring: the Fréchet distance against scipy, the Inception Score, the TF1 resize,
the FID Inception's weights handling, ADM .npz I/O, and prepare → train → sample → decode → evaluate on the CPU
with a tiny random AutoencoderKL, a tiny DiT and a randomly initialised Inception."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from full_scale.evaluation.fid import (InceptionV3, InceptionWeightsError, frechet_distance,
                                       frechet_distance_to_samples, gaussian_stats, inception_score, load_inception,
                                       resize_tf1, tf1_bilinear_matrix)

REPO = Path(__file__).resolve().parents[1]


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root (as the TTUR / ADM code computes it)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def random_spd(rng, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T + (0 if rank else 0.1) * np.eye(d)


# ------------------------------------------------------------------------------------------------ Fréchet distance

@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 10), seed=st.integers(0, 2**16), shift=st.floats(0, 3))
def test_frechet_distance_matches_scipy_for_known_gaussians(d, seed, shift):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + shift
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    want = scipy_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8, abs=1e-9 * (1 + np.trace(s1 + s2)))


def test_frechet_distance_closed_forms():
    # diagonal (commuting) covariances: Σ (μ1 − μ2)² + Σ (sqrt a − sqrt b)²; identical Gaussians: 0
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    s = random_spd(np.random.default_rng(0), 6)
    assert abs(frechet_distance(mu1[:1].repeat(6), s, mu1[:1].repeat(6), s)) < 1e-10


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(2, 12), rank2=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_frechet_to_samples_is_exact_for_any_sample_count(n, d, rank2, seed):
    # The n × n route against scipy on the samples' own mean and covariance, with a possibly singular Σ2.
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d)) * rng.uniform(0.5, 2, d) + rng.standard_normal(d)
    mu2, s2 = rng.standard_normal(d), random_spd(rng, d, rank=min(rank2, d))
    mu1, s1 = gaussian_stats(feats)
    want = scipy_frechet(mu1, s1, mu2, s2)
    got = frechet_distance_to_samples(feats, mu2, s2)
    # scipy's sqrtm of a singular product is itself only accurate to ~sqrt(eps) of the scale
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6 * (1 + np.trace(s1 + s2)))


def test_frechet_argument_errors():
    with pytest.raises(ValueError, match="features"):
        frechet_distance_to_samples(np.zeros((1, 3)), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="mu2, sigma2"):
        frechet_distance_to_samples(np.zeros((4, 3)), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="C1"):
        frechet_distance(np.zeros(2), np.ones((3, 3)), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------------------- Inception Score

def test_inception_score_known_values_and_numpy():
    k, n = 7, 70
    assert inception_score(np.zeros((n, k)), splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)  # p(y|x) = p(y)
    confident = np.full((n, k), -1e3)
    confident[np.arange(n), np.arange(n) % k] = 0.0  # one sure class each, all classes equally often
    mean, std = inception_score(confident, splits=2)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    logits = np.random.default_rng(0).standard_normal((n, k)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    chunks = [p[:23], p[23:46], p[46:]]  # rows ⌊i·70/3⌋ …: the original IS code's chunks (the last one larger)
    scores = [np.exp((c * (np.log(c) - np.log(c.mean(0)))).sum(1).mean()) for c in chunks]
    assert inception_score(logits, splits=3) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits, splits=n + 1)


# ---------------------------------------------------------------------------------------------------- TF1 resize

@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 40), n_out=st.integers(1, 60))
def test_tf1_resize_matrix_matches_a_per_pixel_loop(n_in, n_out):
    # TF1 resize_bilinear, align_corners=False, no half-pixel centres: in = float32(out · float32(n_in / n_out)).
    scale = np.float32(n_in / n_out)
    want = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = float(np.float32(i) * scale)
        lo = int(np.floor(x))
        hi = min(lo + 1, n_in - 1)
        want[i, lo] += 1 - (x - lo)
        want[i, hi] += x - lo
    np.testing.assert_allclose(tf1_bilinear_matrix(n_in, n_out).numpy(), want, rtol=0, atol=1e-12)


def test_resize_tf1_on_images():
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(resize_tf1(x, 5)[..., :5], torch.einsum("pw,bchw->bchp", tf1_bilinear_matrix(7, 5), x))
    assert torch.equal(resize_tf1(torch.ones(1, 1, 4, 9), 13), torch.ones(1, 1, 13, 13))  # rows sum to one


# ------------------------------------------------------------------------------------------------ the FID network

def randomized_inception(seed: int = 0) -> InceptionV3:
    """Random weights whose activations keep their scale (He init, non-trivial batch-norm statistics)."""
    torch.manual_seed(seed)
    model = InceptionV3()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("incep") / "inception.safetensors"
    save_file(randomized_inception().state_dict(), str(path))
    return path


def test_inception_weights_load_and_errors(inception_file, tmp_path, monkeypatch):
    model = load_inception(inception_file)
    state = {k: v for k, v in randomized_inception().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.pth")  # the .pth layout of the released file (no batch counters)
    assert all(torch.equal(a, b) for a, b in zip(load_inception(tmp_path / "w.pth").state_dict().values(),
                                                  model.state_dict().values()))
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(InceptionWeightsError, match="missing.*Mixed_7c.branch_pool.conv.weight"):
        load_inception(tmp_path / "bad.pth")
    with pytest.raises(InceptionWeightsError, match="no weights file"):
        load_inception(tmp_path / "absent.pth")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InceptionWeightsError, match="pt_inception-2015-12-05-6726825d.pth.*--inception"):
        load_inception(None)


def test_inception_outputs_are_per_image_and_shaped(inception_file):
    model = load_inception(inception_file)
    x = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f, z = model(x)
        f1, _ = model(x[1:])
    assert f.shape == (2, 2048) and z.shape == (2, 1008) and bool((f >= 0).all())  # pool_3 follows a ReLU
    torch.testing.assert_close(f1[0], f[1], rtol=1e-4, atol=1e-4)  # no batch coupling in eval mode
    assert float((f[0] - f[1]).abs().max()) > 1e-3 * float(f.abs().max())  # distinct images, distinct features
    with pytest.raises(ValueError, match="uint8"):
        model(x.float())


# --------------------------------------------------------------------------------------------- ADM .npz batches

def test_npz_arrays_memory_map_and_round_trip(tmp_path):
    from full_scale.evaluation.scoring import ImageSet, npz_array, write_adm_npz

    images = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    write_adm_npz(tmp_path / "a.npz", images, np.arange(5))
    mapped = npz_array(tmp_path / "a.npz")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, images)
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_1"], np.arange(5))
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    assert np.array_equal(npz_array(tmp_path / "c.npz"), images)  # compressed: loaded instead
    (tmp_path / "batches").mkdir()
    write_adm_npz(tmp_path / "batches" / "images-00000.npz", images[:2])
    write_adm_npz(tmp_path / "batches" / "images-00001.npz", images[2:])
    s = ImageSet(tmp_path / "batches")
    assert len(s) == 5 and np.array_equal(s.batch(1, 4), images[1:4])
    np.savez(tmp_path / "f.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(tmp_path / "f.npz")


# ------------------------------------------------------------------------------ prepare → train → sample → evaluate

@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_reference_pkl_written_by_either_numpy_major_reads(tmp_path, core):
    """An edm2 .pkl names numpy's core package as the numpy that wrote it did (numpy.core before 2, numpy._core
    from 2 on); both spellings read on the running numpy (the floor, 1.24, has no numpy._core)."""
    import pickle
    import re

    from full_scale.evaluation.scoring import load_reference_stats

    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    raw = pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=3)  # protocol 3: module names as text lines
    raw = re.sub(rb"numpy\._?core\.", core.encode() + b".", raw)
    assert (b"c" + core.encode() + b".multiarray\n") in raw
    (tmp_path / "ref.pkl").write_bytes(raw)
    got_mu, got_sigma, form = load_reference_stats(tmp_path / "ref.pkl")
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    assert form == "dataset statistics (edm2 .pkl)"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, inception_file):
    """Prepare 6 images with the tiny VAE; one training step of a tiny DiT with the ImageNet preset's trainer
    (``full_scale.train``); 4 one-step samples (``full_scale.sample``); decode them to an ADM .npz (the CLI)."""
    pytest.importorskip("diffusers", reason="the VAE stages need the optional `diffusers` package")
    from test_fs_data import image_folder, tiny_vae_folder

    from full_scale import sample as fs_sample
    from full_scale import train as fs_train
    from full_scale.data.latents import prepare
    from full_scale.evaluation.scoring import main as evaluate_main

    root = tmp_path_factory.mktemp("pipeline")
    vae = tiny_vae_folder(root / "vae")
    prepare(image_folder(root / "src", per_class=2), root / "data", resolution=16, vae=str(vae), shard_size=3,
            batch_size=3, num_workers=0, images=True)
    tiny = ["model.name=null", "model.hidden_size=32", "model.depth=1", "model.num_heads=2", "model.input_size=8",
            "model.num_classes=3", "model.patch_size=2", "model.freq_dim=16", f"data.root={root / 'data'}",
            "data.num_workers=0", "train.global_batch=6", "train.micro_batch=6", "log.lipschitz_probes=4"]
    fs_train.main(["--preset", "imagenet-256", "--out", str(root / "run"), "--steps", "1"]
                  + [arg for item in tiny for arg in ("--set", item)])
    fs_sample.main(["--run", str(root / "run"), "--nfe", "1", "--classes", "0", "2", "--per-class", "2",
                    "--out", str(root / "samples")])
    latents = root / "samples" / "samples_1step.npz"
    evaluate_main(["decode", "--latents", str(latents), "--vae", str(vae), "--latent-stats", str(root / "data"),
                   "--out", str(root / "samples.npz"), "--batch-size", "3"])
    return root, latents


def test_decode_writes_the_vae_images_of_the_latents(pipeline):
    from full_scale.data.vae import decode_latents, load_vae
    from full_scale.evaluation.scoring import resolve_latent_stats

    root, latents_file = pipeline
    logged = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 1 and np.isfinite(logged[-1]["loss"])  # the trainer took its step
    with np.load(latents_file) as z:
        latents, labels = torch.from_numpy(z["samples"]), z["labels"]
    with np.load(root / "samples.npz") as z:
        images, got_labels = z["arr_0"], z["arr_1"]
    want = decode_latents(load_vae(str(root / "vae")), latents, resolve_latent_stats(str(root / "data")))
    assert latents.shape == (4, 4, 8, 8) and images.dtype == np.uint8 and images.shape == (4, 16, 16, 3)
    assert np.abs(images.astype(int) - want.astype(int)).max() <= 1
    assert np.array_equal(got_labels, labels) and labels.tolist() == [0, 0, 2, 2]


@pytest.fixture(scope="module")
def features(pipeline, inception_file):
    """Inception outputs of the decoded samples and of the prepared image archive, computed directly."""
    from full_scale.evaluation.scoring import ImageSet, inception_outputs

    root, model = pipeline[0], load_inception(inception_file)
    fs, zs = inception_outputs(ImageSet(root / "samples.npz"), model, batch_size=3)
    fr, _ = inception_outputs(ImageSet(root / "data"), model, batch_size=4)  # prepare's images-*.npz archive
    return fs, zs, fr


def expected_numbers(features) -> dict:
    fs, zs, fr = features
    return {"fid": frechet_distance_to_samples(fs, *gaussian_stats(fr)), "inception_score": inception_score(zs, 2)[0]}


def test_fid_command_end_to_end(pipeline, inception_file, features, capsys):
    from full_scale.evaluation.scoring import main as evaluate_main
    from full_scale.evaluation.scoring import reference_stats

    root = pipeline[0]
    fs, _, fr = features
    evaluate_main(["fid", "--samples", str(root / "samples.npz"), "--ref", str(root / "data"), "--inception",
                   str(inception_file), "--splits", "2", "--out", str(root / "fid.json")])
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((root / "fid.json").read_text())
    assert fs.shape == (4, 2048) and fr.shape == (6, 2048) and result["num_samples"] == 4
    # the reported numbers: the samples' low-rank route against the reference's statistics, and the IS
    want = expected_numbers(features)
    assert result["fid"] > 0 and result["fid"] == pytest.approx(want["fid"], rel=1e-6)
    assert result["inception_score"] == pytest.approx(want["inception_score"], rel=1e-6)
    # the same images against themselves: zero up to rounding, in 2048 dimensions with singular covariances
    assert abs(frechet_distance_to_samples(fr, *gaussian_stats(fr))) < 1e-7 * np.trace(gaussian_stats(fr)[1])
    # an ADM-style reference .npz (mu, sigma) is used as it is, without running the network
    np.savez(root / "ref_stats.npz", mu=fr.mean(0), sigma=np.cov(fr, rowvar=False), arr_0=np.zeros((1, 2, 2, 3)))
    mu, sigma = reference_stats(root / "ref_stats.npz", model=None)
    assert np.array_equal(mu, fr.mean(0)) and np.array_equal(sigma, np.cov(fr, rowvar=False))


def test_stats_and_export_commands(pipeline, inception_file, features, tmp_path):
    from PIL import Image

    from full_scale.evaluation.scoring import main as evaluate_main

    root = pipeline[0]
    images = np.load(root / "samples.npz")["arr_0"]
    (tmp_path / "pngs").mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(tmp_path / "pngs" / f"{i:03d}.png")
    evaluate_main(["export", "--images", str(tmp_path / "pngs"), "--out", str(tmp_path / "exported.npz")])
    assert np.array_equal(np.load(tmp_path / "exported.npz")["arr_0"], images)
    evaluate_main(["stats", "--images", str(tmp_path / "exported.npz"), "--inception", str(inception_file),
                   "--out", str(tmp_path / "stats.npz")])
    f = features[0]
    with np.load(tmp_path / "stats.npz") as s:
        np.testing.assert_allclose(s["mu"], f.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s["sigma"], np.cov(f, rowvar=False), rtol=1e-6, atol=1e-9)


def test_torchrun_two_ranks_give_the_single_process_numbers(pipeline, inception_file, features, tmp_path):
    root = pipeline[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "full_scale.evaluation"]
    res = subprocess.run(run + ["decode", "--latents", str(pipeline[1]), "--vae", str(root / "vae"),
                                "--latent-stats", str(root / "data"), "--out", str(tmp_path / "s.npz")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = np.load(tmp_path / "s.npz")["arr_0"], np.load(root / "samples.npz")["arr_0"]
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    res = subprocess.run(run + ["fid", "--samples", str(root / "samples.npz"), "--ref", str(root / "data"),
                                "--inception", str(inception_file), "--splits", "2", "--batch-size", "2",
                                "--out", str(tmp_path / "fid.json")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got, want = json.loads((tmp_path / "fid.json").read_text()), expected_numbers(features)
    for key in ("fid", "inception_score"):
        assert got[key] == pytest.approx(want[key], rel=1e-5)


def test_reference_statistics_in_both_forms(pipeline, inception_file, features, tmp_path, capsys):
    """stats on the prepared training crops (dataset statistics) written as edm2's .pkl and as an .npz; fid reads
    both to the same number, says which form it used, and a .pkl that is not plain arrays is refused."""
    import pickle

    from full_scale.evaluation.scoring import load_reference_stats
    from full_scale.evaluation.scoring import main as evaluate_main

    root = pipeline[0]
    fr = features[2]  # the features of the prepared crops (root / "data"), computed independently
    for suffix in (".pkl", ".npz"):
        out = tmp_path / f"ref{suffix}"
        evaluate_main(["stats", "--images", str(root / "data"), "--inception", str(inception_file), "--out", str(out)])
        mu, sigma, form = load_reference_stats(out)
        np.testing.assert_allclose(mu, fr.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(sigma, np.cov(fr, rowvar=False), rtol=1e-6, atol=1e-9)
        assert form == {".pkl": "dataset statistics (edm2 .pkl)", ".npz": "mu/sigma .npz"}[suffix]
    with open(tmp_path / "ref.pkl", "rb") as f:  # edm2's layout, readable by edm2's own load_stats (pickle)
        stored = pickle.load(f)
    assert set(stored) == {"fid", "num_images"} and stored["num_images"] == len(fr)
    results = []
    for ref in ("ref.pkl", "ref.npz"):
        evaluate_main(["fid", "--samples", str(root / "samples.npz"), "--ref", str(tmp_path / ref), "--inception",
                       str(inception_file), "--splits", "2"])
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["fid"] == pytest.approx(results[1]["fid"], rel=1e-9)
    assert results[0]["fid"] == pytest.approx(expected_numbers(features)["fid"], rel=1e-6)
    assert [r["ref_form"] for r in results] == ["dataset statistics (edm2 .pkl)", "mu/sigma .npz"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fid": {"mu": Evil()}}))
    with pytest.raises(ValueError, match="evil.pkl is not edm2-style.*system is not a numpy array part"):
        load_reference_stats(tmp_path / "evil.pkl")
    (tmp_path / "nofid.pkl").write_bytes(pickle.dumps({"mu": np.zeros(2)}))
    with pytest.raises(ValueError, match="nofid.pkl is not edm2-style.*KeyError"):
        load_reference_stats(tmp_path / "nofid.pkl")
    with pytest.raises(ValueError, match="out: expected a .pkl"):
        evaluate_main(["stats", "--images", str(root / "data"), "--inception", str(inception_file), "--out",
                       str(tmp_path / "ref.json")])


def test_fid_prc_against_adm_style_reference(pipeline, inception_file, features, tmp_path, capsys):
    """fid --prc against an ADM-style reference (mu/sigma and images in one .npz): the FID from its statistics,
    precision (of the samples) and recall (of the reference) from its images' features, as brute-force k-NN gives
    them; a reference of statistics alone is refused before any work."""
    from test_fs_fidelity import knn_precision_recall, require_fidelity

    from full_scale.evaluation.scoring import ImageSet, save_reference_stats
    from full_scale.evaluation.scoring import main as evaluate_main

    require_fidelity()
    root = pipeline[0]
    fs, _, fr = features
    ref_images = ImageSet(root / "data")
    ref = tmp_path / "adm_ref.npz"  # the layout of VIRTUAL_imagenet256_labeled.npz
    np.savez(ref, arr_0=ref_images.batch(0, len(ref_images)), mu=fr.mean(0), sigma=np.cov(fr, rowvar=False))
    evaluate_main(["fid", "--samples", str(root / "samples.npz"), "--ref", str(ref), "--inception",
                   str(inception_file), "--splits", "2", "--prc"])
    result = json.loads(capsys.readouterr().out)
    assert result["ref_form"] == "mu/sigma .npz" and result["prc_num_ref"] == len(fr) == 6
    assert result["fid"] == pytest.approx(expected_numbers(features)["fid"], rel=1e-6)
    precision, recall = knn_precision_recall(fs, fr, 3)
    assert (result["precision"], result["recall"]) == pytest.approx((precision, recall), abs=1e-6)
    for stats_only in (tmp_path / "stats_only.npz", tmp_path / "stats_only.pkl"):
        save_reference_stats(stats_only, fr.mean(0), np.cov(fr, rowvar=False), len(fr))
        with pytest.raises(ValueError, match=f"ref: --prc needs the reference images .*{stats_only.name} holds only"):
            evaluate_main(["fid", "--samples", str(root / "samples.npz"), "--ref", str(stats_only), "--inception",
                           str(tmp_path / "absent.pth"), "--prc"])
