"""Masked layers: which inputs each output can see, checked by gradients (not by reading the masks back)."""

import torch

from mlcanon.nn import CausalConv1d, MaskedConv2d, MaskedLinear
from mlcanon.nn.masked import raster_mask


def _input_grad(f, x, index):
    x = x.clone().requires_grad_(True)
    f(x)[index].sum().backward()
    return x.grad


def test_masked_linear_applies_its_mask_to_the_weight():
    torch.manual_seed(0)
    mask = torch.tril(torch.ones(4, 4), -1)               # y_i sees x_j for j < i only
    layer = MaskedLinear(4, 4, mask=mask)
    x = torch.randn(3, 4)
    for i in range(4):
        g = _input_grad(layer, x, (slice(None), i))[0]
        assert torch.all((g != 0) == (mask[i] != 0))
    assert torch.allclose(layer(x), x @ (layer.weight * mask).T + layer.bias, atol=1e-6)


def test_raster_masks_A_and_B():
    a, b = raster_mask(3, "A"), raster_mask(3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


def test_masked_conv2d_sees_only_the_past_in_raster_order():
    torch.manual_seed(0)
    for kind in ("A", "B"):
        conv = MaskedConv2d(2, 3, 5, mask_type=kind)
        x = torch.randn(1, 2, 9, 9)
        g = _input_grad(conv, x, (0, slice(None), 4, 4)).abs().sum(1)[0]      # [9, 9]
        seen = g != 0
        for r in range(9):
            for c in range(9):
                inside = abs(r - 4) <= 2 and abs(c - 4) <= 2
                past = r < 4 or (r == 4 and (c < 4 or (kind == "B" and c == 4)))
                assert bool(seen[r, c]) == (inside and past), (kind, r, c)


def test_causal_conv1d_receptive_field_and_shift():
    torch.manual_seed(0)
    T = 20
    for k, d, shift in ((2, 1, 0), (3, 4, 0), (2, 2, 1)):
        conv = CausalConv1d(1, 1, k, dilation=d, shift=shift)
        with torch.no_grad():
            conv.weight.fill_(1.0)
        x = torch.randn(1, 1, T)
        assert conv(x).shape == (1, 1, T)
        t = 15
        g = _input_grad(conv, x, (0, 0, t))[0, 0]
        expected = {t - shift - j * d for j in range(k)}
        assert {int(i) for i in torch.nonzero(g).flatten()} == expected
        assert conv.receptive_field == (k - 1) * d + 1


def test_masked_conv2d_equals_the_full_masked_kernel_convolution():
    """The forward convolves only the kernel rows at and above the centre: it must equal the plain same-padded
    convolution with the whole masked kernel W * M, for every size, mask and dilation."""
    torch.manual_seed(0)
    for k, kind, d in ((3, "A", 1), (3, "B", 1), (5, "B", 2), (7, "A", 1), (1, "B", 1)):
        conv = MaskedConv2d(3, 4, k, mask_type=kind, dilation=d)
        x = torch.randn(2, 3, 11, 13)
        full = torch.nn.functional.conv2d(x, conv.weight * conv.mask, conv.bias, padding=d * (k // 2), dilation=d)
        assert conv(x).shape == full.shape
        torch.testing.assert_close(conv(x), full, rtol=1e-5, atol=1e-5)
