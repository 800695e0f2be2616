"""The evaluation against torch-fidelity (full_scale/evaluation/fidelity.py): the loaded code is the installed
release's own files; our FID Inception, Fréchet distance and Inception Score agree with torch-fidelity's on random
weights, statistics and logits; precision/recall has its known answers and matches a brute-force float64 k-NN; and
FD_DINOv2 either fails with a clear message (no working torchvision, as on CI) or runs (with a stand-in network).

``make setup`` installs torch-fidelity (``pip install --no-deps``), so these tests run on CI; they skip only where it
is not installed."""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import inspect
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fs_eval import random_spd, randomized_inception

from full_scale.evaluation import fid
from full_scale.evaluation import fidelity as fl


def require_fidelity():
    """torch-fidelity's modules, or a skip where torch-fidelity is not installed."""
    try:
        return fl.reference()
    except fl.FidelityUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tf():
    return require_fidelity()


def record_hash(path: Path) -> str:
    """A file's sha256 as a wheel's RECORD writes it (urlsafe base64, no padding)."""
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


# ------------------------------------------------------------------------------------------------------ loading

def test_loaded_modules_are_the_installed_release_files(tf):
    """Both ways of loading (the package, and its files without the __init__) give the installed release's own
    files, byte for byte as its wheel's RECORD lists them; the second leaves sys.modules as it found it."""
    dist = importlib.metadata.distribution("torch-fidelity")
    records = {str(f): f for f in dist.files}
    assert tf.via == ("package" if fl.torchvision_imports() else "files")
    before = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torch_fidelity"}
    files = fl._load_without_init(Path(importlib.util.find_spec("torch_fidelity").submodule_search_locations[0]))
    assert {k: v for k, v in sys.modules.items() if k.split(".")[0] == "torch_fidelity"} == before
    for name in fl.MODULES:
        entry = records[f"torch_fidelity/{name}.py"]
        for module in (getattr(tf, name), files[name]):
            source = Path(inspect.getsourcefile(module)).resolve()
            assert source == Path(dist.locate_file(entry)).resolve()
            assert record_hash(source) == entry.hash.value, f"{source} differs from the released file"
    # the stand-in for torch_fidelity.utils (the metric modules' image pipeline) says what is missing
    with pytest.raises(fl.FidelityUnavailable, match="resolve_feature_extractor needs torchvision"):
        files["metric_fid"].calculate_fid(input1="a", input2="b")


def test_missing_torch_fidelity_names_the_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity"
                        else find_spec(name, *a))
    fl.reference.cache_clear()
    try:
        with pytest.raises(fl.FidelityUnavailable, match=r"pip install --no-deps torch-fidelity.*\[fidelity\]"):
            fl.reference()
        with pytest.raises(fl.FidelityUnavailable, match="torch-fidelity is not installed"):
            fl.precision_recall(np.zeros((5, 2)), np.ones((5, 2)))
    finally:
        fl.reference.cache_clear()


# ---------------------------------------------------------------------------------------------- FID Inception

def test_inception_matches_torch_fidelity_on_random_weights(tf, tmp_path, monkeypatch):
    """Same random weights in both networks. The observed difference is ~2e-5 on features of size ~50 (float32
    rounding in different convolution orders); the tolerance, 1e-5 of the largest value, is 50x below what the
    closest variant, PyTorch's half-pixel bilinear resize instead of TF1's, changes (checked below)."""
    ours = randomized_inception()
    torch.save(ours.state_dict(), tmp_path / "w.pth")  # torch-fidelity reads a .pth state dict
    theirs = tf.feature_extractor_inceptionv3.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(tmp_path / "w.pth"))
    x = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs(x)
        got = ours(x)
        monkeypatch.setattr(fid, "resize_tf1", lambda t, size: torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", align_corners=False))
        variant = ours(x)
    for a, v, b in zip(got, variant, want):
        tol = 1e-5 * float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
        assert float((v - b).abs().max()) > 50 * tol


# ----------------------------------------------------------------------------------------------- FID and IS

@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 12), n=st.integers(2, 30), seed=st.integers(0, 2**16), shift=st.floats(0, 3))
def test_frechet_distance_matches_torch_fidelity(tf, d, n, seed, shift):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + shift
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    scale = 1 + np.trace(s1 + s2)
    theirs = tf.metric_fid.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(theirs[tf.metric_fid.KEY_METRIC_FID],
                                                                   rel=1e-9, abs=1e-12 * scale)
    # from n feature rows (a singular covariance when n <= d): their eigvals route is accurate to ~1e-7 there
    feats = rng.standard_normal((n, d)) * rng.uniform(0.5, 2, d) + rng.standard_normal(d)
    stats = tf.metric_fid.fid_features_to_statistics(torch.from_numpy(feats))
    if d == 1:  # np.cov of one variable is 0-d; torch-fidelity passes it on as it is
        stats["sigma"] = np.atleast_2d(stats["sigma"])
    theirs = tf.metric_fid.fid_statistics_to_metric(stats, {"mu": mu2, "sigma": s2}, False)
    assert fid.frechet_distance_to_samples(feats, mu2, s2) == pytest.approx(
        theirs[tf.metric_fid.KEY_METRIC_FID], rel=1e-6, abs=1e-6 * (1 + np.trace(stats["sigma"] + s2)))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(2, 20), splits=st.integers(1, 10), seed=st.integers(0, 2**16),
       sharpness=st.floats(0.1, 10))
