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
