"""The distributed trainer: DDP gradients equal single-process gradients, exact resume (after SIGTERM and after a
crash), the NaN policy, configuration errors, and a few steps of the digits pipeline."""
import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from full_scale import checkpoint, pipeline, train
from full_scale.config import GuidanceConfig
from full_scale.distributed import Dist, agree, agree_later
from full_scale.metrics import read_metrics
from full_scale.model.dit import DiT, dit_config
from full_scale.run import StudentStep
from tvm_theory.loss import CFGConfig, StudentOutput, prepare_batch, tvm_loss
from tvm_theory.time_samplers import GapSampler

TINY = ["--set", "model.depth=1", "--set", "model.hidden_size=32", "--set", "model.num_heads=2",
        "--set", "train.global_batch=8", "--set", "log.every=1", "--set", "log.lipschitz_every=2",
        "--set", "log.lipschitz_probes=4", "--set", "log.lipschitz_iters=3", "--set", "checkpoint.every=2",
        "--set", "checkpoint.keep=5"]
N = 8


def ddp_model(in_graph: bool = False):
    """float64 with the reference attention; or, with ``in_graph``, float32 with the Triton attention (the interpreter
    here) called as the in-graph custom operators, as the trainer does by default."""
    torch.manual_seed(0)
    cfg = dit_config(input_size=4, in_channels=1, patch_size=2, hidden_size=32 if in_graph else 16, depth=1,
                     num_heads=2, num_classes=3, freq_dim=8, lipschitz=True)  # the Triton kernels need D ≥ 16
    model = DiT(cfg).to(torch.float32 if in_graph else torch.float64)
    with torch.no_grad():  # non-zero adaLN and output layers, so every parameter has a gradient
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    if in_graph:
        model.set_attention_backend("triton")
        model.keep_attention_in_graph(True)
    return model


def full_batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(N, 1, 4, 4, generator=g, dtype=torch.float64)
    times = GapSampler()(N, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    batch = prepare_batch(x0, times, y=y, cfg=CFGConfig(null_class=3, weight=2.0, label_dropout=0.25), generator=g)
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(dtype) for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)
                                         and getattr(batch, f.name).is_floating_point()})


def shard(batch, rank, world):
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).chunk(world)[rank]
                                         for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})


def grads_of(step_module, model, target, batch):
    f, dfds, u_fm = step_module(batch)
    tvm_loss(batch, StudentOutput(f=f, dfds=dfds, u_fm=u_fm), target, null_class=3).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def _ddp_worker(rank, world, rdv, out, in_graph):
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = ddp_model(in_graph)
    target = copy.deepcopy(model).requires_grad_(False)
    dtype = next(model.parameters()).dtype
    grads = grads_of(DDP(StudentStep(model)), model, target, shard(full_batch(dtype), rank, world))
    torch.save(grads, os.path.join(out, f"grads{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("in_graph", [False, True], ids=["float64-reference", "float32-in-graph-triton"])
def test_ddp_two_gloo_processes_equal_one_process_full_batch(tmp_path, monkeypatch, in_graph):
    """Two DDP ranks with half the batch each give the gradients of one process with the whole batch: in float64
    with the reference attention (only summation order differs), and in float32 with the Triton attention as the
    in-graph custom operators (the trainer's default), whose reverse mode DDP must see."""
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path), in_graph), nprocs=2, join=True,
                       start_method="spawn")
    from kernels import _ops
    calls, op = [], _ops.attention_jvp_fwd
    monkeypatch.setattr(_ops, "attention_jvp_fwd", lambda *args: calls.append(1) or op(*args))
    model = ddp_model(in_graph)
    dtype = next(model.parameters()).dtype
    target = copy.deepcopy(model).requires_grad_(False)
    full = grads_of(StudentStep(model), model, target, full_batch(dtype))
    assert bool(calls) is in_graph  # the reference ran through the custom operators exactly when asked to
    model_half = ddp_model(in_graph)
    half = grads_of(StudentStep(model_half), model_half, copy.deepcopy(model_half), shard(full_batch(dtype), 0, 2))
    assert max(float((a - b).abs().max()) for a, b in zip(half, full)) > 1e-3  # one shard alone is different
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
    for rank in range(2):
        got = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        for a, b in zip(got, full):
            torch.testing.assert_close(a, b, **tol)


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def sigterm_during_step(monkeypatch, step: int) -> None:
    """Send this process SIGTERM from inside the loss of the ``step``-th micro-batch (one micro-batch per step)."""
    real, calls = train.tvm_loss, {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "tvm_loss", loss)


