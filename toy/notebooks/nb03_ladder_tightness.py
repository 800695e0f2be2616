# %% [markdown]
# # How tight is each link of the ladder, and what makes it tighter?
#
# docs/THEORY.md §6, §6.1. On the 2-D Gaussian test bed (p0 = N((1, −1), 0.5² I), exact u and ψ) we look at
#
# 1. **Lipschitz control** — the certified constant of an unconstrained MLP (product of spectral norms) makes
#    bound (a) vacuous; spectral normalization during training (`--model mlp-sn`) caps it, and the affine model
#    has an exact constant (and an exact W2, no sampling);
# 2. **the s-grid** — how the quadrature of ∫ λ(√A + √B) ds converges with the number of grid points;
# 3. **sample size** — the empirical W2, the paired RMSE and the finite-sample floor against n.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from toy.__main__ import main
from toy.train import load_checkpoint
from tvm_theory.analysis.bounds import bound_report, make_grid
from tvm_theory.param import NetworkJump
from tvm_theory.sampling import sample_few_step
from tvm_theory.analysis.testbeds import make_testbed
from tvm_theory.analysis.transport import w2

SMALL = os.environ.get("TOY_NOTEBOOK_SMALL") == "1"
ROOT = Path(os.environ.get("TOY_NOTEBOOK_OUT", "runs/notebooks")) / "nb03"
STEPS = 20 if SMALL else 1500
COMMON = ["--testbed", "gaussian-2d", "--seed", "0", "--steps", str(STEPS), "--verify-at", str(STEPS), "--quiet",
          "--no-figures"]
COMMON += (["--n-samples", "128", "--n-sens", "8", "--s-grid", "17", "--hidden", "32", "--depth", "2",
            "--sens-ode-steps", "12"] if SMALL else ["--n-samples", "1000", "--n-sens", "128"])
VARIANTS = {"MLP (unconstrained)": ["--model", "mlp"],
            "MLP, spectral norm, cap 2": ["--model", "mlp-sn", "--lipschitz-cap", "2"],
            "MLP, spectral norm, cap 4": ["--model", "mlp-sn", "--lipschitz-cap", "4"],
            "affine (exact L, exact W2)": ["--model", "affine"]}

# %% [markdown]
# ## 1. Lipschitz control

# %%
results = {}
for name, extra in VARIANTS.items():
    out = ROOT / "_".join(extra).replace("--", "").replace("-", "")
    main(["verify", "--out", str(out), *COMMON, *extra])
    results[name] = json.loads((out / "report.json").read_text())["checkpoints"][-1]

print(f"{'model':>28} {'W2_emp':>8} {'W2 exact':>9} {'D_t':>8} {'sens':>8} {'log10 L_cert':>12} "
      f"{'(a) local':>10} {'(a) cert':>12} {'(b) cert':>12}")
for name, e in results.items():
    exact = "-" if e.get("w2_exact") is None else f"{e['w2_exact']:.4f}"
    print(f"{name:>28} {e['w2_emp']:8.4f} {exact:>9} {e['paired_rmse']:8.4f} "
          f"{e['bound_sensitivity']:8.4f} {e['lipschitz']['log10_certified']:12.2f} "
          f"{10 ** e['log10_bound_a_local']:10.3g} {10 ** e['log10_bound_a_certified']:12.3g} "
          f"{10 ** e['log10_bound_b_certified']:12.3g}")

# %%
fig, ax = plt.subplots(figsize=(9, 4))
names = list(results)
x = np.arange(len(names))
for i, (key, label) in enumerate((("w2_emp", "true W2"), ("bound_sensitivity", "sensitivity"),
                                  ("log10_bound_a_local", "(a) local L"), ("log10_bound_a_certified",
                                                                          "(a) certified L"))):
    vals = [results[n][key] if not key.startswith("log10") else 10 ** results[n][key] for n in names]
    ax.bar(x + 0.2 * (i - 1.5), vals, width=0.2, label=label)
ax.set_yscale("log")
ax.set_xticks(x, names, fontsize=8)
ax.legend()
ax.set_title("Lipschitz control makes (a) with a certified L usable; it costs some accuracy")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The s-grid
# Bound (a) with the certified constant for the unconstrained MLP, on grids of m points: the trapezoid error
# estimate (|grid − every other point|) shrinks like m⁻²; 100–200 points change the bound by well under 1%.

# %%
bed = make_testbed("gaussian-2d")
state = load_checkpoint(ROOT / "model_mlp", bed.dim)
net = state.eval_model.double().eval()
jump = NetworkJump(net)
log10_L, _ = net.lipschitz_certificate(torch.zeros(1))
L_cert = float(10 ** log10_L[0])
x1 = torch.randn(256 if SMALL else 2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
grid_sizes = [5, 9, 17] if SMALL else [5, 9, 17, 33, 65, 129, 257]
rows = []
for m in grid_sizes:
    rep = bound_report(jump, bed, 1.0, L=L_cert, x_t=x1, s_grid=make_grid(1.0, m), n_boot=20)
    rows.append((m, rep.bounds_log10["core"].value, rep.bounds["core"].quad, rep.bounds_log10["bound_a"].value,
                 rep.bounds_log10["bound_a"].quad))
    print(f"m = {m:4d}: core = {10 ** rows[-1][1]:.5f} (quad err {rows[-1][2]:.1e}), "
          f"log10 (a) = {rows[-1][3]:.4f} (quad err {rows[-1][4]:.1e} in log10 units)")

# %% [markdown]
# ## 3. Sample size
# W2_emp between one-step samples and ψ samples of the same noise never exceeds the paired RMSE (the identity
# pairing is a coupling); both converge with n, while the floor — W2 between two independent samples of p0 — decays
# slowly (like n^(−1/2) in 2-D, up to logs). A W2 below the floor is smaller than the W2 between two samples of the
# data at the same n; no two-sample test is run here.

# %%
ns = [64, 128, 256] if SMALL else [100, 250, 500, 1000, 2000]
g = torch.Generator().manual_seed(1)
table = []
for n in ns:
    xn = torch.randn(n, 2, generator=g, dtype=torch.float64)
    z = bed.flow(xn, 1.0, 0.0)
    with torch.no_grad():
        y = sample_few_step(jump, xn, 1)
    table.append((n, w2(y, z), float((y - z).pow(2).sum(1).mean().sqrt()), w2(z, bed.sample(n, g))))
    print(f"n = {n:5d}: W2_emp = {table[-1][1]:.4f}, paired RMSE = {table[-1][2]:.4f}, floor = {table[-1][3]:.4f}")
fig, ax = plt.subplots(figsize=(6, 4))
arr = np.array(table)
ax.loglog(arr[:, 0], arr[:, 1], "k-o", label="W2_emp (model vs ψ, same noise)")
ax.loglog(arr[:, 0], arr[:, 2], "0.5", marker=".", label="paired RMSE D_t")
ax.loglog(arr[:, 0], arr[:, 3], "C0:", marker="s", label="floor: W2(ψ samples, fresh p0 samples)")
ax.set_xlabel("n")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
