"""What the pixel-space DDPM and latent diffusion share: the denoisers, the diffusion model (its training
objective and its variational bound) and the config fields of both.

Training objective (Ho et al. 2020, Algorithm 1 and eq. 14, "L_simple"): t ~ U{1..T}, eps ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, minimize ||target - f_theta(x_t, t)||^2 with target eps
(eps-prediction), x_0 (x0-prediction) or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (v-prediction, Salimans &
Ho 2022). For classifier-free guidance (Ho & Salimans 2022, Algorithm 1) the label is replaced by the null label
with probability ``p_uncond``, so one network learns eps(x_t, y) and eps(x_t).

Variational bound (Ho et al. 2020, eq. 5), in nats per example:

    L = KL(q(x_T | x_0) || N(0, I)) + sum_{t=2..T} KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
        - log p_theta(x_0 | x_1)

with p_theta(x_{t-1} | x_t) = N(mu~_t(x_0^, x_t), sigma_t^2 I) and, for 8-bit images scaled to [-1, 1], the
discretized Gaussian decoder of eq. 13 (bins of width 2/255), so the bound is on the discrete data's NLL.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.samplers import (
    VARIANCES,
    Record,
    classifier_free_eps,
    classifier_guided_eps,
    make_sampler,
)
from mlcanon.generative.diffusion.schedules import PREDICTIONS, SCHEDULES, NoiseSchedule, _at
from mlcanon.nn.unet import SelfAttention2d, UNet, _ResBlock, label_embedding, timestep_embedding
from mlcanon.training import TrainConfig


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class ScheduleConfig(TrainConfig):
    """The noise schedule's fields: shared by the diffusion models and the noisy classifier that guides them."""

    schedule: str = option("linear", "noise schedule beta_t: linear (Ho et al.), cosine (Nichol & Dhariwal) "
                                     "or custom (--betas)", choices=SCHEDULES)
    timesteps: int = option(1000, "number of diffusion steps T (a custom schedule gives its own)", min=1)
    betas: tuple[float, ...] = option((), "the betas of --schedule custom, comma-separated (T = their count)")

    def check(self) -> None:
        super().check()
        if self.schedule == "custom":
            if not self.betas:
                raise UserError("--schedule custom needs --betas b1,b2,...,bT (each in (0, 1))")
            if not all(0 < b < 1 for b in self.betas):
                raise UserError("--betas: every beta must be in (0, 1)")
        elif self.betas:
            raise UserError(f"--betas is only read with --schedule custom (got --schedule {self.schedule})")

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.make(self.schedule, self.timesteps, self.betas)

    def same_schedule(self, other: ScheduleConfig) -> bool:
        return self.make_schedule().betas.equal(other.make_schedule().betas)