def test_exact_resume_after_sigterm_and_after_a_crash(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(["--out", str(a), "--steps", "5"] + TINY)

    sigterm_during_step(monkeypatch, 3)
    train.main(["--out", str(b), "--steps", "5"] + TINY)
    monkeypatch.undo()
    events = [r for r in read_metrics(b) if r.get("event") == "sigterm"]
    assert [e["step"] for e in events] == [3]
    assert [p.name for p in checkpoint.list_checkpoints(b)] == ["step_00000002", "step_00000003"]

    # Resume from the SIGTERM checkpoint (step 3) …
    train.main(["--out", str(b), "--steps", "4"] + TINY)
    assert losses(b) == {k: v for k, v in losses(a).items() if k <= 4}
    # … and after a "crash": drop the latest checkpoints so the run restarts from step 2 with records of 3, 4 left.
    for path in checkpoint.list_checkpoints(b)[1:]:
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    train.main(["--out", str(b), "--steps", "5"] + TINY)
    steps = [r["step"] for r in read_metrics(b) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]  # records after the resumed checkpoint were replaced, not duplicated
    assert losses(b) == losses(a)  # bit-for-bit the uninterrupted run
    assert "lip_max" in read_metrics(a)[2] and read_metrics(a)[2]["lip_max"] > 0


def nan_in_second_batch(monkeypatch) -> list:
    """Make example 1 of the second batch NaN; returns the list of batches drawn."""
    real = train.prepare_batch
    seen = []

    def prepare(*args, **kwargs):
        batch = real(*args, **kwargs)
        seen.append(batch)
        if len(seen) == 2:
            x_t = batch.x_t.clone()
            x_t[1] = float("nan")
            batch = dataclasses.replace(batch, x_t=x_t)
        return batch

    monkeypatch.setattr(train, "prepare_batch", prepare)
    return seen


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_policy(tmp_path, monkeypatch, policy):
    seen = nan_in_second_batch(monkeypatch)
    argv = ["--out", str(tmp_path), "--steps", "3", "--set", f"train.nan_policy={policy}"] + TINY
    if policy == "stop":
        with pytest.raises(FloatingPointError, match="step 2"):
            train.main(argv)
    else:
        train.main(argv)
        opt = torch.load(checkpoint.latest(tmp_path) / "optimizer.pt", weights_only=True)
        assert all(int(s["step"]) == 2 for s in opt["state"].values())  # 3 steps, one skipped
    event = [r for r in read_metrics(tmp_path) if r.get("event") == "nonfinite"][0]
    assert event["step"] == 2 and event["policy"] == policy and event["n_nonfinite_examples"] == 1
    assert event["t"] == [pytest.approx(float(seen[1].t[1]))] and event["s"] == [pytest.approx(float(seen[1].s[1]))]


def test_the_update_launched_before_the_read_skips_a_nonfinite_step_exactly(tmp_path, monkeypatch):
    """train.update_in_stream (on by default on CUDA; forced here, with fused AdamW and the interpreted EMA kernel):
    AdamW and the EMAs are launched before the host reads the step's flags, and step 2 (a NaN example) must change
    nothing on the device. Weights, both EMAs, AdamW's state, losses and the non-finite event equal those of the run
    that reads the flags first, bit for bit, and AdamW counts 2 steps (1 and 3)."""
    from safetensors.torch import load_file
    from full_scale.run import Run
    runs, seen_update = {}, []
    monkeypatch.setattr(train, "apply_update", lambda run, grad_norm, skip=None, real=train.apply_update:
                        seen_update.append(skip is not None) or real(run, grad_norm, skip))
    for in_stream in (False, True):
        out = tmp_path / str(in_stream)
        nan_in_second_batch(monkeypatch)
        seen_update.clear()
        train.main(["--out", str(out), "--steps", "3", "--set", "train.fused_adamw=true", "--set",
                    "train.fused_ema=true", "--set", f"train.update_in_stream={str(in_stream).lower()}",
                    "--set", "train.eval_ema=0.9"] + TINY)
        assert seen_update == ([True] * 3 if in_stream else [False] * 2)  # the host-first run skips step 2 itself
        latest = checkpoint.latest(out)
        runs[in_stream] = {"weights": {w: load_file(latest / f"{w}.safetensors")
                                       for w in ("model", "target_ema", "eval_ema")},
                           "optimizer": torch.load(latest / "optimizer.pt", weights_only=True),
                           "losses": losses(out),
                           "events": [r for r in read_metrics(out) if r.get("event") == "nonfinite"]}
    a, b = runs[False], runs[True]
    assert a["losses"] == b["losses"] and a["events"] == b["events"] and len(b["events"]) == 1
    for which in ("model", "target_ema", "eval_ema"):
        assert a["weights"][which].keys() == b["weights"][which].keys()
        assert all(torch.equal(v, b["weights"][which][k]) for k, v in a["weights"][which].items()), which
    assert all(int(st["step"]) == 2 for st in b["optimizer"]["state"].values())  # 3 steps, one skipped
    for key, st in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][key][k]) for k, v in st.items())
    assert "update_in_stream" in Run.__dataclass_fields__
    with pytest.raises(ValueError, match="train.update_in_stream: needs train.fused_adamw"):
        train.main(["--out", str(tmp_path / "bad"), "--set", "train.update_in_stream=true"] + TINY)


