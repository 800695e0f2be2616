"""The weight EMA against its definition."""
import copy

import pytest
import torch

from toy.models import MLP
from tvm_theory.ema import ema_update


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.99, 1.0])
def test_ema_matches_its_definition(rate):
    torch.manual_seed(0)
    model, ema = MLP(2, 8, 2, 4), MLP(2, 8, 2, 4)
    before = copy.deepcopy(ema)
    ema_update(ema, model, rate)
    for e, b, p in zip(ema.parameters(), before.parameters(), model.parameters()):
        torch.testing.assert_close(e, rate * b + (1 - rate) * p)


def test_ema_rejects_bad_input():
    with pytest.raises(ValueError, match="rate"):
        ema_update(MLP(2, 4, 1, 4), MLP(2, 4, 1, 4), 1.5)
    with pytest.raises(ValueError, match="a copy of the model"):
        ema_update(MLP(2, 4, 1, 4), MLP(2, 4, 2, 4), 0.5)
