"""Toy training (docs/THEORY.md §3): a short run lowers the loss and W2; a resumed run equals an uninterrupted one;
the verify command's report has the documented schema and is reproduced exactly after an interruption."""
import json

import pytest
import torch

from toy.__main__ import main
from toy.train import TrainConfig, load_checkpoint, train
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step
from tvm_theory.analysis.testbeds import make_testbed
from tvm_theory.analysis.transport import w2

BED = make_testbed("gaussian-2d")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny training steps run ~10× faster on one thread than on two oversubscribed ones (measured on 2 cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
X1 = torch.randn(400, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
Z0 = BED.flow(X1, 1.0, 0.0)


def _one_step_w2(step, eval_model, student):
    with torch.no_grad():
        y = sample_few_step(NetworkJump(eval_model.double()), X1, 1)
    eval_model.float()
    return {"w2": w2(y, Z0)}


def _cfg(**kw):
    base = dict(testbed="gaussian-2d", steps=40, seed=0, hidden=32, depth=2, batch=128, lr=3e-3, warmup=5,
                eval_ema=0.9, log_every=5)
    return TrainConfig(**{**base, **kw})


def test_short_run_lowers_the_loss_and_w2(tmp_path):
    # documented budget: gaussian-2d, seed 0, 150 steps of batch 128 on a 32-wide MLP
    cfg = _cfg(steps=150)
    state = train(cfg, tmp_path, hook_steps=[0, 150], hook=_one_step_w2, progress=False)
    log = [json.loads(l) for l in (tmp_path / "train.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in log[:4]) / 4, sum(r["loss"] for r in log[-4:]) / 4
    assert last < 0.8 * first
    w_init, w_end = state.entries[0]["w2"], state.entries[-1]["w2"]
    assert w_end < 0.6 * w_init  # measured: 1.60 → 0.83


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = _cfg()
    full = train(cfg, tmp_path / "full", hook_steps=[0, 15, 40], hook=_one_step_w2, progress=False)
    part = train(cfg, tmp_path / "part", hook_steps=[0, 15, 40], hook=_one_step_w2, progress=False, stop_after=20)
    assert part.step == 20
    resumed = train(cfg, tmp_path / "part", hook_steps=[0, 15, 40], hook=_one_step_w2, progress=False)
    assert resumed.entries == full.entries
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "full" / "train.jsonl").read_text().count("\n") == \
        (tmp_path / "part" / "train.jsonl").read_text().count("\n")
    reloaded = load_checkpoint(tmp_path / "part", 2)
    assert reloaded.step == 40 and torch.equal(reloaded.gen.get_state(), full.gen.get_state())


REQUIRED = ["step", "w2_emp", "w2_floor", "paired_rmse", "bound_a_local", "bound_a_certified", "bound_b_certified",
            "bound_c_certified", "paper_bound", "bound_sensitivity", "verdicts", "w2_2step", "w2_4step"]


def _verify(out, *extra):
    args = ["verify", "--testbed", "gaussian-1d", "--steps", "12", "--seed", "1", "--out", str(out), "--hidden", "16",
            "--depth", "2", "--batch", "64", "--verify-at", "0,6,12", "--n-samples", "64", "--n-sens", "6",
            "--s-grid", "9", "--sens-ode-steps", "8", "--no-figures", "--quiet", *extra]
    assert main(args) == 0
    return json.loads((out / "report.json").read_text())


def test_verify_report_schema_and_exact_resume(tmp_path):
    full = _verify(tmp_path / "full")
    assert full["schema"] == "toy.verify/1" and full["complete"]
    assert [e["step"] for e in full["checkpoints"]] == [0, 6, 12]
    for e in full["checkpoints"]:
        for key in REQUIRED:
            assert key in e, key
        for key in ("bound_a_local", "bound_a_certified", "bound_b_certified", "bound_c_certified", "paper_bound"):
            assert "log10_" + key in e and key + "_err" in e
        for key in ("w2_emp", "paired_rmse", "bound_sensitivity"):
            assert e[key + "_err"] >= 0
        assert set(e["verdicts"].values()) <= {"holds", "violated", "inconclusive", "inconclusive (local L)"}
        assert e["w2_emp"] <= e["paired_rmse"] * (1 + 1e-9)  # the ladder's exact link
        assert e["verdicts"]["D_t<=(a)_certified"] != "violated"
        assert e["verdicts"]["D_t<=sensitivity"] != "violated"
    interrupted = _verify(tmp_path / "part", "--stop-after", "6")
    assert not interrupted["complete"] and [e["step"] for e in interrupted["checkpoints"]] == [0, 6]
    resumed = _verify(tmp_path / "part")
    assert resumed == full
