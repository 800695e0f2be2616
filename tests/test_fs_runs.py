"""Runs you can watch and move (issue 20): snapshots kept beside the rolling checkpoints, and a new run started from
existing weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from full_scale import checkpoint, train
from full_scale.callbacks import Callback
from full_scale.metrics import read_metrics

TINY = ["--set", "model.depth=1", "--set", "model.hidden_size=32", "--set", "model.num_heads=2",
        "--set", "train.global_batch=8", "--set", "log.every=1", "--set", "log.lipschitz_every=0"]


def test_snapshots_survive_rotation(tmp_path):
    train.main(["--out", str(tmp_path), "--steps", "6", *TINY, "--set", "checkpoint.every=1",
                "--set", "checkpoint.keep=1", "--set", "checkpoint.snapshot_every=2"])
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step_00000002", "step_00000004", "step_00000005", "step_00000006"]
    with pytest.raises(ValueError, match="checkpoint.snapshot_every: expected a multiple of checkpoint.every"):
        train.main(["--out", str(tmp_path / "x"), *TINY, "--set", "checkpoint.every=4",
                    "--set", "checkpoint.snapshot_every=6"])


class StartWeights(Callback):
    def on_start(self, run, dataset):
        self.nets = {name: {k: v.clone() for k, v in net.state_dict().items()}
                     for name, net in (("model", run.model), ("target_ema", run.target_ema),
                                       ("eval_ema", run.eval_ema))}


def test_a_new_run_starts_from_a_checkpoint_or_a_safetensors_file(tmp_path):
    train.main(["--out", str(tmp_path / "a"), "--steps", "2", *TINY])
    source = checkpoint.latest(tmp_path / "a")
    cfg = train.config_from_args(train.parse_args(["--out", "-", "--steps", "1", *TINY,
                                                   "--init-from", str(source)]))
    seen = StartWeights()
    train.train(cfg, tmp_path / "b", callbacks=[seen])
    from safetensors.torch import load_file

    for name in checkpoint.WEIGHTS:  # each network from its own file
        saved = load_file(str(source / f"{name}.safetensors"))
        assert all(torch.equal(seen.nets[name][k], v) for k, v in saved.items())
    events = [r for r in read_metrics(tmp_path / "b") if r.get("event") == "init_from"]
    assert events == [{"event": "init_from", "step": 0, "source": str(source)}]
    opt = torch.load(checkpoint.latest(tmp_path / "b") / "optimizer.pt", weights_only=True)
    assert all(int(st["step"]) == 1 for st in opt["state"].values())  # a fresh optimizer

    file = tmp_path / "weights.safetensors"
    save_file(load_file(str(source / "eval_ema.safetensors")), str(file))
    seen = StartWeights()
    train.train(cfg.override({"train.init_from": str(file)}), tmp_path / "c", callbacks=[seen])
    for name in checkpoint.WEIGHTS:  # all three from the one file
        assert all(torch.equal(seen.nets[name][k], v) for k, v in load_file(str(file)).items())

    with pytest.raises(ValueError, match="train.init_from: expected a checkpoint folder or a .safetensors file"):
        train.train(cfg.override({"train.init_from": str(tmp_path / "missing.pt")}), tmp_path / "d")
    wrong = train.config_from_args(train.parse_args(["--out", "-", "--steps", "1", *TINY, "--set",
                                                     "model.hidden_size=64", "--init-from", str(source)]))
    with pytest.raises(checkpoint.CheckpointError):
        train.train(wrong, tmp_path / "e")


def test_a_resume_keeps_the_weights_it_started_from_without_repeating_init_from(tmp_path):
    """train.init_from only says how a run starts: resuming needs no --init-from, ignores (and logs) another one,
    and the run keeps its provenance in config.yaml and in every later checkpoint."""
    import yaml

    train.main(["--out", str(tmp_path / "a"), "--steps", "1", *TINY])
    source = str(checkpoint.latest(tmp_path / "a"))
    other = str(tmp_path / "other.safetensors")
    train.main(["--out", str(tmp_path / "b"), "--steps", "1", *TINY, "--init-from", source])
    train.main(["--out", str(tmp_path / "b"), "--steps", "2", *TINY])  # no --init-from: resumes
    train.main(["--out", str(tmp_path / "b"), "--steps", "3", *TINY, "--init-from", other])  # ignored: resumes
    records = read_metrics(tmp_path / "b")
    assert [r["step"] for r in records if r.get("event") == "start"] == [0, 1, 2]
    assert [r for r in records if r.get("event") == "init_from"] == [{"event": "init_from", "step": 0,
                                                                       "source": source}]
    assert [r for r in records if r.get("event") == "init_from_ignored"] == [
        {"event": "init_from_ignored", "step": 2, "given": other, "started_from": source}]
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["train"]["init_from"] == source
    last = checkpoint.latest(tmp_path / "b")
    assert last.name == "step_00000003" and checkpoint.read_meta(last)["config"]["train"]["init_from"] == source
    with pytest.raises(ValueError, match="train.lr: checkpoint"):  # other keys are still compared
        train.main(["--out", str(tmp_path / "b"), "--steps", "4", *TINY, "--set", "train.lr=0.5"])


def as_if_written_by_two_ranks(ckpt):
    """Re-publish a one-rank checkpoint as a two-rank run's (a second rng file, world_size 2), through the same writer
    (so every hash is right)."""
    import json
    import shutil

    from tvm_theory.io import publish_checkpoint

    meta = json.loads((ckpt / "meta.json").read_text())
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.copytree(ckpt, tmp)
    (tmp / "meta.json").unlink()
    shutil.copy(tmp / "rng_rank0.pt", tmp / "rng_rank1.pt")
    body = {k: v for k, v in meta.items() if k not in ("format", "step", "files", "meta_sha256")}
    body["world_size"] = 2
    body["config"]["train"]["micro_batch"] = None  # global 8 over 2 ranks: micro 4, no accumulation
    publish_checkpoint(tmp, fmt=checkpoint.FORMAT, step=meta["step"], meta=body, keep=None)


def test_resume_on_another_number_of_ranks_keeps_the_state_and_logs_the_change(tmp_path):
    train.main(["--out", str(tmp_path), "--steps", "2", *TINY, "--set", "checkpoint.every=2"])
    last = checkpoint.latest(tmp_path)
    as_if_written_by_two_ranks(last)
    train.main(["--out", str(tmp_path), "--steps", "4", *TINY, "--set", "checkpoint.every=2"])
    change = [r for r in read_metrics(tmp_path) if r.get("event") == "world_size_change"]
    assert change == [{"event": "world_size_change", "step": 2, "from": 2, "to": 1, "position": 2}]
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]
    opt = torch.load(checkpoint.latest(tmp_path) / "optimizer.pt", weights_only=True)
    assert all(int(st["step"]) == 4 for st in opt["state"].values())  # AdamW's state carried over


def test_a_run_can_be_watched_sample_grids_and_fid_during_training(tmp_path):
    import numpy as np
    from safetensors.torch import save_file as save_weights
    from test_fs_eval import randomized_inception

    inception = tmp_path / "inception.safetensors"
    save_weights(randomized_inception().state_dict(), str(inception))
    reference = tmp_path / "ref.npz"
    np.savez(reference, arr_0=np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "run"
    train.main(["--out", str(out), "--steps", "4", *TINY, "--set", "eval.every=2", "--set", "eval.grid_classes=3",
                "--set", "eval.grid_per_class=2", "--set", f"eval.fid_reference={reference}",
                "--set", f"eval.inception={inception}", "--set", "eval.fid_samples=6"])
    evals = [r for r in read_metrics(out) if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert np.isfinite(r["fid"]) and r["fid"] >= 0 and r["inception_score"] >= 1 - 1e-6
        assert r["fid_samples"] == 6 and (out / "samples" / f"step_{r['step']:08d}.png").stat().st_size > 0
    from PIL import Image

    grid = np.asarray(Image.open(out / "samples" / "step_00000004.png"))
    assert grid.shape[:2] == (4 * (3 * 9 - 1), 4 * (2 * 9 - 1))  # 3 rows × 2 digits of 8 px, 1 px gaps, ×4
    with pytest.raises(ValueError, match="eval.fid_samples"):
        train.main(["--out", str(tmp_path / "x"), *TINY, "--set", "eval.fid_samples=1"])


def test_sample_grids_of_a_latent_run_are_decoded_with_the_data_sets_statistics(tmp_path):
    """eval.vae decodes the grid's latents with the statistics of the run's own data set (no second pass over the
    shards); a data kind without latent statistics is refused with the key's name."""
    import numpy as np
    from PIL import Image

    pytest.importorskip("diffusers", reason="the VAE needs the optional `diffusers` package")
    from full_scale.data.latents import prepare
    from test_fs_data import image_folder, tiny_vae_folder

    vae = tiny_vae_folder(tmp_path / "vae")
    prepare(image_folder(tmp_path / "src", per_class=2), tmp_path / "data", resolution=16, vae=str(vae),
            shard_size=3, batch_size=3, num_workers=0)
    latent = ["--set", "model.input_size=8", "--set", "model.in_channels=4", "--set", "model.num_classes=3",
              "--set", "data.kind=latents", "--set", f"data.root={tmp_path / 'data'}", "--set", "data.num_workers=0",
              "--set", "train.global_batch=6", "--set", "eval.grid_classes=2", "--set", "eval.grid_per_class=1",
              "--set", f"eval.vae={vae}"]
    train.main(["--out", str(tmp_path / "run"), "--steps", "1", *TINY, *latent, "--set", "eval.every=1"])
    grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_00000001.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.std() > 0  # 2 decoded 16-px images, not a blank
    with pytest.raises(ValueError, match="eval.vae: decoding needs latents"):
        train.main(["--out", str(tmp_path / "x"), "--steps", "1", *TINY, "--set", "data.kind=synthetic",
                    "--set", "eval.every=1", "--set", f"eval.vae={vae}"])