@dataclasses.dataclass
class DiffusionConfig(ScheduleConfig):
    """Fields of every diffusion model (pixel space or latent space)."""

    prediction: str = option("eps", "what the network predicts: eps (Ho et al.), x0, or v (Salimans & Ho)",
                             choices=PREDICTIONS)
    base_channels: int = option(32, "U-Net channels at full resolution (images) / MLP width is --width", min=1)
    depth: int = option(2, "U-Net levels (each halves the resolution; 28x28 is padded to a multiple of 2^depth)",
                        min=1)
    channel_mult: tuple[int, ...] = option((1, 2, 2), "U-Net channel multiplier per level (depth + 1 entries)")
    attn_levels: tuple[int, ...] = option((2,), "U-Net levels with self-attention (0 = full resolution, depth = "
                                               "bottleneck; low resolution keeps it cheap)")
    heads: int = option(4, "attention heads", min=1)
    res_blocks: int = option(0, "ResNet blocks per U-Net level going down (N + 1 going up, a ResNet-attention-"
                                "ResNet mid block: Ho et al.'s num_res_blocks, diffusers' layers_per_block); "
                                "0: the compact U-Net (one block per level each way, one bottleneck block)",
                             min=0, absent=0)
    dropout: float = option(0.1, "dropout in the residual blocks", min=0.0, max=0.99)
    width: int = option(128, "hidden units of the MLP denoiser (vector data: toy2d, flat latents)", min=1)
    mlp_layers: int = option(3, "hidden layers of the MLP denoiser", min=1)
    class_cond: bool = option(True, "condition on class labels where the data set has them (null label for "
                                    "classifier-free guidance)")
    p_uncond: float = option(0.1, "probability of replacing the label by the null label in training (CFG)",
                             min=0.0, max=1.0)

    def check(self) -> None:
        super().check()
        if len(self.channel_mult) != self.depth + 1:
            raise UserError(f"--channel-mult needs depth + 1 = {self.depth + 1} entries, got "
                            f"{','.join(map(str, self.channel_mult))}")
        bad = [lv for lv in self.attn_levels if not 0 <= lv <= self.depth]
        if bad:
            raise UserError(f"--attn-levels {','.join(map(str, bad))}: levels run from 0 to --depth {self.depth}")
        if any(self.base_channels * m % self.heads for m in self.channel_mult if m) and (
                self.attn_levels or self.res_blocks):
            raise UserError(f"--heads {self.heads} must divide the channels of every level "
                            f"(--base-channels {self.base_channels} x --channel-mult)")
        if self.res_blocks and self.base_channels % 2:
            raise UserError(f"--res-blocks {self.res_blocks} embeds t in --base-channels dimensions, which must be "
                            f"even (got {self.base_channels})")


# ------------------------------------------------------------------------------------------------- data
EIGHT_BIT = ("mnist", "fashion-mnist", "cifar10")


@dataclasses.dataclass
class DiffusionData:
    """Training data as the diffusion sees it: images scaled to [-1, 1] (x -> 2x - 1), points as they are."""

    x: torch.Tensor
    y: torch.Tensor | None
    shape: tuple[int, ...]
    num_classes: int
    is_image: bool
    eight_bit: bool           # 8-bit pixels: the bound uses the discrete decoder and reads in bits/dim


def load_diffusion_data(dataset: str, split: str = "train", data_dir: str | None = None, subset: int = 0,
                        toy_points: int = 10000, seed: int = 0) -> DiffusionData:
    from mlcanon.data import load
    opts = {"n": toy_points, "seed": seed} if dataset.startswith("toy2d:") else {"data_dir": data_dir}
    if dataset == "binarized-mnist" or dataset.startswith("text:"):
        raise UserError(f"--dataset {dataset}: diffusion here models images in [0, 1] (mnist, fashion-mnist, "
                        "digits) or toy2d:<name> points")
    ds = load(dataset, split, **opts)
    x, y = ds.x.float(), getattr(ds, "targets", None)
    if subset:
        x = x[:subset]
        y = y[:subset] if y is not None else None
    is_image = ds.kind == "image"
    if is_image:
        x = x * 2 - 1                                                   # [0, 1] -> [-1, 1]
    return DiffusionData(x, y, tuple(x.shape[1:]), int(ds.num_classes or 0) if y is not None else 0, is_image,
                         dataset in EIGHT_BIT)


# ---------------------------------------------------------------------------------------------- denoisers
class MLPDenoiser(nn.Module):
    """f_theta(x_t, t, y) for vectors: an MLP on [x_t, phi(t)] (sinusoidal phi) + a label embedding E[y]."""

    def __init__(self, dim: int, width: int = 128, layers: int = 3, time_dim: int = 32, num_classes: int = 0):
        super().__init__()
        self.dim, self.time_dim, self.num_classes = dim, time_dim, num_classes
        self.inp = nn.Linear(dim + time_dim, width)
        self.label_emb = nn.Embedding(num_classes + 1, width) if num_classes else None   # row K: null label
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers - 1))
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        B, D = x.shape
        if D != self.dim:
            raise ValueError(f"MLPDenoiser expects [B, {self.dim}] inputs, got {tuple(x.shape)}")
        h = self.inp(torch.cat([x, timestep_embedding(t, self.time_dim).to(x.dtype)], 1))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            h = h + self.label_emb(y)
        for layer in self.hidden:
            h = h + layer(F.silu(h))   # residual MLP block
        return self.out(F.silu(h))


