"""U-Net: shapes, skip connections, time-embedding hook, input checks."""

import pytest
import torch

from mlcanon.errors import UserError
from mlcanon.nn import UNet, timestep_embedding


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_shapes(depth):
    torch.manual_seed(0)
    net = UNet(3, 2, base_channels=4, depth=depth)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 2, 16, 16)


def test_unet_gradient_reaches_input_through_the_skips():
    torch.manual_seed(0)
    net = UNet(1, 1, base_channels=4, depth=2)
    net.mid.register_forward_hook(lambda m, i, o: torch.zeros_like(o))  # cut the bottleneck path
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0  # only the skip concatenations connect input and output now
    net.down[0].register_forward_hook(lambda m, i, o: o.detach())  # also cut the top skip (and all below)
    (g,) = torch.autograd.grad(net(x).sum(), x, allow_unused=True)
    assert g is None  # no path is left: the skips were what carried the gradient


def test_unet_time_embedding_changes_the_output():
    torch.manual_seed(0)
    net = UNet(1, 1, base_channels=8, depth=1, time_dim=16)
    x = torch.randn(2, 1, 8, 8)
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([50, 50]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, torch.tensor(1)), a)  # a scalar time broadcasts over the batch
    with pytest.raises(UserError, match="unet\\(x, t\\)"):
        net(x)


def test_timestep_embedding_formula():
    e = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert e.shape == (2, 8)
    torch.testing.assert_close(e[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    w = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(e[1], torch.cat([torch.sin(3 * w), torch.cos(3 * w)]))


def test_unet_rejects_indivisible_sizes():
    with pytest.raises(UserError, match="divisible by 4"):
        UNet(1, 1, 4, depth=2)(torch.randn(1, 1, 10, 12))
