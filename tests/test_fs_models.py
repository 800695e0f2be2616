"""The semi-Lipschitz DiT: shapes, named sizes, and each docs/THEORY.md §8 switch doing what it claims."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from full_scale.config import load_config, presets
from full_scale.model.dit import DiT, dit_config, rms

TINY = dict(input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=5,
            freq_dim=16)


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(dit_config(**{**TINY, **kw}))


def randomize_(model: DiT, std: float = 0.3) -> DiT:
    """Give every parameter (the zero-initialized adaLN and output layers included) non-zero values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def inputs(model: DiT, n: int = 3, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    c = model.cfg
    x = torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g, dtype=dtype)
    t = torch.rand(n, generator=g, dtype=dtype)
    return x, t, t * torch.rand(n, generator=g, dtype=dtype), torch.randint(0, c.num_classes + 1, (n,), generator=g)


def sigma_max(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1).double(), ord=2))


@settings(max_examples=4, deadline=None)
@given(patch=st.sampled_from([1, 2, 4, 8]))
def test_patch_layout_roundtrip(patch):
    # At vanilla init the blocks are the identity (adaLN gates are zero) and the final modulation is zero, so with
    # a patch embedding that copies each patch into the hidden vector, no position embedding, RMSNorm, and an
    # output layer that copies it back, F(x) must be x divided patch-wise by the patch's RMS — in the right places.
    C = 4
    model = tiny(patch_size=patch, in_channels=C, hidden_size=C * patch * patch, num_heads=1, rms_norm=True)
    with torch.no_grad():
        model.pos_embed.zero_()
        w_in = model.patch_embed.weight  # (hidden, C, p, p): channel k = (c, i, j)
        w_in.zero_()
        w_out = model.final.linear.weight  # (p·p·C, hidden): output o = (i, j, c)
        for c in range(C):
            for i in range(patch):
                for j in range(patch):
                    k = (c * patch + i) * patch + j
                    w_in[k, c, i, j] = 1.0
                    w_out[(i * patch + j) * C + c, k] = 1.0
    x, t, s, y = inputs(model)
    blocks = x.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, g, g, p, p)
    scale = blocks.pow(2).mean(dim=(1, 4, 5), keepdim=True).add(1e-6).rsqrt()
    g = x.shape[-1] // patch
    expected = (blocks * scale).permute(0, 1, 2, 4, 3, 5).reshape(x.shape[0], C, g * patch, g * patch)
    assert torch.allclose(model(x, t, s, y=y), expected, atol=1e-5)


def test_vanilla_init_is_dit():
    model = tiny()
    x, t, s, y = inputs(model)
    assert torch.equal(model(x, t, s, y=y), torch.zeros_like(x))  # adaLN-Zero and zero output layer
    assert isinstance(model.blocks[0].attn.q_norm, torch.nn.Identity)
    h = torch.randn(2, 4, TINY["hidden_size"]) * 3 + 1
    out = model.blocks[0].modulated_norm.norm(h)  # LayerNorm without affine: zero mean, unit variance per token
    assert torch.allclose(out.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-4)
    w = model.blocks[0].attn.qkv.weight  # Xavier-uniform: |w| ≤ sqrt(6 / (fan_in + fan_out))
    assert float(w.detach().abs().max()) <= (6 / sum(w.shape)) ** 0.5
    assert float(model.t_embed.mlp[0].weight.std()) == pytest.approx(0.02, rel=0.1)


def test_rms_norm_switch():
    h = torch.randn(2, 4, TINY["hidden_size"]) * 3 + 1
    out = tiny(rms_norm=True).blocks[0].modulated_norm.norm(h)
    assert torch.allclose(out.pow(2).mean(-1), torch.ones(2, 4), atol=1e-4)  # unit RMS ...
    assert float(out.mean(-1).abs().min()) > 0.05  # ... but the mean is not removed (not a LayerNorm)


@pytest.mark.parametrize("mod_norm", [False, True])
def test_mod_norm_gives_unit_rms_modulation(mod_norm):
    model = randomize_(tiny(mod_norm=mod_norm))
    x, t, s, y = inputs(model)
    c = model.condition(t, s, y, None)
    for mod in [model.blocks[0].modulation, model.final.modulation]:
        chunks = mod(c)
        assert len(chunks) == mod.n
        rms_values = torch.stack([ch.pow(2).mean(-1).sqrt() for ch in chunks])
        if mod_norm:
            assert torch.allclose(rms_values, torch.ones_like(rms_values), atol=1e-4)
        else:
            assert float((rms_values - 1).abs().max()) > 0.1


def test_qk_norm_switch():
    model = tiny(qk_norm=True)
    attn = model.blocks[0].attn
    assert isinstance(attn.q_norm, torch.nn.RMSNorm) and attn.q_norm.weight.requires_grad  # learnable weight
    q = torch.randn(2, 2, 16, attn.head_dim) * 5
    assert torch.allclose(attn.q_norm(q).pow(2).mean(-1), torch.ones(2, 2, 16), atol=1e-4)
    assert not isinstance(tiny().blocks[0].attn.q_norm, torch.nn.RMSNorm)