class DDPMUNet(nn.Module):
    """The U-Net of Ho et al. 2020 (Appendix B; their ``diffusion_tf/models/unet.py``), the layout diffusers'
    ``UNet2DModel`` follows, with ``num_res_blocks`` = N:

        h_0 = Conv3x3(x);  hs = [h_0]
        level l = 0..L-1:  N x { h = ResBlock(h, phi(t)); h = Attn(h) if l in attn_levels; hs.push(h) }
                           if l < L-1: h = Conv3x3_stride2(h); hs.push(h)                      (downsample)
        mid:               h = ResBlock(Attn(ResBlock(h)))
        level l = L-1..0:  (N+1) x { h = ResBlock(concat[h, hs.pop()]); h = Attn(h) if l in attn_levels }
                           if l > 0: h = Conv3x3(NearestUp2x(h))                                (upsample)
        out = Conv3x3(SiLU(GN(h)))

    so every down-path output (including h_0 and each downsample) feeds one up block through a skip connection.
    phi(t) = MLP(sinusoid(t, C_0)) of width 4 C_0 (their get_timestep_embedding + 2 dense layers), plus a label
    embedding E[y] (row ``num_classes`` = the null label) when ``num_classes`` > 0. L = len(channel_mult); the
    channels of level l are base_channels * channel_mult[l]; H, W must divide 2^(L-1)."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attn_levels: tuple[int, ...] = (2,), heads: int = 4, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        L = len(channel_mult)
        if num_res_blocks < 1 or L < 1:
            raise ValueError(f"DDPMUNet: num_res_blocks and len(channel_mult) must be >= 1, got {num_res_blocks}, "
                             f"{L}")
        if any(not 0 <= lv < L for lv in attn_levels):
            raise ValueError(f"DDPMUNet: attn_levels {tuple(attn_levels)} outside 0..{L - 1}")
        if base_channels % 2:
            raise ValueError(f"DDPMUNet: base_channels must be even (sinusoidal embedding), got {base_channels}")
        ch = [base_channels * m for m in channel_mult]
        self.levels, self.num_classes, self.time_dim = L, num_classes, base_channels
        emb = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(num_classes + 1, emb) if num_classes else None   # row K: null label

        def res(cin: int, cout: int) -> _ResBlock:
            return _ResBlock(cin, cout, emb, "group", dropout)

        def attn(level: int, c: int) -> nn.Module:
            return SelfAttention2d(c, heads) if level in attn_levels else nn.Identity()

        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        skip_ch = [ch[0]]                                     # channels of the hs stack, pushed in order
        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = ch[0]
        for level in range(L):
            for _ in range(num_res_blocks):
                self.down.append(res(c, ch[level]))
                self.down_attn.append(attn(level, ch[level]))
                c = ch[level]
                skip_ch.append(c)
            if level < L - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))   # H -> H/2, learned
                skip_ch.append(c)
        self.mid1, self.mid_attn, self.mid2 = res(c, c), SelfAttention2d(c, heads), res(c, c)
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(L)):
            for _ in range(num_res_blocks + 1):
                self.up.append(res(c + skip_ch.pop(), ch[level]))               # ResBlock(concat[h, skip])
                self.up_attn.append(attn(level, ch[level]))
                c = ch[level]
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))             # after nearest 2x
        self.out = nn.Sequential(nn.GroupNorm(math.gcd(8, c), c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1))
        self.num_res_blocks = num_res_blocks

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        N = x.shape[0]
        k = 2 ** (self.levels - 1)
        if x.shape[-2] % k or x.shape[-1] % k:
            raise ValueError(f"DDPMUNet with {self.levels} levels needs H and W divisible by {k}, got "
                             f"{tuple(x.shape[-2:])}")
        t = t.reshape(-1).expand(N) if t.numel() == 1 else t
        emb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x.dtype))              # phi(t)
        c = label_embedding(self.label_emb, self.num_classes, y, N, x.device, "DDPMUNet")
        if c is not None:
            emb = emb + c                                                                  # + E[y]
        n = self.num_res_blocks
        h = self.conv_in(x)
        hs = [h]
        for i, (block, attn) in enumerate(zip(self.down, self.down_attn)):
            h = attn(block(h, emb))
            hs.append(h)
            if i % n == n - 1 and i // n < self.levels - 1:
                h = self.downsample[i // n](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, (block, attn) in enumerate(zip(self.up, self.up_attn)):
            h = attn(block(torch.cat([h, hs.pop()], 1), emb))
            if i % (n + 1) == n and i // (n + 1) < self.levels - 1:
                h = self.upsample[i // (n + 1)](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)


class ImageDenoiser(nn.Module):
    """The U-Net (residual blocks, low-resolution self-attention, time and label embeddings) on images whose
    sides need not divide 2^depth: x_t is zero-padded to the next multiple (28 -> 32 at depth 3; 28 needs no
    padding at depth 2) and the output cropped back.

    ``res_blocks`` = 0: the compact :class:`mlcanon.nn.UNet` (one block per level each way and a bottleneck
    block at level ``depth``; ``attn_levels`` = ``depth`` puts attention after it). ``res_blocks`` = N >= 1:
    :class:`DDPMUNet` with levels 0..depth (``depth`` downsamplings), N ResNet blocks per level down, N + 1 up,
    and its ResNet-attention-ResNet mid block."""

    def __init__(self, channels: int, size: tuple[int, int], base_channels: int = 32, depth: int = 2,
                 channel_mult: tuple[int, ...] = (1, 2, 2), attn_levels: tuple[int, ...] = (2,), heads: int = 4,
                 dropout: float = 0.1, num_classes: int = 0, res_blocks: int = 0):
        super().__init__()
        k = 2 ** depth
        H, W = size
        self.pad_h, self.pad_w = (-H) % k, (-W) % k
        self.num_classes = num_classes
        if res_blocks:
            if len(channel_mult) != depth + 1:
                raise ValueError(f"ImageDenoiser: channel_mult needs depth + 1 = {depth + 1} entries, got "
                                 f"{len(channel_mult)}")
            self.unet = DDPMUNet(channels, channels, base_channels, channel_mult, res_blocks, attn_levels, heads,
                                 dropout, num_classes)
        else:
            self.unet = UNet(channels, channels, base_channels, depth, channel_mult, time_dim=base_channels * 2,
                             dropout=dropout, residual=True, attn_levels=attn_levels, heads=heads,
                             num_classes=num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        _B, _C, H, W = x.shape
        ph, pw = self.pad_h, self.pad_w
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        out = self.unet(x, t, y=y if self.num_classes else None)
        return out[..., ph // 2:ph // 2 + H, pw // 2:pw // 2 + W]


def build_denoiser(config: DiffusionConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MLP for vectors [D], U-Net for images [C, H, W]."""
    if len(shape) == 1:
        return MLPDenoiser(shape[0], config.width, config.mlp_layers, num_classes=num_classes)
    if len(shape) == 3:
        return ImageDenoiser(shape[0], shape[1:], config.base_channels, config.depth, config.channel_mult,
                             config.attn_levels, config.heads, config.dropout, num_classes, config.res_blocks)
    raise UserError(f"diffusion needs vectors [D] or images [C, H, W], got data of shape {list(shape)}")


