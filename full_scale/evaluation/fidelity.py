"""torch-fidelity as the evaluation's reference: its code loaded beside a torch without a working torchvision,
precision/recall on Inception features, and its DINOv2 extractor for FD_DINOv2.

**Why a loader.** ``import torch_fidelity`` runs the package ``__init__``, which imports every feature extractor and
dataset, and those import torchvision. torchvision's PyPI wheel is built against the CUDA torch of the same release
and does not load beside a CPU torch (``operator torchvision::nms does not exist``), so on a CPU-only machine (CI) the
package cannot be imported, and ``pip install torch-fidelity`` would pull that torchvision (or a multi-GB CUDA torch).
The parts used here need only torch and numpy: the FID Inception (``feature_extractor_inceptionv3``) and the metric
functions ``metric_fid.fid_statistics_to_metric``, ``metric_isc.isc_features_to_metric`` and
``metric_prc.prc_features_to_metric``. The three metric modules also import, for their image-pipeline drivers (never
called here), names from ``torch_fidelity.utils``, which imports torchvision.

So :func:`reference` imports ``torch_fidelity`` normally when torchvision imports; otherwise it executes those
submodules from the installed package's own files under a ``torch_fidelity`` package entry whose ``__path__`` is the
installed directory and whose ``__init__`` is not run, with ``torch_fidelity.utils`` standing for a module whose every
name raises when called. The entries are taken out of ``sys.modules`` afterwards, so a later ``import torch_fidelity``
behaves as it would without this module. ``make setup`` installs torch-fidelity with ``pip install --no-deps``; with a
torch whose torchvision installs, the ``fidelity`` extra (``pip install -e .[fidelity]``) does it with dependencies.

**Precision and recall** (Kynkäänniemi et al. 2019, as in ADM's evaluator, k = 3): with NND_k(x) the distance from x
to its k-th nearest *other* point of its own set, real features R and generated features G,

    precision = (1/|G|) Σ_{g ∈ G} 1[∃ r ∈ R: ‖g − r‖ ≤ NND_k(r)],
    recall    = (1/|R|) Σ_{r ∈ R} 1[∃ g ∈ G: ‖r − g‖ ≤ NND_k(g)],

computed by torch-fidelity's ``prc_features_to_metric`` in float64. ADM's evaluator computes the same quantities with
squared distances rounded to float16 (float32 where float16 overflows), so points near a ball's edge can be decided
differently; its numbers and these have not been compared.

**FD_DINOv2** (Stein et al. 2023): the Fréchet distance of DINOv2 ViT-L/14 features (1024, the class token). It uses
torch-fidelity's ``FeatureExtractorDinoV2``, which imports torchvision and gets the network's code and weights through
``torch.hub`` (``facebookresearch/dinov2``, network access on first use), so it is available only where torchvision
imports. That extractor resizes to 224 with the TF1 bilinear resize; EDM2's ``fd_dinov2`` (after dgm-eval) resizes with
antialiased bicubic interpolation, so the two are not the same number and EDM2's reference statistics do not apply.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

MODULES = ("feature_extractor_inceptionv3", "metric_fid", "metric_isc", "metric_prc")
DINOV2_NAME = "dinov2-vit-l-14"  # torch-fidelity's name for torch.hub's dinov2_vitl14
DINOV2_DIM = 1024
INSTALL = ("install it with `pip install --no-deps torch-fidelity` (what `make setup` does), or with the `fidelity` "
           "extra (`pip install -e .[fidelity]`) where a torchvision built for this torch installs")


class FidelityUnavailable(ImportError):
    """torch-fidelity (or, for FD_DINOv2, torchvision) is not usable here; the message says how to install it."""


class DinoV2WeightsError(RuntimeError):
    """DINOv2's code and weights could not be obtained through torch.hub."""


def torchvision_imports() -> bool:
    """Whether ``import torchvision`` succeeds (it fails when absent, and when its wheel was built for another torch)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 (ImportError if absent; RuntimeError "operator torchvision::nms does not exist")
        return False
    return True


@functools.cache
def reference() -> types.SimpleNamespace:
    """torch-fidelity's modules named in :data:`MODULES` as attributes, plus ``via``: ``"package"`` (imported
    normally) or ``"files"`` (the package ``__init__`` skipped, see the module docstring). Raises
    :class:`FidelityUnavailable` when torch-fidelity is not installed."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise FidelityUnavailable(f"torch-fidelity is not installed; {INSTALL}")
    if torchvision_imports():
        modules = {name: importlib.import_module(f"torch_fidelity.{name}") for name in MODULES}
        return types.SimpleNamespace(via="package", **modules)
    return types.SimpleNamespace(via="files", **_load_without_init(Path(spec.submodule_search_locations[0])))