def test_inception_score_matches_torch_fidelity(tf, n, k, splits, seed, sharpness):
    splits = min(splits, n)
    logits = np.random.default_rng(seed).standard_normal((n, k)) * sharpness
    theirs = tf.metric_isc.isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=False)
    mean, std = fid.inception_score(logits, splits=splits)
    assert mean == pytest.approx(theirs[tf.metric_isc.KEY_METRIC_ISC_MEAN], rel=1e-10)
    assert std == pytest.approx(theirs[tf.metric_isc.KEY_METRIC_ISC_STD], rel=1e-7, abs=1e-10 * mean)


# ------------------------------------------------------------------------------------------- precision/recall

def knn_precision_recall(generated: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """Brute force in float64: all distances, radii from the sorted rows (index 0 is the point itself)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    radius_g = np.sort(dist(generated, generated), axis=1)[:, k]
    radius_r = np.sort(dist(real, real), axis=1)[:, k]
    d_gr = dist(generated, real)
    precision = (d_gr <= radius_r[None, :]).any(axis=1).mean()
    recall = (d_gr.T <= radius_g[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def test_precision_recall_known_answers(tf):
    rng = np.random.default_rng(0)
    real = rng.standard_normal((30, 16))
    assert fl.precision_recall(real, real) == (1.0, 1.0)  # every point is its own ball's centre
    far = rng.standard_normal((20, 16)) + 100.0  # a cluster 400 away, radii ~5: no point in another's ball
    assert fl.precision_recall(far, real) == (0.0, 0.0)
    # the generated set is a subset: each generated point is a real one (precision 1); recall is below 1 when
    # the subset's own balls (3rd neighbour among only 10 points) miss some real points, as brute force says
    subset = real[:10]
    got = fl.precision_recall(subset, real)
    assert got[0] == 1.0 and got == pytest.approx(knn_precision_recall(subset, real, 3), abs=1e-6)
    assert got[1] < 1.0
    with pytest.raises(ValueError, match="k: .* more than k"):
        fl.precision_recall(real[:3], real)
    with pytest.raises(ValueError, match="generated, real"):
        fl.precision_recall(real[:, :4], real)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), m=st.integers(2, 40), d=st.integers(1, 8), k=st.integers(1, 5),
       batch=st.integers(1, 50), shift=st.floats(0, 3), spread=st.floats(0.3, 3), seed=st.integers(0, 2**16))
def test_precision_recall_matches_brute_force_knn(tf, n, m, d, k, batch, shift, spread, seed):
    k = min(k, n - 1, m - 1)
    rng = np.random.default_rng(seed)
    real = rng.standard_normal((m, d))
    generated = rng.standard_normal((n, d)) * spread + shift
    got = fl.precision_recall(generated, real, k=k, batch_size=batch)
    assert got == pytest.approx(knn_precision_recall(generated, real, k), abs=1e-6)


# ------------------------------------------------------------------------------------------------------- DINOv2

@pytest.mark.skipif(fl.torchvision_imports(), reason="torchvision imports here: FD_DINOv2 is available")
def test_fd_dinov2_without_torchvision_says_so(tf):
    with pytest.raises(fl.FidelityUnavailable, match="fd_dinov2: .* imports torchvision, which does not import here"):
        fl.load_dinov2()


@pytest.mark.skipif(not fl.torchvision_imports(), reason="torch-fidelity's DINOv2 extractor needs torchvision")
def test_fd_dinov2_offline_is_one_line_and_runs_with_a_network(tf, monkeypatch, tmp_path):
    from full_scale.evaluation.scoring import dinov2_features, fid_and_is, write_adm_npz

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network\nsecond line")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(fl.DinoV2WeightsError) as err:
        fl.load_dinov2()
    assert "\n" not in str(err.value) and "torch.hub" in str(err.value) and "network access" in str(err.value)

    class StandIn(torch.nn.Module):  # what torch.hub would return: normalized (B, 3, 224, 224) → (B, 1024)
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, fl.DINOV2_DIM, 14, stride=14)

        def forward(self, x):
            assert x.shape[1:] == (3, 224, 224)
            return self.proj(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    monkeypatch.setattr(torch.hub, "load", lambda *args, **kwargs: StandIn())
    dinov2 = fl.load_dinov2()
    rng = np.random.default_rng(0)
    write_adm_npz(tmp_path / "s.npz", rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8))
    write_adm_npz(tmp_path / "r.npz", rng.integers(0, 256, (6, 20, 20, 3), dtype=np.uint8))
    from full_scale.evaluation.scoring import ImageSet

    got = fid_and_is(tmp_path / "s.npz", tmp_path / "r.npz", model=randomized_inception(), splits=1,
                     fd_dinov2=True, dinov2=dinov2)
    gen, real = (dinov2_features(ImageSet(tmp_path / p), dinov2) for p in ("s.npz", "r.npz"))
    assert gen.shape == (5, fl.DINOV2_DIM) and got["fd_dinov2_num_ref"] == 6
    assert got["fd_dinov2"] == pytest.approx(fid.frechet_distance_to_samples(gen, *fid.gaussian_stats(real)),
                                             rel=1e-9)
