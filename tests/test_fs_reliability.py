"""Runs you cannot lose (issue 19): one writer per run folder, resume that refuses a changed configuration, checkpoints
only of a healthy model, exit codes a scheduler can read, hashes over everything a checkpoint holds, and early,
named errors."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from full_scale import checkpoint, run_folder, sample, train
from full_scale.metrics import read_metrics
from tvm_theory.io import CheckpointError, RunFolderBusy, RunLock, start_checkpoint

TINY = ["--set", "model.depth=1", "--set", "model.hidden_size=32", "--set", "model.num_heads=2",
        "--set", "train.global_batch=8", "--set", "log.every=1", "--set", "log.lipschitz_every=0",
        "--set", "checkpoint.every=1", "--set", "checkpoint.keep=2"]


def run(out, steps, *extra):
    return train.main(["--out", str(out), "--steps", str(steps), *TINY, *extra])


def test_a_second_writer_is_refused_at_once_and_a_dead_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tvm_theory.io import RunLock; "
                               f"lock = RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(RunFolderBusy, match=f'"pid": {holder.pid}'):
            run(out, 1)
        assert time.perf_counter() - started < 30 and not (out / "metrics.jsonl").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    run(out, 1)  # the killed holder's lock died with it
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step_00000001"]


def test_checkpoint_writer_removes_only_unfinished_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00000003.tmp").mkdir(parents=True)
    (root / "notes.tmp").write_text("not ours")
    (root / "other.tmp").mkdir()
    start_checkpoint(root, 4)
    assert sorted(p.name for p in root.iterdir()) == ["notes.tmp", "other.tmp", "step_00000004.tmp"]


def test_resume_refuses_a_changed_config_and_keeps_the_saved_one(tmp_path):
    out = tmp_path / "run"
    run(out, 2)
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ValueError) as err:
        run(out, 3, "--set", "train.lr=0.5", "--set", "train.global_batch=16")
    assert "train.lr: checkpoint 0.001, now 0.5" in str(err.value) and "train.global_batch" in str(err.value)
    assert (out / "config.yaml").read_text() == saved  # the config of record is not rewritten to a lie
    with pytest.raises(ValueError, match="train.lr cannot change on resume"):
        run(out, 3, "--set", "train.lr=0.5", "--allow-config-change", "train.lr")
    with pytest.raises(ValueError, match="log.every"):  # a safe change still has to be named
        run(out, 3, "--set", "log.every=2")
    run(out, 4, "--set", "log.every=2", "--allow-config-change", "log.every")
    assert yaml.safe_load((out / "config.yaml").read_text())["log"]["every"] == 2
    change = [r for r in read_metrics(out) if r.get("event") == "config_change"]
    assert change == [{"event": "config_change", "step": 2, "changes": {"log.every": {"checkpoint": 1, "now": 2}}}]
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 4]


def poison_from(monkeypatch, first_bad: int):
    """Every batch from the ``first_bad``-th on has a NaN input: the run diverges and stays diverged."""
    real, seen = train.prepare_batch, []

    def poisoned(*args, **kwargs):
        batch = real(*args, **kwargs)
        seen.append(batch)
        if len(seen) >= first_bad:
            batch = dataclasses.replace(batch, x_t=torch.full_like(batch.x_t, float("nan")))
        return batch

    monkeypatch.setattr(train, "prepare_batch", poisoned)


def test_divergence_keeps_the_last_healthy_checkpoint_and_names_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison_from(monkeypatch, 3)
    code = train.cli(["--out", str(out), "--steps", "8", *TINY, "--set", "train.max_nan_skips=2"])
    assert code == train.EXIT_DIVERGED
    # steps 1, 2 healthy and saved; 3, 4 skipped (no checkpoint of the diverged model); 5 exceeds the skips
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step_00000001", "step_00000002"]
    skipped = [r["step"] for r in read_metrics(out) if r.get("event") == "checkpoint_skipped"]
    assert skipped == [3, 4]
    with pytest.raises(FloatingPointError, match="last healthy checkpoint is .*step_00000002"):
        train.main(["--out", str(out), "--steps", "8", *TINY, "--set", "train.max_nan_skips=2"])


def test_preempted_run_exits_75_and_a_finished_one_0(tmp_path, monkeypatch):
    from test_fs_train import sigterm_during_step

    sigterm_during_step(monkeypatch, 2)
    assert train.cli(["--out", str(tmp_path), "--steps", "4", *TINY]) == train.EXIT_PREEMPTED
    monkeypatch.undo()
    assert train.cli(["--out", str(tmp_path), "--steps", "3", *TINY]) == 0


def test_every_byte_of_a_checkpoint_is_covered_and_the_error_points_to_an_older_intact_one(tmp_path):
    out = tmp_path / "run"
    run(out, 2)
    last = checkpoint.latest(out)
    meta = json.loads((last / "meta.json").read_text())
    meta["step"] = 7  # an edited step must not resume silently
    (last / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="meta data was changed") as err:
        run(out, 3)
    assert "step_00000001 is intact" in str(err.value) and "mv " in str(err.value)


def test_toy_checkpoints_are_hashed_and_the_toy_trainer_stops_on_divergence(tmp_path):
    from safetensors.torch import load_file, save_file

    from toy.train import TrainConfig, checkpoint_root, load_checkpoint
    from toy.train import train as toy_train

    cfg = TrainConfig(testbed="gaussian-2d", steps=3, batch=16, hidden=16, depth=2, warmup=1, log_every=1)
    toy_train(cfg, tmp_path / "ok", progress=False)
    weights = next(checkpoint_root(tmp_path / "ok").iterdir()) / "weights.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.startswith("model."))
    tensors[name] = tensors[name] + 1e-3  # a changed weight, as a flipped byte would
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(tmp_path / "ok", 2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d.*last healthy checkpoint is "
                                                 r".*step_00000000"):
        toy_train(dataclasses.replace(cfg, lr=1e30, warmup=0), tmp_path / "bad", hook_steps=[0],
                  hook=lambda *_: {}, progress=False)
    assert [p.name for p in checkpoint_root(tmp_path / "bad").iterdir()] == ["step_00000000"]
    with pytest.raises(ValueError, match="batch: expected a positive int"):
        TrainConfig(batch=0)


def test_w2_names_overflow_and_attention_refuses_non_float_dtypes():
    from kernels import attention
    from tvm_theory.analysis.transport import w2

    with pytest.raises(OverflowError, match="overflow"):
        w2(torch.full((3, 2), 1e155, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
    for dtype in (torch.int64, torch.bool, torch.complex64):
        x = torch.ones(1, 1, 2, 16, dtype=dtype)
        with pytest.raises(TypeError, match="real floating point"):
            attention(x, x, x, backend="reference")


def test_sample_cli_refuses_bad_classes_and_counts(tmp_path, capsys):
    run(tmp_path, 1)
    for bad, message in ((["--classes", "42"], "--classes: expected classes in [0, 9]"),
                         (["--per-class", "0"], "sample.per_class: expected a value ≥ 1"),
                         (["--nfe", "0"], "sample.nfe")):
        with pytest.raises(SystemExit) as err:
            sample.main(["--run", str(tmp_path), *bad])
        assert err.value.code == 2 and message in capsys.readouterr().err


def test_lock_is_released_after_a_failed_run(tmp_path, monkeypatch):
    poison_from(monkeypatch, 1)
    with pytest.raises(FloatingPointError):
        run(tmp_path, 2, "--set", "train.nan_policy=stop")
    RunLock(tmp_path).acquire().release()  # not held any more


# ---- data preparation ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    pytest.importorskip("diffusers")
    from test_fs_data import tiny_vae_folder

    return tiny_vae_folder(tmp_path_factory.mktemp("vae") / "vae")


def prep(src, out, vae, **kw):
    from test_fs_data import RES

    from full_scale.data.latents import prepare

    return prepare(src, out, resolution=RES, vae=str(vae), shard_size=4, batch_size=3, num_workers=0, **kw)


def test_prepare_checks_the_vae_before_it_writes_a_plan(tmp_path, tiny_vae):
    from test_fs_data import image_folder

    src = image_folder(tmp_path / "src")
    with pytest.raises(Exception, match="no_such_vae"):
        prep(src, tmp_path / "out", tmp_path / "no_such_vae")
    assert not (tmp_path / "out" / "plan.json").exists()
    assert prep(src, tmp_path / "out", tiny_vae)["num_items"] == 9  # the corrected rerun is not blocked


def test_unreadable_images_stop_with_their_name_or_are_skipped_and_listed(tmp_path, tiny_vae):
    from test_fs_data import image_folder

    from full_scale.data.latents import LatentDataset, UnreadableImage

    src = image_folder(tmp_path / "src")
    (src / "n01" / "9.png").write_bytes(b"")  # zero bytes
    good = (src / "n02" / "1.png").read_bytes()
    (src / "n02" / "8.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(UnreadableImage, match="n01/9.png.*--skip-bad-images"):
        prep(src, tmp_path / "out", tiny_vae)
    manifest = prep(src, tmp_path / "out", tiny_vae, skip_bad_images=True)  # same listing: the plan still holds
    assert sorted(manifest["skipped"]) == ["n01/9.png", "n02/8.png"] and manifest["num_items"] == 9
    assert manifest["used_fingerprint"] != manifest["source_fingerprint"]
    assert len(LatentDataset(tmp_path / "out")) == 9


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from full_scale.data.latents import center_crop_arr, to_rgb8

    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 … 65280
    Image.fromarray(ramp).save(tmp_path / "ramp.png")  # a 16-bit grayscale PNG, as a scanner writes it
    img = Image.open(tmp_path / "ramp.png")
    assert img.mode.startswith("I")
    out = np.asarray(to_rgb8(img))
    assert out.shape == (16, 16, 3) and (out[..., 0] == np.round(ramp.astype(float) * 255 / 65535)).all()
    assert 0 < center_crop_arr(img, 8).mean() < 255  # not all white
    with pytest.raises(ValueError, match="mode F"):
        to_rgb8(Image.fromarray(np.zeros((4, 4), np.float32)))


def test_an_empty_class_folder_is_an_error_or_keeps_its_label(tmp_path):
    from test_fs_data import image_folder

    from full_scale.data.latents import ImageSource

    src = image_folder(tmp_path / "src")
    (src / "n015").mkdir()  # sorts between n01 and n02
    with pytest.raises(ValueError, match="without images.*n015"):
        ImageSource(src)
    kept = ImageSource(src, allow_empty_classes=True)
    assert kept.classes == ["n01", "n015", "n02", "n03"] and sorted(set(kept.labels)) == [0, 2, 3]


def test_a_damaged_shard_header_is_a_shard_error(tmp_path, tiny_vae):
    from test_fs_data import image_folder

    from full_scale.data.latents import ShardError, read_safetensors_header

    prep(image_folder(tmp_path / "src"), tmp_path / "out", tiny_vae)
    path = tmp_path / "out" / "latents-00000.safetensors"
    data = bytearray(path.read_bytes())
    data[9] = 0xFF  # inside the JSON header: not UTF-8 any more
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="corrupt safetensors header"):
        read_safetensors_header(path)


def test_a_key_the_checkpoint_lacks_counts_as_its_default():
    """A checkpoint written before guidance.scaled existed resumes (the default keeps its behaviour); a run that sets
    the new key to another value is a change."""
    from full_scale.config import Config

    saved = Config().to_dict()
    del saved["guidance"]["scaled"]
    assert run_folder.config_changes(saved, Config()) == {}
    assert run_folder.config_changes(saved, Config().override({"guidance.scaled": False})) == {
        "guidance.scaled": (True, False)}
