"""Grad-CAM: equals CAM for a GAP + linear head (closed form), localizes a class-deciding patch, CLI overlay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.supervised.gradcam import default_target_layer, grad_cam


class GapNet(nn.Module):
    """conv -> relu -> conv -> relu -> global average pool -> linear."""

    def __init__(self, k: int = 8, classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, k, 3, padding=1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1),
                                      nn.ReLU())
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_equals_cam_for_gap_linear_head():
    torch.manual_seed(0)
    model = GapNet()
    x = torch.rand(3, 1, 12, 12)
    cam = grad_cam(model, x, class_idx=1)
    A = model.features(x)                                       # [B, K, h, w], h = w = 12
    w = model.fc.weight[1]                                      # alpha_k = w_{1,k} / (h w)
    expected = F.relu((w[None, :, None, None] * A).sum(1)) / (12 * 12)
    assert cam.shape == (3, 12, 12)
    torch.testing.assert_close(cam, expected.detach(), rtol=1e-5, atol=1e-7)
    assert default_target_layer(model, x) is model.features[3]


def test_grad_cam_bad_class_is_a_user_error():
    with pytest.raises(ValueError, match="class_idx"):
        grad_cam(GapNet(), torch.rand(2, 1, 8, 8), class_idx=5)
    with pytest.raises(ValueError, match="convolutional"):
        grad_cam(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), torch.rand(2, 1, 8, 8))


def _patch_data(n: int, g: torch.Generator):
    """16x16 noise images; classes 0 and 1 have a 4x4 patch in a random quadrant, a '-' bar (0) or a '|' bar (1);
    class 2 has no patch (so neither patch class can be recognised by the other's absence)."""
    x = 0.15 * torch.rand(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    quad = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        r0 = 8 * (int(quad[i]) // 2) + int(torch.randint(0, 4, (1,), generator=g))
        c0 = 8 * (int(quad[i]) % 2) + int(torch.randint(0, 4, (1,), generator=g))
        if y[i] == 0:
            x[i, 0, r0 + 1:r0 + 3, c0:c0 + 4] = 1.0   # horizontal bar
        elif y[i] == 1:
            x[i, 0, r0:r0 + 4, c0 + 1:c0 + 3] = 1.0   # vertical bar
    return x, y, quad


def test_grad_cam_puts_the_heat_on_the_deciding_patch():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y, _ = _patch_data(512, g)
    model = GapNet(k=8, classes=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt, quad = _patch_data(96, g)
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    assert acc >= 0.95, acc
    has = yt < 2                                                    # the images with a class-deciding patch
    xt, yt, quad = xt[has], yt[has], quad[has]
    B = len(xt)
    cam = grad_cam(model, xt, class_idx=yt)                          # [B, 16, 16]
    quads = torch.stack([cam[:, :8, :8], cam[:, :8, 8:], cam[:, 8:, :8], cam[:, 8:, 8:]], 1).sum((2, 3))
    share = quads[torch.arange(B), quad] / quads.sum(1).clamp(min=1e-12)   # heat mass in the patch's quadrant
    assert float(share.mean()) > 0.8, share
    assert float((share > 0.5).float().mean()) >= 0.9, share


def test_save_overlays_on_a_classifier_run(tmp_runs):
    from mlcanon.cli import build_config, main
    from mlcanon.data import load
    from mlcanon.registry import get, load_run
    from mlcanon.supervised.gradcam import save_overlays

    c = build_config(get("classifier"), ["--dataset", "digits", "--model", "cnn", "--width", "32", "--depth", "1",
                                         "--epochs", "1", "--out-dir", str(tmp_runs), "--progress", "false"])
    run_dir = get("classifier").train(c)["run_dir"]
    model = load_run(run_dir).model
    ds = load("digits", "test")
    out = save_overlays(model, ds.x[:6], ds.targets[:6], tmp_runs / "cam.png")
    assert out.exists() and out.stat().st_size > 1000
    with pytest.raises(ValueError):
        save_overlays(model, ds.x[:0], ds.targets[:0], tmp_runs / "none.png")
    assert main(["eval", run_dir]) == 0