def _needs_torchvision(name: str):
    """``torch_fidelity.utils``'s stand-in: every public name is a function that raises when called."""
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise FidelityUnavailable(f"torch_fidelity.utils.{name} needs torchvision, which does not import here; only "
                                  f"torch-fidelity's metric functions on given features were loaded")

    return unavailable


def _load_without_init(directory: Path) -> dict[str, types.ModuleType]:
    """Execute the submodules in :data:`MODULES` from ``directory`` (the installed package) without its ``__init__``."""
    def ours(key: str) -> bool:
        return key == "torch_fidelity" or key.startswith("torch_fidelity.")

    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if ours(k)]}  # a normal import's, restored below
    package = types.ModuleType("torch_fidelity", "torch-fidelity's files without the package __init__")
    package.__path__ = [str(directory)]
    utils = types.ModuleType("torch_fidelity.utils", "stand-in: its image-pipeline functions need torchvision")
    utils.__getattr__ = _needs_torchvision  # PEP 562: `from torch_fidelity.utils import x` asks it for x
    sys.modules.update({"torch_fidelity": package, "torch_fidelity.utils": utils})
    try:
        return {name: importlib.import_module(f"torch_fidelity.{name}") for name in MODULES}
    finally:
        for key in [k for k in sys.modules if ours(k)]:
            del sys.modules[key]
        sys.modules.update(saved)


# --------------------------------------------------------------------------------------------- precision/recall

def precision_recall(generated, real, *, k: int = 3, batch_size: int = 10000, device=None) -> tuple[float, float]:
    """(precision, recall) of ``generated`` (N, D) against ``real`` (M, D) features with k-NN balls (module
    docstring), by torch-fidelity's ``prc_features_to_metric`` in float64 on ``device`` (default: the CPU), in blocks
    of ``batch_size`` rows (a block's distances to a whole set, batch_size × max(N, M) float64, lie in CPU memory)."""
    g, r = (torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device) for a in (generated, real))
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"generated, real: expected (N, D) and (M, D) features, got {tuple(g.shape)} and "
                         f"{tuple(r.shape)}")
    if k < 1 or min(len(g), len(r)) <= k:
        raise ValueError(f"k: precision/recall with k = {k} needs k >= 1 and more than k generated and real samples, "
                         f"got {len(g)} and {len(r)}")
    out = reference().metric_prc.prc_features_to_metric(g, r, prc_neighborhood=k, prc_batch_size=batch_size,
                                                        save_cpu_ram=True, verbose=False)
    return out["precision"], out["recall"]


# ------------------------------------------------------------------------------------------------------ DINOv2

def load_dinov2(device="cpu") -> torch.nn.Module:
    """torch-fidelity's DINOv2 ViT-L/14 extractor in eval mode: uint8 (B, 3, H, W) → (features (B, 1024),).
    Raises :class:`FidelityUnavailable` without torch-fidelity or a working torchvision, and
    :class:`DinoV2WeightsError` when torch.hub cannot provide the network (offline, nothing cached)."""
    reference()  # torch-fidelity installed?
    if not torchvision_imports():
        raise FidelityUnavailable("fd_dinov2: torch-fidelity's DINOv2 extractor imports torchvision, which does not "
                                  "import here; it needs a torchvision built for this torch (FID, IS and "
                                  "precision/recall do not)")
    extractor = importlib.import_module("torch_fidelity.feature_extractor_dinov2").FeatureExtractorDinoV2
    try:
        model = extractor(DINOV2_NAME, ["dinov2"])
    except Exception as e:  # urllib, ssl, hash or "no internet connection and the repo could not be found in the cache"
        first = (str(e).splitlines() or [""])[0]
        raise DinoV2WeightsError(
            f"fd_dinov2: torch.hub could not load DINOv2 ViT-L/14 (facebookresearch/dinov2: code and weights; "
            f"{type(e).__name__}: {first}); run once with network access to fill torch.hub's cache at "
            f"{torch.hub.get_dir()}") from e
    return model.to(device).eval()