@pytest.mark.parametrize("path", ["formula", "torch"])
@pytest.mark.parametrize("max_norm", [0.1, 100.0])
def test_the_norm_and_clip_fallbacks_for_torch_before_2_6_equal_the_definition(monkeypatch, max_norm, path):
    """The trainer runs on torch ≥ 2.4: before 2.6, get_total_norm and clip_grads_with_norm_ do not exist and
    train.total_norm / clip_to_norm use the formula. Both paths ("formula" forced by removing torch's functions,
    "torch" where they exist) against the definition in float64: ‖(g_1, …, g_n)‖₂ of all entries, and every
    gradient times min(1, max_norm / (norm + 1e-6))."""
    if path == "torch" and not hasattr(torch.nn.utils, "get_total_norm"):
        pytest.skip(f"torch {torch.__version__} has no get_total_norm / clip_grads_with_norm_ (added in 2.6)")
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (3, 17, 64)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    flat = torch.cat([p.grad.flatten() for p in params]).double()
    want_norm = float(flat.pow(2).sum().sqrt())
    coef = min(1.0, max_norm / (want_norm + 1e-6))
    want = [p.grad.double() * coef for p in params]
    if path == "formula":
        monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
        monkeypatch.delattr(torch.nn.utils, "clip_grads_with_norm_", raising=False)
    norm = train.total_norm([p.grad for p in params])
    assert norm.dtype == torch.float32 and float(norm) == pytest.approx(want_norm, rel=1e-6)
    train.clip_to_norm(params, max_norm, norm)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad.double(), w, rtol=1e-6, atol=1e-7)
    assert (max_norm < want_norm) == (float(train.total_norm([p.grad for p in params])) < want_norm - 1e-3)


@pytest.mark.slow
def test_two_torchrun_nodes_on_one_machine(tmp_path):
    """The multi-node command of docs/IMAGENET.md, as two "nodes" of one process each on this machine (gloo):
    both join one group of world size 2 and the run finishes with one checkpoint holding both ranks' RNG states."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = os.path.dirname(os.path.dirname(__file__))
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(r),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "full_scale.train", "--out", str(tmp_path), "--steps", "2", *TINY],
                              cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"}) for r in range(2)]
    try:
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    start = read_metrics(tmp_path)[0]
    assert start["world_size"] == 2 and start["micro_batch"] == 4
    assert sorted(f.name for f in checkpoint.latest(tmp_path).glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]


def test_command_line_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from tvm_theory.io import RunLock

    assert train.cli(["--out", str(tmp_path / "a"), *TINY, "--set", "train.lr=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m full_scale.train: error: train.lr: expected a finite number, got 'abc'"]
    lock = RunLock(tmp_path / "b").acquire()
    try:
        assert train.cli(["--out", str(tmp_path / "b"), "--steps", "1", *TINY]) == 2
    finally:
        lock.release()
    assert "the run folder is in use by another process" in capsys.readouterr().err