def test_a_fused_adamw_that_ignores_found_inf_turns_the_in_stream_update_off(monkeypatch):
    """This torch's fused AdamW skips on ``found_inf``; one that did not (simulated: the attribute is dropped before
    the step) would apply a non-finite step, so auto falls back to reading the flags first and true refuses."""
    from full_scale import run as run_module
    from full_scale.config import load_config
    cpu = torch.device("cpu")
    assert run_module.adamw_skips_on_the_device(cpu)
    cfg = lambda value: load_config("tiny-digits", [f"train.update_in_stream={value}"])  # noqa: E731
    assert run_module.use_update_in_stream(cfg("auto"), True, True, cpu) is True
    assert run_module.use_update_in_stream(cfg("auto"), True, False, cpu) is False
    assert run_module.use_update_in_stream(cfg("false"), True, True, cpu) is False
    real_step = torch.optim.AdamW.step

    def step_without_found_inf(self, *args, **kwargs):
        self.__dict__.pop("found_inf", None)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_without_found_inf)
    assert not run_module.adamw_skips_on_the_device(cpu)
    assert run_module.use_update_in_stream(cfg("auto"), True, True, cpu) is False
    with pytest.raises(RuntimeError, match="ignores found_inf"):
        run_module.use_update_in_stream(cfg("true"), True, True, cpu)


def test_fused_adamw_trains_like_the_foreach_one(tmp_path):
    """train.fused_adamw=true (the CUDA default) on the CPU: the same losses as the foreach AdamW to float32
    rounding, and the checkpoint says which one ran."""
    runs = {}
    for fused in (False, True):
        out = tmp_path / str(fused)
        train.main(["--out", str(out), "--steps", "3", "--set", f"train.fused_adamw={str(fused).lower()}"] + TINY)
        opt = torch.load(checkpoint.latest(out) / "optimizer.pt", weights_only=True)
        assert bool(opt["param_groups"][0]["fused"]) is fused
        runs[fused] = losses(out)
    assert runs[False].keys() == runs[True].keys() == {1, 2, 3}
    assert runs[False][1] == runs[True][1]  # before any update
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    assert runs[True][3] != runs[True][2]  # the fused optimizer moved the weights


