"""The full-scale configuration: one frozen dataclass per section, validated once when it is built.

The defaults are the paper's ImageNet 256×256 recipe (docs/ANCHORS.md): TVM-XL/2 with 18 heads of 64 and every
docs/THEORY.md §8 change, SD-VAE latents 4×32×32, batch 2048, 300K iterations, AdamW lr 1e-4 with β = (0.9, 0.95),
bf16, target EMA 0.99, evaluation EMA 0.9999, the gap* time sampler, label dropout 0.1, constant guidance w = 2 in
the scaled parameterization (the official configs/im256_w2.yaml; docs/IMAGENET.md compares every setting). A preset
(``full_scale/configs/{name}.yaml``) states only what differs from these defaults; command-line overrides
``section.key=value`` (the value parsed as YAML) come last::

    cfg = load_config("tiny-digits", ["train.lr=3e-4", "sample.nfe=[1,8]"])
    cfg = cfg.override({"train.steps": 10})          # typed values, e.g. from a study's code
    cfg.train.lr, cfg.model.dit()                    # attribute access; the DiT's architecture

Every value is checked when a :class:`Config` is made (type, range, choice, and the few cross-section rules); an
error names the key (``train.lr: expected a number, got 'abc'``). Unknown keys are errors, never ignored.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from tvm_theory.loss import CFGConfig
from tvm_theory.time_samplers import SAMPLERS

from .model import DiTConfig, dit_config

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    """The DiT (docs/THEORY.md §2, §8). Fields left ``None`` come from the named size."""

    name: str | None = "DiT-XL/2"     # DiT-{S,B,L,XL}/{patch}; None: every size field below must be set
    input_size: int = 32              # spatial side of x: latent side (image side / 8) or pixels
    in_channels: int = 4              # channels of x (4 for SD-VAE latents)
    patch_size: int | None = None     # tokens are patch_size × patch_size patches
    hidden_size: int | None = None    # width d
    depth: int | None = None          # number of blocks
    num_heads: int | None = None      # XL: 18 heads of 64 (the paper); the original DiT has 16
    mlp_ratio: float = 4.0            # MLP width / d
    num_classes: int = 1000           # labels 0 … K − 1; K is the null class
    freq_dim: int = 256               # sinusoidal embedding size of t, t − s and β = 1/w
    time_scale: float = 1.0           # the embeddings see time_scale · τ
    qk_norm: bool = True              # §8.1 RMSNorm with a weight on queries and keys
    rms_norm: bool = True             # §8.2 parameter-free RMSNorm instead of LayerNorm
    mod_norm: bool = True             # §8.3 RMS-normalized adaLN modulation
    spectral_init: bool = True        # §8.4 attention/MLP/patch linears start at Xavier / σ_max
    spectral_init_time: bool = True   # the same for the t, gap and β embedding MLPs (official time_specinit)
    spectral_norm: bool = False       # true spectral normalization during training (ablation only)
    attention_backend: str = "auto"   # kernels.attention: auto (Triton on CUDA) | triton | reference

    def __post_init__(self):
        _choice("model.attention_backend", self.attention_backend, ("auto", "triton", "reference"))
        self.dit()  # the architecture's own checks (divisibility, named size), with the key in the message

    def dit(self) -> DiTConfig:
        """The architecture as a :class:`~full_scale.model.DiTConfig` (the attention backend is not part of it)."""
        fields_ = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in ("name", "attention_backend") and getattr(self, f.name) is not None}
        try:
            return dit_config(self.name, **fields_)
        except (TypeError, ValueError) as err:
            named = str(err).split(":")[0] in {f.name for f in dataclasses.fields(self)}
            raise ValueError(f"model.{err}" if named else f"model: {err}") from None


@dataclass(frozen=True)
class DataConfig:
    """Where training examples come from: a kind of :data:`full_scale.data.DATASETS`."""

    kind: str = "latents"             # latents | digits | patches | synthetic | analytic
    root: str | None = None           # latents: a folder made by `python -m full_scale.data prepare`
    num_workers: int = 4              # DataLoader worker processes per rank
    # analytic kind (full_scale/data/analytic.py): K = model.num_classes classes, D = the model's input size
    analytic_seed: int = 0            # seed of the mixture's parameters (means, frames); the truth is rebuilt from it
    analytic_rank: int = 16           # r: rank of each class's factor F_k (D × r)
    analytic_top_std: float = 2.0     # largest factor standard deviation s_1
    analytic_min_std: float = 0.02    # smallest factor standard deviation s_r (geometric in between)
    analytic_noise_std: float = 0.05  # τ > 0: Σ_k = F_k F_kᵀ + τ² I
    analytic_mean_std: float = 0.5    # class means m_k ~ N(0, mean_std² I)

    def __post_init__(self):
        from .data import DATASETS
        _choice("data.kind", self.kind, tuple(DATASETS))
        _at_least("data.num_workers", self.num_workers, 0)
        _at_least("data.analytic_seed", self.analytic_seed, 0)
        _at_least("data.analytic_rank", self.analytic_rank, 1)
        for key in ("analytic_top_std", "analytic_min_std", "analytic_noise_std"):
            _positive(f"data.{key}", getattr(self, key))
        if self.analytic_min_std > self.analytic_top_std:
            raise ValueError(f"data.analytic_min_std: expected at most data.analytic_top_std = "
                             f"{self.analytic_top_std}, got {self.analytic_min_std}")
        _at_least("data.analytic_mean_std", self.analytic_mean_std, 0.0)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation (docs/THEORY.md §3) and how it runs."""

    steps: int = 300_000              # optimizer steps of the whole run
    global_batch: int = 2048          # examples per optimizer step, over all ranks
    micro_batch: int | None = 32      # per-rank forward batch (gradients accumulate); None: global / world size
    lr: float = 1.0e-4                # AdamW learning rate (constant)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (β1, β2); §8.5 lowers β2
    weight_decay: float = 0.0         # AdamW decoupled weight decay
    grad_clip: float | None = None    # clip the global gradient norm to this; None: no clipping
    target_ema: float = 0.99          # rate of the EMA that gives the targets
    eval_ema: float = 0.9999          # rate of the EMA that is sampled and evaluated
    time_sampler: str = "gap"         # a key of tvm_theory.time_samplers.SAMPLERS (gap = the paper's gap*)
    jvp: str = "manual"               # ∂_s F: manual (the DiT's hand-written tangent) | functorch (torch.func.jvp)
    compile: bool | str = "auto"      # torch.compile of each block: auto (on CUDA) | true | false
    compile_mode: str = "default"     # the blocks' torch.compile mode: default | reduce-overhead (CUDA graphs) | …
    attention_in_graph: bool = True   # Triton attention as custom ops in the compiled graphs (not under torch.func)
    activation_checkpointing: bool = False  # recompute each block in the backward: less memory, one more forward
    ddp_split_graphs: bool = False    # let Dynamo split compiled blocks at DDP bucket boundaries (slower here)
    fused_adamw: bool | str = "auto"  # AdamW as one fused kernel: auto (on CUDA) | true | false (foreach kernels)
    fused_ema: bool | str = "auto"    # both EMAs in one Triton pass (kernels/ema.py): auto (on CUDA) | true | false
    update_in_stream: bool | str = "auto"  # update launched before the flags are read: auto (both fused) | true | false
    precision: str = "auto"           # auto (bf16 autocast on GPUs, fp32 on the CPU) | bf16 | fp32
    nan_policy: str = "skip"          # a non-finite loss or gradient: skip the step | stop the run
    max_nan_skips: int = 20           # stop after this many skipped steps in a row
    seed: int = 0                     # weights, data order, noise and times
    init_from: str | None = None      # a new run starts from these weights: a checkpoint folder or .safetensors file

    def __post_init__(self):
        _at_least("train.steps", self.steps, 0)
        _at_least("train.global_batch", self.global_batch, 1)
        if self.micro_batch is not None:
            _at_least("train.micro_batch", self.micro_batch, 1)
        _positive("train.lr", self.lr)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas: expected two rates in [0, 1), got {list(self.betas)}")
        _at_least("train.weight_decay", self.weight_decay, 0.0)
        if self.grad_clip is not None:
            _positive("train.grad_clip", self.grad_clip)
        for key in ("target_ema", "eval_ema"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"train.{key}: expected a rate in [0, 1), got {getattr(self, key)}")
        _choice("train.time_sampler", self.time_sampler, tuple(sorted(SAMPLERS)))
        _choice("train.jvp", self.jvp, ("manual", "functorch"))
        _choice("train.compile", self.compile, ("auto", True, False))
        _choice("train.attention_in_graph", self.attention_in_graph, (True, False))
        _choice("train.fused_adamw", self.fused_adamw, ("auto", True, False))
        _choice("train.fused_ema", self.fused_ema, ("auto", True, False))
        _choice("train.update_in_stream", self.update_in_stream, ("auto", True, False))
        _choice("train.compile_mode", self.compile_mode,
                ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"))
        _choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        _choice("train.nan_policy", self.nan_policy, ("skip", "stop"))
        _at_least("train.max_nan_skips", self.max_nan_skips, 0)


@dataclass(frozen=True)
class GuidanceConfig:
    """Classifier-free guidance in the loss (docs/THEORY.md §2, §3 item 5)."""

    mode: str = "constant"            # none (unconditional) | constant (weight) | random (β = 1/w uniform)
    weight: float = 2.0               # w of mode constant, ≥ 1
    weight_range: tuple[float, float] = (1.0, 4.0)  # (w_min, w_max) of mode random
    label_dropout: float = 0.1        # probability that a label becomes the null class
    scaled: bool = True               # u_θ = w·F_θ(·, β = 1/w) (official do_scale_param: true); false: u_θ = F_θ(·, β)

    def __post_init__(self):
        _choice("guidance.mode", self.mode, ("none", "constant", "random"))
        _choice("guidance.scaled", self.scaled, (True, False))
        try:
            CFGConfig(null_class=0, weight=self.weight, weight_range=self.weight_range,
                      label_dropout=self.label_dropout)
        except ValueError as err:
            raise ValueError(f"guidance.{err}") from None

    def cfg(self, null_class: int) -> CFGConfig | None:
        """The loss's :class:`~tvm_theory.loss.CFGConfig`, or None for ``mode: none``."""
        if self.mode == "none":
            return None
        return CFGConfig(null_class=null_class, weight=self.weight, label_dropout=self.label_dropout,
                         weight_range=self.weight_range if self.mode == "random" else None, scaled=self.scaled)


@dataclass(frozen=True)
class LogConfig:
    """What ``metrics.jsonl`` records and how often."""

    every: int = 100                  # steps between records (loss terms, gradient norm, throughput)
    lipschitz_every: int = 5000       # steps between local Lipschitz probes of x ↦ u_θ(x, s); 0: never
    lipschitz_probes: int = 8         # probe points (path points at s on a grid in [0.05, 0.95])
    lipschitz_iters: int = 10         # power iterations per probe
    tensorboard: bool = False         # also write TensorBoard scalars (needs the tensorboard package)

    def __post_init__(self):
        _at_least("log.every", self.every, 1)
        _at_least("log.lipschitz_every", self.lipschitz_every, 0)
        _at_least("log.lipschitz_probes", self.lipschitz_probes, 1)
        _at_least("log.lipschitz_iters", self.lipschitz_iters, 1)


@dataclass(frozen=True)
class CheckpointConfig:
    """Training checkpoints in ``{out}/checkpoints/`` (full_scale.checkpoint)."""

    every: int = 5000                 # steps between checkpoints
    keep: int = 3                     # newest checkpoints kept (snapshots aside)
    snapshot_every: int = 0           # checkpoints at multiples of this step are kept for good (FID vs step); 0: none
    final: bool = True                # also save when the run reaches train.steps

    def __post_init__(self):
        _at_least("checkpoint.every", self.every, 1)
        _at_least("checkpoint.keep", self.keep, 1)
        _at_least("checkpoint.snapshot_every", self.snapshot_every, 0)
        if self.snapshot_every and self.snapshot_every % self.every:
            raise ValueError(f"checkpoint.snapshot_every: expected a multiple of checkpoint.every = {self.every} "
                             f"(snapshots are checkpoints), got {self.snapshot_every}")


@dataclass(frozen=True)
class SampleConfig:
    """Defaults of ``python -m full_scale.sample`` and of the digits pipeline."""

    nfe: tuple[int, ...] = (1, 2, 4)  # numbers of jumps N of the few-step sampler (network evaluations)
    weight: float = 2.0               # guidance weight w ≥ 1 of class-conditional samples
    per_class: int = 4                # samples per class
    seed: int = 1                     # the noise

    def __post_init__(self):
        if not self.nfe or min(self.nfe) < 1:
            raise ValueError(f"sample.nfe: expected a non-empty list of jump counts ≥ 1, got {list(self.nfe)}")
        if not self.weight >= 1.0:
            raise ValueError(f"sample.weight: expected a guidance weight ≥ 1, got {self.weight}")
        _at_least("sample.per_class", self.per_class, 1)


@dataclass(frozen=True)
class EvalConfig:
    """Turning samples into something to look at or score."""

    vae: str | None = None            # latents: the VAE (hub id or folder) that decodes sample grids; None: none
    batch_size: int = 256             # samples generated per forward
    every: int = 0                    # during training: steps between sample grids (and FID, if set); 0: never
    grid_classes: int = 10            # rows of the grid: the first classes (conditional runs)
    grid_per_class: int = 8           # samples per row
    fid_reference: str | None = None  # during training: FID against these statistics or images; None: no FID
    fid_samples: int = 1000           # samples of that FID (small: a trend, not the FID-50k of record)
    inception: str | None = None      # FID Inception weights file; None: the usual download

    def __post_init__(self):
        _at_least("eval.batch_size", self.batch_size, 1)
        _at_least("eval.every", self.every, 0)
        _at_least("eval.grid_classes", self.grid_classes, 1)
        _at_least("eval.grid_per_class", self.grid_per_class, 1)
        _at_least("eval.fid_samples", self.fid_samples, 2)


@dataclass(frozen=True)
class Config:
    """A whole run's configuration: one frozen section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.train.jvp == "functorch" and not self.model.rms_norm:
            raise ValueError("train.jvp: functorch with model.rms_norm=false would train on a wrong gradient "
                             "(PyTorch's LayerNorm JVP has a wrong reverse mode, pytorch/pytorch#196700); "
                             "use train.jvp=manual")

    @classmethod
    def from_dict(cls, sections: Mapping[str, Mapping[str, Any]]) -> "Config":
        """A validated config from ``{section: {key: value}}``; missing keys take their defaults."""
        if not isinstance(sections, Mapping):
            raise ValueError(f"config: expected a mapping of sections, got {type(sections).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for name in sections:
            if name not in known:
                raise ValueError(f"config: unknown section {name!r}; expected one of {list(known)}")
        built = {}
        for name, f in known.items():
            values = sections.get(name) or {}
            if not isinstance(values, Mapping):
                raise ValueError(f"{name}: expected a mapping of keys to values, got {values!r}")
            built[name] = _section(f.default_factory, name, values)
        return cls(**built)

    def to_dict(self) -> dict:
        """``{section: {key: value}}`` with plain YAML/JSON types (tuples as lists)."""
        return {f.name: {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(getattr(self, f.name)).items()}
                for f in dataclasses.fields(self)}

    def override(self, changes: Mapping[str, Any]) -> "Config":
        """A new, validated config with each ``"section.key": value`` of ``changes`` applied."""
        sections = self.to_dict()
        for key, value in changes.items():
            section, name = _split_key(key, sections)
            sections[section][name] = value
        return Config.from_dict(sections)


# ---- building ------------------------------------------------------------------------------------------------------

def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """The sections a preset sets: ``full_scale/configs/{name}.yaml`` or a YAML file path (empty: all defaults)."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"preset: no preset {name!r}; expected one of {presets()} or a path to a .yaml file")
    sections = yaml.safe_load(path.read_text()) or {}
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ValueError(f"preset {path}: expected a mapping of sections to mappings")
    return sections


def load_config(preset: str = "tiny-digits", overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the preset, then each ``section.key=value`` override (value parsed as YAML), validated once."""
    sections = Config.from_dict(load_preset(preset)).to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        section, name = _split_key(key.strip(), sections)
        try:
            sections[section][name] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({err})") from None
    return Config.from_dict(sections)


def _split_key(key: str, sections: Mapping[str, Mapping]) -> tuple[str, str]:
    section, dot, name = key.partition(".")
    if not dot or section not in sections or name not in sections[section]:
        known = ", ".join(f"{s}.{k}" for s in sections for k in sections[s])
        raise ValueError(f"{key!r}: unknown key; known keys: {known}")
    return section, name


def _section(cls, name: str, values: Mapping[str, Any]):
    """Make section ``cls`` from ``values``, each converted to its field's type (or an error naming the key)."""
    hints = typing.get_type_hints(cls)
    fields_ = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in fields_]
    if unknown:
        raise ValueError(f"{name}.{unknown[0]}: unknown key; known keys: "
                         + ", ".join(f"{name}.{k}" for k in fields_))
    return cls(**{k: _convert(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def _convert(key: str, value: Any, kind) -> Any:
    """``value`` as type ``kind`` (int, float, bool, str, X | None, tuple[X, ...], tuple[X, Y], X | Y)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union \
        else (kind,)
    for option in options:
        try:
            return _convert_one(key, value, option)
        except ValueError:
            continue
    names = " or ".join(_type_name(o) for o in options)
    raise ValueError(f"{key}: expected {names}, got {value!r}")


def _convert_one(key: str, value: Any, kind) -> Any:
    if kind is type(None):
        if value is None:
            return None
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(kind)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) == len(value):
            return tuple(_convert(key, v, t) for v, t in zip(value, items))
    raise ValueError(key)


def _type_name(kind) -> str:
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        inner = {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}[args[0]]
        return f"a list of {inner}" if args[-1] is Ellipsis else f"a list of {len(args)} {inner}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[kind]


def _choice(key: str, value, allowed: tuple) -> None:
    if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
        shown = [str(a).lower() if isinstance(a, bool) else str(a) for a in allowed]
        raise ValueError(f"{key}: expected {', '.join(shown[:-1])} or {shown[-1]}, got {value!r}")


def _at_least(key: str, value, low) -> None:
    if not value >= low:
        raise ValueError(f"{key}: expected a value ≥ {low}, got {value!r}")


def _positive(key: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{key}: expected a positive value, got {value!r}")
