"""The semi-Lipschitz Diffusion Transformer F_θ(x, t, s, y, β) (docs/THEORY.md §2 and §8).

A DiT (Peebles & Xie) whose conditioning vector is the sum of four embeddings:

    c = MLP_t(e(t)) + MLP_gap(e(t − s)) + MLP_β(e(β)) + E[y],   e(τ) = sinusoidal(time_scale · τ),

with β = 1/w the inverse guidance weight (β = 1 when the caller passes none) and y = ``num_classes`` the null class.
∂_s F flows only through the gap embedding (§2). Each change of §8 is its own switch; all off is the vanilla DiT:

* ``qk_norm``            — RMSNorm with a learnable weight on queries and keys, per head (§8.1);
* ``rms_norm``           — every LayerNorm becomes a parameter-free RMSNorm (§8.2);
* ``mod_norm``           — each adaLN modulation output (shift, scale, gate, ×2 per block; shift, scale in the final
                           layer) is RMS-normalized over the hidden dimension (§8.3), keeping x·(1 + scale) + shift;
* ``spectral_init``      — the attention and MLP linears and the patch embedding start at Xavier-normal / σ_max (§8.4);
* ``spectral_init_time`` — the same for the t, gap and β embedding MLPs (which otherwise start at N(0, 0.02²));
* ``spectral_norm``      — true spectral normalization (W / σ_max by one power iteration per training forward,
                           ``torch.nn.utils.parametrizations.spectral_norm``) of the layers ``spectral_init`` covers,
                           during training. The zero-initialized adaLN and output layers are never normalized
                           (W / σ_max is undefined at W = 0).

Attention goes through ``kernels.attention`` (Triton on CUDA, the PyTorch reference elsewhere), which supports
``torch.func.jvp`` with a backward pass through the tangent (§9).

``DiT.forward_and_ds`` returns (F, ∂_s F) with the tangent carried by hand (``full_scale.model.dual``), the fast path of
the trainer; ``DiT.compile_blocks`` compiles each block's forward and JVP (regional compilation: one graph shared by
all blocks, the Triton attention between graphs, or inside them with ``DiT.keep_attention_in_graph``, as the trainer
runs it).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as Fn
import torch.utils.checkpoint
from torch import Tensor, nn

from kernels import attention, attention_jvp, transforms_active

from . import dual

RMS_EPS = 1e-6

# Sizes of the DiT family (hidden, depth, heads). XL uses the paper's 18 heads of 64 (§8.5); 16 heads is an option.
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 18)}


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a DiT. ``input_size`` is the spatial side of x (pixels or latents), ``in_channels`` its C."""

    input_size: int = 32
    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 18
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    freq_dim: int = 256
    time_scale: float = 1.0
    qk_norm: bool = False
    rms_norm: bool = False
    mod_norm: bool = False
    spectral_init: bool = False
    spectral_init_time: bool = False
    spectral_norm: bool = False

    def __post_init__(self):
        if self.input_size % self.patch_size:
            raise ValueError(f"patch_size: {self.patch_size} does not divide input_size {self.input_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}")
        if (self.hidden_size // self.num_heads) % 2 or self.hidden_size % 4 or self.freq_dim % 2:
            raise ValueError("hidden_size, head dim and freq_dim must be even (hidden_size a multiple of 4)")
        if min(self.depth, self.num_classes, self.in_channels) < 1:
            raise ValueError(f"depth, num_classes, in_channels: expected ≥ 1, got {self.depth}, "
                             f"{self.num_classes}, {self.in_channels}")

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def dit_config(name: str | None = None, **fields) -> DiTConfig:
    """A named size ``DiT-{S,B,L,XL}/{p}`` (e.g. ``DiT-XL/2``) with any field overridden; ``name=None`` uses only
    ``fields``. ``lipschitz=True`` is shorthand for all five §8 switches (not ``spectral_norm``)."""
    if fields.pop("lipschitz", False):
        for key in ("qk_norm", "rms_norm", "mod_norm", "spectral_init", "spectral_init_time"):
            fields.setdefault(key, True)
    if name is not None:
        try:
            size, patch = name.removeprefix("DiT-").split("/")
            hidden, depth, heads = SIZES[size]
            patch = int(patch)
        except (ValueError, KeyError):
            raise ValueError(f"model name: expected DiT-{{S,B,L,XL}}/{{patch}}, got {name!r}") from None
        fields = {"hidden_size": hidden, "depth": depth, "num_heads": heads, "patch_size": patch, **fields}
    unknown = set(fields) - set(DiTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"model config: unknown fields {sorted(unknown)}")
    return DiTConfig(**fields)


def rms(x: Tensor) -> Tensor:
    """Parameter-free RMS normalization over the last dimension: x / sqrt(mean(x²) + ε), ε = 1e-6."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS)


def _phase_rates(t: Tensor, dim: int, scale: float, max_period: float) -> Tensor:
    """scale · ω_k, ω_k = max_period^(−k/(dim/2)), k < dim/2, in at least float32; shape (1, dim/2)."""
    half, dtype = dim // 2, torch.promote_types(t.dtype, torch.float32)
    return scale * torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)[None]


def sinusoidal(t: Tensor, dim: int, scale: float, max_period: float = 10000.0) -> Tensor:
    """[cos(ω_k · scale · t), sin(ω_k · scale · t)], ω_k = max_period^(−k/(dim/2)); (B,) → (B, dim)."""
    rates = _phase_rates(t, dim, scale, max_period)
    arg = t.to(rates.dtype)[:, None] * rates
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def sinusoidal_jvp(t: Tensor, td: Tensor, dim: int, scale: float, max_period: float = 10000.0
                   ) -> tuple[Tensor, Tensor]:
    """(e, ė) for e = sinusoidal(t): ė = [−sin a, cos a] · ṫ · scale · ω_k, a = scale · t · ω_k."""
    rates = _phase_rates(t, dim, scale, max_period)
    arg, arg_d = t.to(rates.dtype)[:, None] * rates, td.to(rates.dtype)[:, None] * rates
    cos, sin = torch.cos(arg), torch.sin(arg)
    return torch.cat([cos, sin], dim=1), torch.cat([-sin * arg_d, cos * arg_d], dim=1)


def spectral_init_(weight: Tensor) -> None:
    """Xavier-normal, then divide by the top singular value of the weight seen as (out, fan_in) (§8.4)."""
    with torch.no_grad():
        w = weight.view(weight.shape[0], -1)
        nn.init.xavier_normal_(w)
        w.div_(torch.linalg.matrix_norm(w, ord=2))


class TimeEmbedder(nn.Module):
    """τ ↦ Linear(SiLU(Linear(e(τ)))): (B,) → (B, hidden)."""

    def __init__(self, hidden: int, freq_dim: int, scale: float):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, tau: Tensor) -> Tensor:
        return self.mlp(sinusoidal(tau, self.freq_dim, self.scale).to(self.mlp[0].weight.dtype))

    def jvp(self, tau: Tensor, tau_d: Tensor) -> tuple[Tensor, Tensor]:
        e, ed = sinusoidal_jvp(tau, tau_d, self.freq_dim, self.scale)
        dtype = self.mlp[0].weight.dtype
        a, ad = dual.linear(self.mlp[0], e.to(dtype), ed.to(dtype))
        return dual.linear(self.mlp[2], self.mlp[1](a), dual.silu_tangent(a, ad))


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm (learnable RMSNorm over each head's D, §8.1)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.backend = "auto"  # kernels.attention backend; see DiT.attention_backend
        self.in_graph = False  # jvp's Triton calls as custom ops that torch.compile keeps; DiT.keep_attention_in_graph
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=RMS_EPS) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=RMS_EPS) if qk_norm else nn.Identity()

    def _split_heads(self, qkv: Tensor) -> Tensor:
        """(B, T, 3·hidden) → (3, B, H, T, d): q, k, v."""
        B, T, _ = qkv.shape
        return qkv.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (B, H, T, d) of tokens x, QK-normalized."""
        q, k, v = self._split_heads(self.qkv(x))
        return self.q_norm(q), self.k_norm(k), v

    @staticmethod
    def _merge_heads(o: Tensor) -> Tensor:
        """(B, H, T, d) → (B, T, H·d)."""
        B, H, T, d = o.shape
        return o.transpose(1, 2).reshape(B, T, H * d)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(x)
        # the custom operators are reverse mode only: under torch.func.jvp (train.jvp: functorch) the Function runs
        in_graph = self.in_graph and not transforms_active(q, k, v)
        return self.proj(self._merge_heads(attention(q, k, v, backend=self.backend, in_graph=in_graph)))

    def jvp(self, x: Tensor, xd: Tensor, x2: Tensor | None = None) -> tuple[Tensor, ...]:
        """(attn(x), its tangent), and attn(x2) after them when rows x2 without a tangent are given. Both attention
        calls come before both projections, so that a compiled block has one graph before the attention and one
        after it for both row sets (one gradient per weight, summed inside the graph); one graph in all when the
        calls are kept in it (``in_graph``, :meth:`DiT.keep_attention_in_graph`)."""
        qkv, qkv_d = dual.linear(self.qkv, x, xd)
        (q, k, v), (qd, kd, vd) = self._split_heads(qkv), self._split_heads(qkv_d)
        q, qd = dual.rms_norm_module(self.q_norm, q, qd)
        k, kd = dual.rms_norm_module(self.k_norm, k, kd)
        q, k, v, qd, kd, vd = (a.contiguous() for a in (q, k, v, qd, kd, vd))
        heads2 = None if x2 is None else self._heads(x2)
        o, od = attention_jvp(q, k, v, qd, kd, vd, backend=self.backend, in_graph=self.in_graph)
        o2 = None if heads2 is None else attention(*heads2, backend=self.backend, in_graph=self.in_graph)
        out = dual.linear(self.proj, self._merge_heads(o), self._merge_heads(od))
        return out if o2 is None else (*out, self.proj(self._merge_heads(o2)))


class Modulation(nn.Module):
    """adaLN: c ↦ n chunks of Linear(SiLU(c)), each (B, hidden), RMS-normalized when ``mod_norm`` is on (§8.3)."""

    def __init__(self, hidden: int, n: int, mod_norm: bool):
        super().__init__()
        self.n, self.mod_norm = n, mod_norm
        self.linear = nn.Linear(hidden, n * hidden)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        out = self.linear(Fn.silu(c)).view(c.shape[0], self.n, -1)  # (B, n, hidden)
        if self.mod_norm:
            out = rms(out)
        return out.unbind(1)

    def jvp(self, c: Tensor, cd: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        out, out_d = dual.linear(self.linear, Fn.silu(c), dual.silu_tangent(c, cd))
        out, out_d = out.view(c.shape[0], self.n, -1), out_d.view(c.shape[0], self.n, -1)
        if self.mod_norm:
            out, out_d = rms(out), dual.rms_tangent(out, out_d, RMS_EPS)
        return out.unbind(1), out_d.unbind(1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x · (1 + scale) + shift with (B, hidden) modulation broadcast over the T tokens of x (B, T, hidden)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class ModulatedNorm(nn.Module):
    """x ↦ modulate(N(x), shift, scale), N the parameter-free RMSNorm (§8.2) or LayerNorm without affine."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.rms_norm, self.dim = cfg.rms_norm, cfg.hidden_size

    def norm(self, x: Tensor) -> Tensor:
        return rms(x) if self.rms_norm else Fn.layer_norm(x, (self.dim,), eps=RMS_EPS)

    def forward(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return modulate(self.norm(x), shift, scale)

    def jvp(self, x, xd, shift, shift_d, scale, scale_d) -> tuple[Tensor, Tensor]:
        n = self.norm(x)
        nd = (dual.rms_tangent if self.rms_norm else dual.layer_norm_tangent)(x, xd, RMS_EPS)
        return modulate(n, shift, scale), dual.modulate_tangent(n, nd, scale, shift_d, scale_d)


class Block(nn.Module):
    """DiT block with adaLN-Zero: x += g₁ · Attn(mod(N(x))); x += g₂ · MLP(mod(N(x)))."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.modulated_norm = ModulatedNorm(cfg)
        self.attn = Attention(dim, cfg.num_heads, cfg.qk_norm)
        hidden = int(dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = Modulation(dim, 6, cfg.mod_norm)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        mods = self.modulation(c)  # shift1, scale1, gate1, shift2, scale2, gate2
        return self._after_attention(x, self.attn(self.modulated_norm(x, mods[0], mods[1])), mods)

    def _after_attention(self, x: Tensor, a: Tensor, mods: tuple[Tensor, ...]) -> Tensor:
        _, _, gate1, shift2, scale2, gate2 = mods
        x = x + gate1[:, None] * a
        return x + gate2[:, None] * self.mlp(self.modulated_norm(x, shift2, scale2))

    def jvp(self, x: Tensor, xd: Tensor, c: Tensor, cd: Tensor, x2: Tensor | None = None,
            c2: Tensor | None = None) -> tuple[Tensor, ...]:
        """(block(x, c), its tangent) for tangents ẋ (B, T, hidden) and ċ (B, hidden); with rows x2, c2 that carry no
        tangent, block(x2, c2) too, computed stage by stage beside them (``Attention.jvp``)."""
        (shift1, scale1, gate1, shift2, scale2, gate2), mod_d = self.modulation.jvp(c, cd)
        shift1_d, scale1_d, gate1_d, shift2_d, scale2_d, gate2_d = mod_d
        z, zd = self.modulated_norm.jvp(x, xd, shift1, shift1_d, scale1, scale1_d)
        if x2 is None:
            a, ad = self.attn.jvp(z, zd)
        else:
            mods2 = self.modulation(c2)
            a, ad, a2 = self.attn.jvp(z, zd, self.modulated_norm(x2, mods2[0], mods2[1]))
            x2 = self._after_attention(x2, a2, mods2)
        x, xd = dual.gated_residual(x, xd, gate1, gate1_d, a, ad)
        z, zd = self.modulated_norm.jvp(x, xd, shift2, shift2_d, scale2, scale2_d)
        u, ud = dual.linear(self.mlp[0], z, zd)
        m, md = dual.linear(self.mlp[2], self.mlp[1](u), dual.gelu_tanh_tangent(u, ud))
        out = dual.gated_residual(x, xd, gate2, gate2_d, m, md)
        return out if x2 is None else (*out, x2)


class FinalLayer(nn.Module):
    """Tokens (B, T, hidden) → patches (B, T, p·p·C) through a modulated norm and a zero-initialized linear."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.modulated_norm = ModulatedNorm(cfg)
        self.modulation = Modulation(dim, 2, cfg.mod_norm)
        self.linear = nn.Linear(dim, cfg.patch_size ** 2 * cfg.in_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c)
        return self.linear(self.modulated_norm(x, shift, scale))

    def jvp(self, x: Tensor, xd: Tensor, c: Tensor, cd: Tensor) -> tuple[Tensor, Tensor]:
        (shift, scale), (shift_d, scale_d) = self.modulation.jvp(c, cd)
        return dual.linear(self.linear, *self.modulated_norm.jvp(x, xd, shift, shift_d, scale, scale_d))


def sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid², dim): half the channels for rows, half for columns."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def embed(pos: Tensor) -> Tensor:
        arg = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    return torch.cat([embed(rows), embed(cols)], dim=1).float()


class DiT(nn.Module):
    """F_θ(x, t, s, y=None, beta=None): x (B, C, H, W), t, s, beta (B,), y (B,) int64 → (B, C, H, W)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim, p = cfg.hidden_size, cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_channels, dim, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_pos_embed(dim, cfg.input_size // p)[None], persistent=False)
        self.t_embed = TimeEmbedder(dim, cfg.freq_dim, cfg.time_scale)
        self.gap_embed = TimeEmbedder(dim, cfg.freq_dim, cfg.time_scale)
        self.beta_embed = TimeEmbedder(dim, cfg.freq_dim, cfg.time_scale)
        self.y_embed = nn.Embedding(cfg.num_classes + 1, dim)  # index num_classes is the null class
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self._run_block, self._run_block_jvp = _run_block, _run_block_jvp  # compile_blocks replaces them
        self.checkpoint_blocks = False  # activation checkpointing of every block when gradients are on
        self._init_weights()
        if cfg.spectral_norm:
            for module in self.spectral_layers():
                nn.utils.parametrizations.spectral_norm(module)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def set_attention_backend(self, backend: str) -> str:
        """Make every attention layer call ``kernels.attention(..., backend=backend)``; returns the previous one."""
        if backend not in ("auto", "triton", "reference"):
            raise ValueError(f"attention backend: expected auto, triton or reference, got {backend!r}")
        previous = self.blocks[0].attn.backend
        for block in self.blocks:
            block.attn.backend = backend
        return previous

    def keep_attention_in_graph(self, on: bool = True) -> None:
        """Let the Triton attention calls of :meth:`Block.jvp` and of the plain forward run as ``torch.library``
        custom operators (``kernels.attention(..., in_graph=True)``), which ``torch.compile`` keeps inside each block's
        graph: one graph per compiled block instead of one before and one after the attention. They are reverse mode
        only, so the plain forward keeps the default call (an autograd Function with a JVP rule) under ``torch.func``
        transforms and forward-mode AD (``kernels.transforms_active``)."""
        for block in self.blocks:
            block.attn.in_graph = bool(on)

    @contextlib.contextmanager
    def attention_backend(self, backend: str):
        """``with model.attention_backend("reference"):`` — a temporary :meth:`set_attention_backend`.

        The Lipschitz probe and ``full_scale.verify`` use ``"reference"``: exact attention in any dtype (float64
        included), whose cost is small beside training's. (The Triton kernel also works under ``torch.func.vjp``,
        ``vmap`` and ``jacrev``, first derivatives only: tests/test_attention_transforms.py.)
        """
        previous = self.set_attention_backend(backend)
        try:
            yield self
        finally:
            self.set_attention_backend(previous)

    def spectral_layers(self) -> list[nn.Module]:
        """The layers of §8.4: attention and MLP linears and the patch embedding."""
        layers = [self.patch_embed]
        for block in self.blocks:
            layers += [block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]]
        return layers

    def time_mlp_layers(self) -> list[nn.Linear]:
        return [m.mlp[i] for m in (self.t_embed, self.gap_embed, self.beta_embed) for i in (0, 2)]

    def _init_weights(self) -> None:
        """Vanilla DiT initialization (Xavier-uniform, zero biases, N(0, 0.02²) embeddings, zero adaLN and output),
        with the spectral switches replacing the Xavier-uniform or N(0, 0.02²) weights (§8.4)."""
        cfg = self.cfg
        for module in self.spectral_layers():
            if cfg.spectral_init:
                spectral_init_(module.weight)
            else:
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            nn.init.zeros_(module.bias)
        for linear in self.time_mlp_layers():
            if cfg.spectral_init_time:
                spectral_init_(linear.weight)
            else:
                nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for mod in [b.modulation for b in self.blocks] + [self.final.modulation]:
            nn.init.zeros_(mod.linear.weight)
            nn.init.zeros_(mod.linear.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def condition(self, t: Tensor, s: Tensor, y: Tensor | None, beta: Tensor | None) -> Tensor:
        """c = MLP_t(e(t)) + MLP_gap(e(t − s)) + MLP_β(e(β)) + E[y], (B, hidden); y=None → null, beta=None → 1."""
        return self._condition_without_gap(t, y, beta) + self.gap_embed(t - s)

    def _condition_without_gap(self, t: Tensor, y: Tensor | None, beta: Tensor | None) -> Tensor:
        if y is None:
            y = torch.full(t.shape, self.null_class, dtype=torch.long, device=t.device)
        if beta is None:
            beta = torch.ones_like(t)
        return self.t_embed(t) + self.beta_embed(beta) + self.y_embed(y)

    def condition_and_ds(self, t: Tensor, s: Tensor, y: Tensor | None, beta: Tensor | None
                         ) -> tuple[Tensor, Tensor]:
        """(c, ∂c/∂s): only the gap embedding depends on s, through τ = t − s (dτ/ds = −1)."""
        gap, gap_d = self.gap_embed.jvp(t - s, torch.full_like(s, -1.0))
        return self._condition_without_gap(t, y, beta) + gap, gap_d

    def _embed(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        if x.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(f"x: expected (B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}), "
                             f"got {tuple(x.shape)}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, hidden), T = g², laid out as (B, hidden, T)
        # Stored row by row: the residual stream keeps the layout of its first value through every block, and a
        # transposed one made each layer norm copy its input and each row reduction read with a stride of T.
        return (tokens + self.pos_embed).contiguous()

    def _unpatchify(self, h: Tensor) -> Tensor:
        """(B, T, p·p·C) → (B, C, H, W)."""
        cfg = self.cfg
        B, p, g = h.shape[0], cfg.patch_size, cfg.input_size // cfg.patch_size
        h = h.view(B, g, g, p, p, cfg.in_channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return h.reshape(B, cfg.in_channels, cfg.input_size, cfg.input_size)

    def compile_blocks(self, **options) -> None:
        """Compile every block's forward and JVP with ``torch.compile(**options)`` (regional compilation: one
        graph serves all blocks, parameters are its inputs). The Triton attention stays outside the graphs (a graph
        break), so no custom JVP rule runs inside a compiled region; with :meth:`keep_attention_in_graph`, the JVP's
        calls are custom operators inside them instead."""
        self._run_block = torch.compile(_run_block, **options)
        self._run_block_jvp = torch.compile(_run_block_jvp, **options)

    def _call_block(self, fn, block: Block, *args):
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, block, *args, use_reentrant=False)
        return fn(block, *args)

    def forward(self, x: Tensor, t: Tensor, s: Tensor, y: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
        h, c = self._embed(x), self.condition(t, s, y, beta)
        for block in self.blocks:
            h = self._call_block(self._run_block, block, h, c)
        return self._unpatchify(self.final(h, c))

    def forward_and_ds(self, x: Tensor, t: Tensor, s: Tensor, y: Tensor | None = None,
                       beta: Tensor | None = None, *, n_tangent: int | None = None) -> tuple[Tensor, Tensor]:
        """(F_θ(x, t, s, y, β), ∂_s F_θ) with the tangent carried by hand through every layer (``full_scale.model.dual``);
        equal to ``torch.func.jvp`` of :meth:`forward` in s with tangent 1 (docs/THEORY.md §2). The token path starts
        with a zero tangent (the patch embedding does not depend on s); ∂_s enters through c.

        ``n_tangent``: ∂_s F of the first ``n_tangent`` rows only, (n_tangent, C, H, W); the other rows are a plain
        forward run beside them, block by block (``Block.jvp``): the training step's velocity call
        (``tvm_theory.param.takes_tangent_rows``), which then shares each compiled block's graphs with the JVP."""
        rows = x.shape[0]
        n = rows if n_tangent is None else n_tangent
        if not 1 <= n <= rows:
            raise ValueError(f"n_tangent: expected 1 ≤ n_tangent ≤ {rows} (the batch), got {n_tangent}")
        h, (c, cd) = self._embed(x), self.condition_and_ds(t, s, y, beta)
        plain = (h[n:], c[n:]) if n < rows else ()
        h, c, cd = h[:n], c[:n], cd[:n]
        hd = torch.zeros_like(h)
        for block in self.blocks:
            h, hd, *rest = self._call_block(self._run_block_jvp, block, h, hd, c, cd, *plain)
            plain = (rest[0], plain[1]) if rest else ()
        out, out_d = self.final.jvp(h, hd, c, cd)
        if plain:
            out = torch.cat([out, self.final(*plain)])
        return self._unpatchify(out), self._unpatchify(out_d)


def _run_block(block: Block, h: Tensor, c: Tensor) -> Tensor:
    return block(h, c)


def _run_block_jvp(block: Block, h: Tensor, hd: Tensor, c: Tensor, cd: Tensor, *plain: Tensor) -> tuple[Tensor, ...]:
    return block.jvp(h, hd, c, cd, *plain)
