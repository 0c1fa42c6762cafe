"""Convolution from the equations vs torch, explicit backward formulas vs autograd, pooling."""

import pytest
import torch
import torch.nn.functional as F

from mlcanon.nn import (
    avg_pool2d,
    conv1d,
    conv1x1,
    conv2d,
    conv2d_bias_grad,
    conv2d_input_grad,
    conv2d_weight_grad,
    conv_output_size,
    conv_transpose2d,
    max_pool2d,
    subsample2d,
)

CASES = [  # (H, W, k, stride, padding, dilation)
    (7, 9, 3, 1, 1, 1), (8, 8, 3, 2, 1, 1), (9, 7, 3, 2, 0, 2), (10, 10, 2, 3, 1, 1), (6, 6, 5, 1, 3, 1),
    (11, 8, 3, 3, 2, 2),
]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("H,W,k,s,p,d", CASES)
def test_conv2d_matches_torch(H, W, k, s, p, d):
    x, w, b = _rand(2, 3, H, W), _rand(4, 3, k, k, seed=1), _rand(4, seed=2)
    y = conv2d(x, w, b, s, p, d)
    assert y.shape[-2:] == (conv_output_size(H, k, s, p, d), conv_output_size(W, k, s, p, d))
    torch.testing.assert_close(y, F.conv2d(x, w, b, s, p, d))


def test_conv2d_same_valid_groups():
    x, w = _rand(2, 4, 9, 8), _rand(6, 4, 3, 3, seed=1)
    for d in (1, 2):
        torch.testing.assert_close(conv2d(x, w, padding="same", dilation=d), F.conv2d(x, w, padding="same", dilation=d))
        assert conv2d(x, w, padding="same", dilation=d).shape[-2:] == x.shape[-2:]
    torch.testing.assert_close(conv2d(x, w, padding="valid"), F.conv2d(x, w, padding="valid"))
    wg = _rand(6, 2, 3, 3, seed=3)
    torch.testing.assert_close(conv2d(x, wg, None, 1, 1, 1, groups=2), F.conv2d(x, wg, None, 1, 1, 1, groups=2))
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match="stride 1"):
        conv2d(x, w, stride=2, padding="same")


def test_conv1d_matches_torch():
    x, w, b = _rand(2, 3, 20), _rand(5, 3, 4, seed=1), _rand(5, seed=2)
    for s, p, d in [(1, 0, 1), (2, 1, 2), (3, 2, 1)]:
        torch.testing.assert_close(conv1d(x, w, b, s, p, d), F.conv1d(x, w, b, s, p, d))
    torch.testing.assert_close(conv1d(x, w, None, padding="same", dilation=2), F.conv1d(x, w, padding="same", dilation=2))


def test_conv1x1_is_a_per_pixel_linear_map():
    x, w, b = _rand(2, 3, 5, 6), _rand(7, 3, 1, 1, seed=1), _rand(7, seed=2)
    y = conv1x1(x, w, b)
    torch.testing.assert_close(y, F.conv2d(x, w, b))
    lin = x.permute(0, 2, 3, 1) @ w.view(7, 3).T + b  # W x[n, :, i, j] + b at every pixel
    torch.testing.assert_close(y, lin.permute(0, 3, 1, 2))


@pytest.mark.parametrize("H,W,k,s,p,d", CASES)
def test_backward_formulas_match_autograd(H, W, k, s, p, d):
    x = _rand(2, 3, H, W).requires_grad_()
    w = _rand(4, 3, k, k, seed=1).requires_grad_()
    b = _rand(4, seed=2).requires_grad_()
    y = F.conv2d(x, w, b, s, p, d)
    g = _rand(*y.shape, seed=3)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    torch.testing.assert_close(conv2d_input_grad(g, w.detach(), x.shape, s, p, d), gx)
    torch.testing.assert_close(conv2d_weight_grad(x.detach(), g, k, s, p, d), gw)
    torch.testing.assert_close(conv2d_bias_grad(g), gb)


def test_input_grad_is_full_convolution_with_rotated_kernel():
    # stride 1, no padding, one channel: dL/dx = full_conv(dL/dy, rot180(w)) written out by hand
    x, w = _rand(1, 1, 6, 6), _rand(1, 1, 3, 3, seed=1)
    g = _rand(1, 1, 4, 4, seed=2)
    full = F.conv2d(F.pad(g, (2, 2, 2, 2)), w.flip(2, 3))  # correlate the zero-padded gradient with rot180(w)
    torch.testing.assert_close(conv2d_input_grad(g, w, x.shape), full)
    # weight grad = correlation of the input with the output gradient
    torch.testing.assert_close(conv2d_weight_grad(x, g, 3), F.conv2d(x, g))


@pytest.mark.parametrize("k,s,p,op,d", [(3, 1, 1, 0, 1), (4, 2, 1, 0, 1), (3, 2, 1, 1, 1), (3, 2, 0, 0, 2), (2, 2, 0, 0, 1)])
def test_conv_transpose_matches_torch_and_is_the_adjoint(k, s, p, op, d):
    x, w, b = _rand(2, 3, 5, 6), _rand(3, 4, k, k, seed=1), _rand(4, seed=2)
    y = conv_transpose2d(x, w, b, s, p, op, d)
    torch.testing.assert_close(y, F.conv_transpose2d(x, w, b, s, p, op, 1, d))
    # <conv(z), x> = <z, conv_T(x)>: the transposed convolution is the adjoint of the convolution
    yz = conv_transpose2d(x, w, None, s, p, op, d)
    z = _rand(*yz.shape, seed=4)
    lhs = (conv2d(z, w, None, s, p, d) * x).sum()  # w [C_in, C_out] read as conv weight [O, C]
    assert torch.isclose(lhs, (z * yz).sum())


def test_stride2_transposed_conv_doubles_the_size():
    x, w = _rand(1, 2, 7, 5), _rand(2, 3, 4, 4, seed=1)
    assert conv_transpose2d(x, w, stride=2, padding=1).shape == (1, 3, 14, 10)
    assert conv_transpose2d(x, _rand(2, 3, 2, 2), stride=2).shape == (1, 3, 14, 10)


def test_pooling_matches_torch():
    x = _rand(2, 3, 8, 9)
    for k, s, p in [(2, None, 0), (3, 2, 1), (2, 1, 0)]:
        y, idx = max_pool2d(x, k, s, p, return_indices=True)
        yt, it = F.max_pool2d(x, k, s, p, return_indices=True)
        torch.testing.assert_close(y, yt)
        assert torch.equal(idx, it)
        torch.testing.assert_close(avg_pool2d(x, k, s, p), F.avg_pool2d(x, k, s, p))
    torch.testing.assert_close(subsample2d(x, 2), x[:, :, ::2, ::2])
    torch.testing.assert_close(subsample2d(x, 3), F.avg_pool2d(x, 1, 3))  # keep the top-left of each window


def test_max_pool_routes_gradient_only_to_the_argmax():
    x = _rand(2, 3, 8, 8).requires_grad_()
    y, idx = max_pool2d(x, 2, return_indices=True)
    g = _rand(*y.shape, seed=1)
    (gx,) = torch.autograd.grad(y, x, g)
    expected = torch.zeros(2, 3, 64, dtype=torch.float64).scatter(2, idx.flatten(2), g.flatten(2)).view_as(x)
    torch.testing.assert_close(gx, expected)
    assert (gx != 0).sum() == y.numel()  # exactly one input per window receives gradient
    gavg = torch.autograd.grad(avg_pool2d(x, 2), x, g)[0]  # average pool spreads it evenly: g / 4
    torch.testing.assert_close(gavg, g.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4)