def test_fused_ema_trains_like_two_foreach_updates(tmp_path):
    """train.fused_ema=true (the CUDA default; the interpreter here): after 3 steps both EMAs' weights equal those of
    two ``ema_update`` calls per step to float32 rounding, and so do the losses, which read the target EMA."""
    from safetensors.torch import load_file
    runs, weights = {}, {}
    for fused in (False, True):
        out = tmp_path / str(fused)
        train.main(["--out", str(out), "--steps", "3", "--set", f"train.fused_ema={str(fused).lower()}",
                    "--set", "train.eval_ema=0.9"] + TINY)
        runs[fused] = losses(out)
        weights[fused] = {w: load_file(checkpoint.latest(out) / f"{w}.safetensors")
                          for w in ("model", "target_ema", "eval_ema")}
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    for which in ("target_ema", "eval_ema"):
        assert weights[True][which].keys() == weights[False][which].keys()
        for k, v in weights[True][which].items():
            torch.testing.assert_close(v, weights[False][which][k], rtol=1e-5, atol=1e-6)
    moved = [k for k, v in weights[True]["target_ema"].items() if not torch.equal(v, weights[True]["eval_ema"][k])]
    assert moved  # the two rates (0.99, 0.9) gave two different averages


def test_attention_in_graph_trains_like_the_function_calls(tmp_path, monkeypatch):
    """train.attention_in_graph=true (the default) with the Triton attention (the interpreter here): the student's
    JVP pass calls the custom operators, and the losses equal those of the autograd Functions' calls
    (train.attention_in_graph=false) to float32 rounding."""
    from kernels import _ops
    calls = []
    op = _ops.attention_jvp_fwd
    monkeypatch.setattr(_ops, "attention_jvp_fwd", lambda *args: calls.append(1) or op(*args))
    runs = {}
    for in_graph in (False, True):
        out = tmp_path / str(in_graph)
        train.main(["--out", str(out), "--steps", "2", "--set", "model.attention_backend=triton",
                    "--set", f"train.attention_in_graph={str(in_graph).lower()}"] + TINY)
        runs[in_graph] = losses(out)
        assert bool(calls) is in_graph
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    with pytest.raises(ValueError, match="train.attention_in_graph: expected true or false"):
        train.main(["--out", str(tmp_path / "b"), "--set", "train.attention_in_graph=sometimes"] + TINY)


def test_compile_mode_reaches_both_compiled_models(tmp_path, monkeypatch):
    """train.compile_mode is passed to the student's and the target's compile_blocks (compilation itself is for CUDA:
    here it is recorded, not run)."""
    import full_scale.run
    seen = []
    monkeypatch.setattr(full_scale.run, "use_compile", lambda cfg, device: True)
    monkeypatch.setattr(DiT, "compile_blocks", lambda self, **options: seen.append(options))
    train.main(["--out", str(tmp_path), "--steps", "1", "--set", "train.compile_mode=reduce-overhead"] + TINY)
    assert seen == [{"dynamic": False, "mode": "reduce-overhead"}] * 2
    with pytest.raises(ValueError, match="train.compile_mode: expected default, reduce-overhead"):
        train.main(["--out", str(tmp_path / "b"), "--set", "train.compile_mode=fast"] + TINY)


def test_agree_reads_tensor_and_bool_flags_in_one_step():
    d = Dist()
    assert agree(d, torch.tensor(True), False, ~torch.isfinite(torch.tensor(float("nan"))), True,
                 torch.tensor(False)) == [True, False, True, True, False]
    flags, read = agree_later(d, torch.tensor(False), True)
    assert flags.dtype == torch.float32 and flags.tolist() == [0.0, 1.0] and read() == [False, True]


