"""Grad-CAM (Selvaraju et al. 2017): where in the image a convolutional classifier looks for a class.

For the feature maps A^k [h, w] of a target layer and the logit y^c of class c:
    alpha_k^c = (1 / hw) sum_ij d y^c / d A^k_ij          (global-average-pooled gradients, eq. 1)
    L^c       = ReLU(sum_k alpha_k^c A^k)                   (eq. 2)
then L^c is upsampled (bilinear) to the input's H x W. With a global-average-pool + linear head right after
A, alpha_k^c = w_{c,k} / hw, so Grad-CAM equals CAM (Zhou et al. 2016) up to that constant.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def default_target_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last leaf module whose output is a 4-D feature map [B, K, h, w] (the last conv stage's output)."""
    outputs: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outputs.append(mod)
                                     if isinstance(out, torch.Tensor) and out.dim() == 4 else None)
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    if not outputs:
        raise ValueError("Grad-CAM needs a convolutional model (a layer with [B, K, h, w] outputs); "
                        "this model has none (use --model cnn or resnet)")
    return outputs[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, target_layer: nn.Module | None = None,
             class_idx: int | torch.Tensor | None = None, normalize: bool = False) -> torch.Tensor:
    """Heat maps [B, H, W] = upsample(ReLU(sum_k alpha_k A^k)) for class ``class_idx`` (default: predicted).

    ``class_idx``: an int for every image, or a [B] tensor. ``normalize`` scales each map to max 1.
    The model is put in eval mode for the pass and its mode restored afterwards.
    """
    if x.dim() != 4:
        raise ValueError(f"grad_cam needs images [B, C, H, W], got shape {list(x.shape)}")
    B, _, H, W = x.shape
    was_training = model.training
    model.eval()
    layer = target_layer if target_layer is not None else default_target_layer(model, x)
    store: dict[str, torch.Tensor] = {}

    def hook(mod, inp, out):
        store["A"] = out

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            if "A" not in store:
                raise ValueError("grad_cam: target_layer was not used in the forward pass")
            A = store["A"]                                                   # [B, K, h, w]
            if class_idx is None:
                c = logits.argmax(-1)
            elif isinstance(class_idx, int):
                c = torch.full((B,), class_idx, dtype=torch.long, device=logits.device)
            else:
                c = torch.as_tensor(class_idx, dtype=torch.long, device=logits.device)
            if c.shape != (B,) or bool((c < 0).any()) or bool((c >= logits.shape[-1]).any()):
                raise ValueError(f"grad_cam: class_idx must be an int or [B] tensor of classes in "
                                f"0..{logits.shape[-1] - 1}, got {class_idx!r}")
            score = logits.gather(1, c[:, None]).sum()                        # sum_b y^{c_b}
            (grad,) = torch.autograd.grad(score, A)                            # d y^c / d A^k_ij
    finally:
        handle.remove()
        model.train(was_training)
    alpha = grad.mean(dim=(2, 3), keepdim=True)                               # alpha_k = mean_ij dy/dA
    cam = F.relu((alpha * A).sum(1, keepdim=True)).detach()                   # ReLU(sum_k alpha_k A^k)
    cam = F.interpolate(cam, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    if normalize:
        cam = cam / cam.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    return cam


def save_overlays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: str | Path) -> Path:
    """Grad-CAM of ``model`` on images ``x`` (true labels ``y``) as a PNG grid of heat-map overlays.

    Each panel: the grey image, the normalized heat map of the predicted class over it (jet, alpha 0.5),
    titled predicted / true label.
    """
    if len(x) < 1:
        raise ValueError("save_overlays needs at least one image")
    with torch.no_grad():
        pred = model(x).argmax(-1)
    cam = grad_cam(model, x, class_idx=pred, normalize=True)
    n = len(x)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    from matplotlib.figure import Figure  # (lazy: matplotlib costs start-up time of every classifier run)
    fig = Figure(figsize=(1.5 * cols, 1.7 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.axis("off")
            continue
        img = x[k].mean(0) if x.shape[1] != 3 else x[k].permute(1, 2, 0)
        ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)
        ax.imshow(cam[k].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_xlabel(f"{int(pred[k])}/{int(y[k])}" + ("" if pred[k] == y[k] else " x"), fontsize=7)
    fig.suptitle("Grad-CAM of the predicted class (predicted / true)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    return out
