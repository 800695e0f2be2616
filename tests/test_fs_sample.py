"""The sampler's outputs: the PNG grid layout and the same noise for every number of jumps."""
import numpy as np
import torch
from PIL import Image

from full_scale.model.dit import DiT, dit_config
from full_scale.sample import generate, grid_png, to_uint8


def test_grid_places_images_row_major_with_padding(tmp_path):
    images = np.arange(6 * 2 * 3, dtype=np.uint8).reshape(6, 2, 3, 1)
    grid_png(tmp_path / "g.png", images, rows=2, scale=1)
    grid = np.array(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 * 3 - 1, 3 * 4 - 1)
    for k in range(6):
        r, c = divmod(k, 3)
        assert np.array_equal(grid[r * 3: r * 3 + 2, c * 4: c * 4 + 3], images[k, ..., 0])
    assert (grid[2] == 128).all() and (grid[:, 3] == 128).all()


def test_generate_uses_the_same_noise_for_every_n():
    # At vanilla initialization F ≡ 0, so every N returns the starting noise itself.
    torch.manual_seed(0)
    model = DiT(dit_config(input_size=4, in_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2,
                           num_classes=3, freq_dim=8)).eval()
    labels = torch.tensor([0, 1, 2, 3])
    one, four = (generate(model, labels, n, 2.0, seed=5, batch_size=3) for n in (1, 4))
    assert torch.equal(one, four)
    assert torch.equal(one, torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5)))
    assert to_uint8(torch.tensor([[[[-1.0, 0.0, 1.0, 2.0]]]]))[0, 0, :, 0].tolist() == [0, 128, 255, 255]


def _nonzero_model():
    torch.manual_seed(0)
    model = DiT(dit_config(input_size=4, in_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2,
                           num_classes=3, freq_dim=8, lipschitz=True)).eval()
    with torch.no_grad():  # adaLN-Zero and output layers non-zero: F is not identically 0
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _sample_worker(rank, world, rdv, out):
    import torch.distributed as dist

    from full_scale.distributed import Dist, teardown

    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    d = Dist(rank=rank, world_size=world)
    x = generate(_nonzero_model(), torch.tensor([0, 1, 2, 0, 1]), 2, 2.0, seed=3, batch_size=2, d=d)
    torch.save(x, f"{out}/x{rank}.pt")
    teardown(d)  # not dist.destroy_process_group(): on torch < 2.8 that can hang (see teardown)


def test_several_processes_give_the_single_process_samples(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_sample_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    one = generate(_nonzero_model(), torch.tensor([0, 1, 2, 0, 1]), 2, 2.0, seed=3, batch_size=2)
    assert one.shape == (5, 1, 4, 4) and not torch.equal(one, torch.randn(5, 1, 4, 4))
    for rank in range(2):  # 5 samples over 2 ranks: shares of 2 and 3, gathered in order on both
        torch.testing.assert_close(torch.load(tmp_path / f"x{rank}.pt", weights_only=True), one, rtol=0, atol=1e-6)


def test_generate_follows_the_runs_parameterization():
    """scaled=False (guidance.scaled: false) takes one jump x1 + (0 − 1)·F(x1, 1, 0, c, 1/w); scaled multiplies F
    by w."""
    model, labels = _nonzero_model(), torch.tensor([0, 1, 2, 0, 1])
    x1 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    beta = torch.full((5,), 1 / 2.5)
    with torch.no_grad():
        F = model(x1, torch.ones(5), torch.zeros(5), y=labels, beta=beta)
    for scaled, factor in ((False, 1.0), (True, 2.5)):
        x = generate(model, labels, 1, 2.5, seed=3, batch_size=2, scaled=scaled)
        torch.testing.assert_close(x, x1 - factor * F, rtol=1e-5, atol=1e-5)