def test_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        train.main(["--preset", "imagenet-256", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown key"):
        train.main(["--out", str(tmp_path), "--set", "train.lr_schedule=cosine"])
    with pytest.raises(ValueError, match="global_batch"):
        train.main(["--out", str(tmp_path), "--set", "train.global_batch=10", "--set", "train.micro_batch=4"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.compile: compiled blocks are for CUDA"):
            train.main(["--out", str(tmp_path), "--set", "train.compile=true"])
    with pytest.raises(ValueError, match="train.jvp: expected manual or functorch"):
        train.main(["--out", str(tmp_path), "--set", "train.jvp=forward"])
    with pytest.raises(ValueError, match="196700"):
        train.main(["--out", str(tmp_path), "--set", "train.jvp=functorch", "--set", "model.rms_norm=false"])


def test_digits_pipeline_few_steps(tmp_path):
    out = tmp_path / "run"
    # The preset's model and batch for two steps; the Lipschitz probe is exercised in the resume test.
    results = pipeline.main(["--out", str(out), "--steps", "2", "--set", "sample.per_class=3",
                             "--set", "sample.nfe=[1,2]", "--set", "log.lipschitz_every=0",
                             "--cache-dir", str(tmp_path / "cache")])
    assert set(results) == {"1-step", "2-step"}
    for r in results.values():
        assert r["n"] == 30 and 0 <= r["accuracy"] <= 1 and r["classifier_held_out_accuracy"] > 0.9
        assert r["frechet"] >= 0 and r["w2"] > 0 and r["train_step"] == 2
    assert json.loads((out / "eval.json").read_text()) == results
    assert (out / "samples" / "samples_1step.png").stat().st_size > 0
    assert (tmp_path / "cache" / "digits_classifier.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "full_scale.train",
           "--out", str(tmp_path), "--steps", "2"] + TINY
    subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)
    start = read_metrics(tmp_path)[0]
    assert start["world_size"] == 2 and start["micro_batch"] == 4
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000002"]
    assert len(list(checkpoint.latest(tmp_path).glob("rng_rank*.pt"))) == 2


def test_imagenet_preset_starts_on_a_latent_dataset(tmp_path):
    # The imagenet-256 recipe (shrunk model) on a tiny prepared latent set: 9 images of 3 classes through a random
    # 2×-downsampling VAE → 4×8×8 latents; micro-batch 2 of a global batch 4 exercises gradient accumulation.
    pytest.importorskip("diffusers")
    from test_fs_data import RES, image_folder, tiny_vae_folder

    from full_scale.data.latents import prepare

    vae = tiny_vae_folder(tmp_path / "vae")
    prepare(image_folder(tmp_path / "src"), tmp_path / "latents", resolution=RES, vae=str(vae), shard_size=4,
            batch_size=3, num_workers=0)
    out = tmp_path / "run"
    train.main(["--preset", "imagenet-256", "--out", str(out), "--steps", "2",
                "--set", f"data.root={tmp_path / 'latents'}", "--set", "data.num_workers=0",
                "--set", "model.input_size=8", "--set", "model.num_classes=3", "--set", "model.hidden_size=32",
                "--set", "model.depth=1", "--set", "model.num_heads=2", "--set", "train.global_batch=4",
                "--set", "train.micro_batch=2", "--set", "log.every=1", "--set", "log.lipschitz_every=0"])
    records = read_metrics(out)
    assert records[0]["accumulation"] == 2 and records[0]["micro_batch"] == 2
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert checkpoint.latest(out).name == "step_00000002"


def test_guidance_modes():
    spec = {"mode": "constant", "weight": 2.5, "weight_range": (1.0, 4.0), "label_dropout": 0.2}
    const = GuidanceConfig(**spec).cfg(null_class=10)
    assert (const.weight, const.weight_range, const.label_dropout, const.null_class) == (2.5, None, 0.2, 10)
    spec["mode"] = "random"
    assert GuidanceConfig(**spec).cfg(null_class=10).weight_range == (1.0, 4.0)
    spec["mode"] = "none"
    assert GuidanceConfig(**spec).cfg(null_class=10) is None
    spec["mode"] = "cfg"
    with pytest.raises(ValueError, match="guidance.mode"):
        GuidanceConfig(**spec).cfg(null_class=10)
