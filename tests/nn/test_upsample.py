"""Up-sampling: nearest, bilinear, bed of nails, max unpooling, transposed conv."""

import pytest
import torch
import torch.nn.functional as F

from mlcanon.nn import Upsample, bed_of_nails, max_pool2d, max_unpool2d, upsample_bilinear, upsample_nearest


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("s", [2, 3])
def test_nearest_and_bilinear_match_torch(s):
    x = _rand(2, 3, 5, 7)
    torch.testing.assert_close(upsample_nearest(x, s), F.interpolate(x, scale_factor=s, mode="nearest"))
    torch.testing.assert_close(upsample_bilinear(x, s), F.interpolate(x, scale_factor=s, mode="bilinear"))


def test_bilinear_is_exact_on_affine_images():
    # an affine image a*i + b*j + c sampled at pixel centres is reproduced exactly away from the border
    i = torch.arange(6, dtype=torch.float64)
    img = (2 * i[:, None] - 3 * i[None, :] + 1).view(1, 1, 6, 6)
    up = upsample_bilinear(img, 2)[0, 0]
    u = (torch.arange(12, dtype=torch.float64) + 0.5) / 2 - 0.5  # source coordinates
    exact = 2 * u[:, None] - 3 * u[None, :] + 1
    torch.testing.assert_close(up[1:-1, 1:-1], exact[1:-1, 1:-1])


def test_bed_of_nails():
    x = _rand(1, 2, 3, 4)
    y = bed_of_nails(x, 2)
    assert y.shape == (1, 2, 6, 8)
    torch.testing.assert_close(y[:, :, ::2, ::2], x)
    assert (y != 0).sum() == x.numel()


def test_max_unpool_uses_the_pool_indices():
    x = _rand(2, 3, 6, 8).abs() + 0.1  # positive, so the zeros put in by unpooling never win a max
    y, idx = max_pool2d(x, 2, return_indices=True)
    up = max_unpool2d(y, idx, (6, 8))
    torch.testing.assert_close(up, F.max_unpool2d(y, idx, 2, output_size=(6, 8)))
    torch.testing.assert_close(max_pool2d(up, 2), y)  # pooling the unpooled map gives the pooled map back
    assert ((up == x) | (up == 0)).all()  # each value goes back exactly where the max was
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d(y, idx[:, :, :1], (6, 8))


def test_upsample_module_modes():
    x = _rand(2, 4, 3, 5).float()
    for mode in Upsample.MODES:
        assert Upsample(2, mode, channels=4)(x).shape == (2, 4, 6, 10)
    m = Upsample(2, "transposed", channels=4)
    torch.testing.assert_close(m(x), m.conv(x))
    with pytest.raises(ValueError, match="channels"):
        Upsample(2, "transposed")
    with pytest.raises(ValueError, match="mode"):
        Upsample(2, "cubic")