@pytest.mark.parametrize("on", [False, True])
def test_spectral_init_switches(on):
    model = tiny(spectral_init=on, spectral_init_time=on)
    for layer in model.spectral_layers() + model.time_mlp_layers():
        if on:
            assert sigma_max(layer.weight) == pytest.approx(1.0, abs=1e-5)
        else:
            assert abs(sigma_max(layer.weight) - 1.0) > 0.05
    only_layers = tiny(spectral_init=True)  # the time MLPs keep N(0, 0.02²) unless spectral_init_time is on
    assert abs(sigma_max(only_layers.time_mlp_layers()[0].weight) - 1.0) > 0.05


def test_spectral_norm_during_training():
    model = tiny(spectral_norm=True)
    with torch.no_grad():
        for layer in model.spectral_layers():  # scale the raw weights far from σ = 1
            layer.parametrizations.weight.original.mul_(7.0)
    x, t, s, y = inputs(model)
    model.train()
    for _ in range(30):  # power iteration converges over training forwards
        model(x, t, s, y=y)
    model.eval()  # read W / σ̂ without another power-iteration update
    for layer in model.spectral_layers():
        # σ̂ = uᵀWv never exceeds σ_max, so the normalized weight has σ_max ≥ 1; after 30 iterations it is close.
        assert 1 - 1e-6 <= sigma_max(layer.weight) <= 1.05
    model.train()
    out = model(x, t, s, y=y)  # gradients reach the raw weights
    randomize_(model)
    model(x, t, s, y=y).sum().backward()
    assert model.blocks[0].attn.qkv.parametrizations.weight.original.grad is not None
    assert out.shape == x.shape


def test_all_switches_change_outputs():
    # Each switch alone changes F for the same seed; all off is the vanilla model.
    x, t, s, y = inputs(tiny())
    base = randomize_(tiny())(x, t, s, y=y)
    for key in ("qk_norm", "rms_norm", "mod_norm"):
        other = randomize_(tiny(**{key: True}))
        assert not torch.allclose(other(x, t, s, y=y), base, atol=1e-4), key


def test_named_sizes_and_paper_parameter_count():
    cfg = dit_config("DiT-XL/2", input_size=32, num_classes=1000)
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.patch_size) == (1152, 28, 18, 2)
    assert dit_config("DiT-XL/2", num_heads=16).num_heads == 16
    assert dit_config("DiT-S/8").patch_size == 8 and dit_config("DiT-B/4").hidden_size == 768
    with torch.device("meta"):
        model = DiT(cfg)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(678e6, rel=1e-3)  # the paper's 678M
    with pytest.raises(ValueError, match="model name"):
        dit_config("DiT-M/2")
    with pytest.raises(ValueError, match="patch_size"):
        dit_config(input_size=8, patch_size=3)


def test_wrong_input_shape_is_named():
    model = tiny()
    with pytest.raises(ValueError, match="x: expected"):
        model(torch.zeros(1, 3, 8, 8), torch.ones(1), torch.zeros(1))


def test_rms_helper():
    x = torch.randn(5, 7) * 4
    assert torch.allclose(rms(x).pow(2).mean(-1), torch.ones(5), atol=1e-5)


def test_presets_resolve():
    assert {"tiny-digits", "imagenet-256", "imagenet-512"} <= set(presets())
    in256, in512 = load_config("imagenet-256"), load_config("imagenet-512")
    c256, c512 = in256.model.dit(), in512.model.dit()
    assert (c256.hidden_size, c256.num_heads, c256.input_size, c512.input_size) == (1152, 18, 32, 64)
    assert in256.train.lr == 1e-4 and list(in256.train.betas) == [0.9, 0.95]
    assert in256.train.global_batch == 2048 and in256.train.eval_ema == 0.9999
    assert (in256.guidance.weight, in512.guidance.weight) == (2.0, 2.5)
    assert (in256.train.grad_clip, in512.train.grad_clip) == (None, 1.0)
    assert load_config("imagenet-256", ["model.num_heads=16"]).model.dit().num_heads == 16
    with pytest.raises(ValueError, match="unknown key"):
        load_config("imagenet-256", ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="no preset"):
        load_config("imagenet-1024")


def test_every_block_gets_its_token_streams_stored_row_by_row():
    """The blocks' norms reduce over each token's hidden vector, so the streams they read, x and its tangent, must be
    stored one token row after another. The patch embedding gives the transposed layout (B, hidden, T) and a residual
    stream keeps its first value's layout through every block: each layer norm then copied its input first."""
    model = randomize_(tiny())
    layouts = []

    def record(fn):
        def run(block, *streams):
            layouts.extend(h.is_contiguous() for h in streams if h.dim() == 3)
            return fn(block, *streams)
        return run

    model._run_block, model._run_block_jvp = record(model._run_block), record(model._run_block_jvp)
    x, t, s, y = inputs(model)
    model(x, t, s, y)
    model.forward_and_ds(x, t, s, y, n_tangent=2)  # the JVP rows (x, ẋ) and the plain rows beside them
    depth = model.cfg.depth
    assert len(layouts) == depth + 3 * depth and all(layouts)
