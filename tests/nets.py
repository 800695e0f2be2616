"""Small networks shared by the tests."""
import torch

from toy.models import MLP


class Conditional(torch.nn.Module):
    """F(x, t, s, y, β): a toy MLP that uses every conditioning input (class embedding added to x, β scaling)."""

    def __init__(self, dim: int, n_classes: int = 4):
        super().__init__()
        self.mlp = MLP(dim, 12, 2, 4)
        self.emb = torch.nn.Embedding(n_classes, dim)
        self.beta_scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, s, y, beta):
        return self.mlp(x + self.emb(y), t, s) * (1 + self.beta_scale * beta[:, None])