# ---------------------------------------------------------------------------------------- the model
class GaussianDiffusion(nn.Module):
    """A denoiser f_theta with its noise schedule. ``loss(batch)`` is the training objective; ``eps`` turns the
    network's output into a noise estimate; ``sample`` runs any sampler; ``variational_bound`` is eq. 5."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...], *, prediction: str = "eps",
                 num_classes: int = 0, p_uncond: float = 0.1, clip: tuple[float, float] | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.net, self.schedule, self.shape = net, schedule, tuple(shape)
        self.prediction, self.num_classes, self.p_uncond, self.clip = prediction, num_classes, p_uncond, clip

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x_t, t, y)

    def loss(self, batch: dict) -> dict:
        """L_simple: E_{t, eps} ||target - f_theta(x_t, t, y)||^2 (Algorithm 1; global RNG, checkpointed)."""
        x0 = batch["x"]
        B = x0.shape[0]
        t = torch.randint(self.schedule.T, (B,), device=x0.device)         # t ~ U{1..T}
        eps = torch.randn_like(x0)                                         # eps ~ N(0, I)
        x_t = self.schedule.q_sample(x0, t, eps)                           # x_t = sqrt(abar) x0 + sqrt(1-abar) eps
        y = batch.get("y") if self.num_classes else None
        if y is not None and self.p_uncond > 0:                            # CFG: drop the label w.p. p_uncond
            drop = torch.rand(B, device=x0.device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        out = self.net(x_t, t, y)
        target = self.schedule.target(self.prediction, x0, t, eps)
        assert out.shape == target.shape == x0.shape, (out.shape, target.shape, x0.shape)
        per_example = ((out.float() - target.float()) ** 2).flatten(1).mean(1)   # ||target - f||^2 / D
        return {"loss": per_example.mean()}

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t, y) whatever the parametrization (y None: the null label / unconditional)."""
        out = self.net(x_t, t, y if self.num_classes else None)
        return self.schedule.eps_from_output(self.prediction, x_t, t, out.to(x_t.dtype))

    def guided_eps(self, y: torch.Tensor | None = None, guidance: float = 0.0, classifier: nn.Module | None = None):
        """eps_fn(x_t, t) for the samplers: unconditional, conditional, classifier-free guided (weight w =
        ``guidance``), or classifier-guided (scale s = ``guidance``) with a noisy classifier(x_t, t) -> logits."""
        if classifier is not None:
            if y is None:
                raise ValueError("classifier guidance needs labels y")
            base = (lambda x, t: self.eps(x, t, y)) if self.num_classes else (lambda x, t: self.eps(x, t))

            def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:   # log p_phi(y | x_t)
                return F.log_softmax(classifier(x, t).float(), -1).gather(1, y[:, None]).squeeze(1)
            return classifier_guided_eps(base, log_prob, self.schedule, guidance)
        if y is None or not self.num_classes:
            return lambda x, t: self.eps(x, t)
        return classifier_free_eps(self.eps, y, guidance)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *, sampler: str = "ddpm", steps: int = 0,
               eta: float = 0.0, variance: str = "small", guidance: float = 0.0, classifier: nn.Module | None = None,
               generator: torch.Generator | None = None, record: Record | None = None,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
        """n samples x_0 [n, *shape] (labels y [n] for conditional / guided sampling)."""
        device = next(self.parameters()).device
        if x_T is None:
            dev = generator.device if generator is not None else device
            x_T = torch.randn((n, *self.shape), generator=generator, device=dev).to(device)   # x_T ~ N(0, I)
        s = make_sampler(sampler, self.schedule, steps=steps, eta=eta, variance=variance, clip=self.clip)
        return s.sample(self.guided_eps(y, guidance, classifier), x_T, generator, record)

    # -- the variational bound -------------------------------------------------------------------------
    def _p_mean_logvar(self, x_t: torch.Tensor, t: torch.Tensor, y, variance: str):
        eps = self.eps(x_t, t, y)
        x0 = self.schedule.x0_from_eps(x_t, t, eps)
        if self.clip is not None:
            x0 = x0.clamp(*self.clip)
        mean, _, small_logvar = self.schedule.q_posterior(x0, x_t, t)
        logvar = small_logvar if variance == "small" else _at(self.schedule.large_log_variance, t, x_t)
        return mean, logvar

    @torch.no_grad()
    def variational_bound(self, x0: torch.Tensor, y: torch.Tensor | None = None, *, variance: str = "small",
                          t_samples: int = 0, decoder: str = "discrete",
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-example terms of eq. 5 in nats: ``prior`` L_T, ``diffusion`` sum of L_{t-1} (t = 2..T; exact over
        every t when ``t_samples`` = 0, else the unbiased estimate (T - 1) mean_k L_{t_k - 1} over ``t_samples``
        uniform draws of t, drawn apart for every example so the per-example estimates are independent),
        ``decoder`` L_0 = -log p(x_0 | x_1), and ``total``. ``decoder`` "discrete" is eq. 13 for 8-bit data in
        [-1, 1]; "gaussian" is the density N(x_0; mu, sigma_1^2) for continuous data."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}")
        s, B, dev = self.schedule, x0.shape[0], x0.device

        def draw(shape):
            g_dev = generator.device if generator is not None else dev
            return torch.randn(shape, generator=generator, device=g_dev, dtype=x0.dtype).to(dev)

        def kl_term(t: torch.Tensor) -> torch.Tensor:   # L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), [B]
            x_t = s.q_sample(x0, t, draw(x0.shape))
            q_mean, _, q_logvar = s.q_posterior(x0, x_t, t)
            p_mean, p_logvar = self._p_mean_logvar(x_t, t, y, variance)
            return normal_kl(q_mean, q_logvar, p_mean, p_logvar).flatten(1).sum(1)

        T = s.T
        tT = torch.full((B,), T - 1, dtype=torch.long, device=dev)
        mean_T = _at(s.sqrt_alphas_cumprod, tT, x0) * x0
        logvar_T = _at((1 - s.alphas_cumprod).log(), tT, x0)
        prior = normal_kl(mean_T, logvar_T, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1)
        if T == 1:
            diffusion = torch.zeros(B, device=dev, dtype=x0.dtype)
        elif t_samples == 0:
            diffusion = sum(kl_term(torch.full((B,), t, dtype=torch.long, device=dev)) for t in range(1, T))
        else:   # t_k ~ U{2..T} for each example and draw k
            g_dev = generator.device if generator is not None else "cpu"
            ts = torch.randint(1, T, (t_samples, B), generator=generator, device=g_dev).to(dev)
            diffusion = (T - 1) * sum(kl_term(ts[k]) for k in range(t_samples)) / t_samples
        t0 = torch.zeros(B, dtype=torch.long, device=dev)
        x_1 = s.q_sample(x0, t0, draw(x0.shape))
        mean0, logvar0 = self._p_mean_logvar(x_1, t0, y, variance)
        if decoder == "discrete":
            log_p0 = discretized_gaussian_log_likelihood(x0, mean0, logvar0)
        elif decoder == "gaussian":
            log_p0 = -0.5 * (math.log(2 * math.pi) + logvar0 + (x0 - mean0) ** 2 * torch.exp(-logvar0))
        else:
            raise ValueError(f"decoder must be discrete or gaussian, got {decoder!r}")
        dec = -log_p0.flatten(1).sum(1)
        return {"prior": prior, "diffusion": diffusion, "decoder": dec, "total": prior + diffusion + dec}


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(m1, v1) || N(m2, v2)) elementwise = (log v2 - log v1 + (v1 + (m1 - m2)^2) / v2 - 1) / 2."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, computed on the side of 0 where it does not cancel."""
    flip = (a + b) > 0                      # both in the upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-12))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log p(x) elementwise for 8-bit data scaled to [-1, 1] (Ho et al. 2020, eq. 13): the Gaussian mass of the
    bin [x - 1/255, x + 1/255], with the edge bins extended to -inf (x = -1) and +inf (x = 1)."""
    inv_std = torch.exp(-0.5 * logvar)
    upper = (x - mean + 1 / 255) * inv_std
    lower = (x - mean - 1 / 255) * inv_std
    return torch.where(x < -0.999, torch.special.log_ndtr(upper),          # log Phi(upper): bin (-inf, -1 + 1/255]
                       torch.where(x > 0.999, torch.special.log_ndtr(-lower),   # log(1 - Phi(lower))
                                   _log_ndtr_diff(lower, upper)))
