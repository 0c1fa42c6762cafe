"""Generative adversarial networks: ``gan``, ``dcgan``, ``wgan``, ``wgan-gp`` (and the shared GAN loop).

Goodfellow et al. (2014): a generator G(z), z ~ p(z) = N(0, I), and a discriminator D(x) = sigmoid(l(x)) play

    min_G max_D V(D, G) = E_data[log D(x)] + E_z[log(1 - D(G(z)))]                       (eq. 1)

- For a fixed G the optimal discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x))     (Prop. 1)
  and V(D*, G) = -log 4 + 2 JSD(p_data || p_g), which is -log 4 exactly when p_g = p_data (Thm. 1).
- Algorithm 1: k discriminator steps (ascending V) per generator step (``--d-steps``).
- Generator losses: minimax, minimize log(1 - D(G(z))); non-saturating, minimize -log D(G(z)) (section 3),
  whose gradient does not vanish when D confidently rejects the samples (D(G(z)) ~ 0).
- DCGAN (Radford et al. 2016): strided convolutions / transposed convolutions, batch norm except the
  generator's output layer and the discriminator's input layer, ReLU in G, leaky ReLU (0.2) in D,
  Adam(lr 2e-4, betas (0.5, 0.999)).
- WGAN (Arjovsky et al. 2017, Algorithm 1): a critic f maximizes E_data f(x) - E_z f(G(z)) under a Lipschitz
  constraint enforced by clipping its weights to [-c, c] after every step; n_critic = 5, RMSProp lr 5e-5.
- WGAN-GP (Gulrajani et al. 2017, Algorithm 1): the constraint is a penalty
  lambda E[(||grad f(x_hat)||_2 - 1)^2] at x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1]; no batch norm in the
  critic; Adam(1e-4, (0.0, 0.9)), n_critic = 5, lambda = 10.

The conditional variants (cGAN, ACGAN, InfoGAN) and the unrolled GAN are configured in
:mod:`mlcanon.generative.gan_variants`; their extra loss terms live in :class:`GAN` below so the loop is one.
The loop owns a :class:`~mlcanon.training.TrainState` with the two networks and their two optimizers;
noise comes from the global torch RNG (checkpointed) and batch ``i`` is a pure function of ``i``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mlcanon.config import CommonConfig, option
from mlcanon.data.images import save_image_grid
from mlcanon.devices import autocast
from mlcanon.errors import UserError
from mlcanon.registry import EvalOptions, SampleOptions, algorithm_of_run, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import Loop, TensorBatches, TrainState, make_optimizer

LOSSES = ("minimax", "non-saturating", "wasserstein")


# ------------------------------------------------------------------------------------------- losses
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-V(D, G) = -E log D(x) - E log(1 - D(G(z))) with D = sigmoid(l): softplus(-l_real) + softplus(l_fake)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """minimax: E log(1 - D(G(z))) = -E softplus(l); non-saturating: -E log D(G(z)) = E softplus(-l);
    wasserstein: -E f(G(z))."""
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    if kind == "non-saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "wasserstein":
        return -fake_logits.mean()
    raise ValueError(f"unknown generator loss {kind!r}; use one of {LOSSES}")


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic: minimize E f(G(z)) - E f(x) (the negative of the Wasserstein estimate)."""
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """E[(||grad_x f(x_hat)||_2 - 1)^2], x_hat = eps x + (1 - eps) x~ (Gulrajani et al. 2017, Alg. 1 lines 6-8)."""
    B = real.shape[0]
    eps = torch.rand((B,) + (1,) * (real.dim() - 1), generator=generator).to(real)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)
    assert norm.shape == (B,)
    return ((norm - 1) ** 2).mean()


def mode_coverage(samples: torch.Tensor, centers: torch.Tensor, sigma: float, *, min_fraction: float = 0.01
                  ) -> dict[str, float]:
    """Modes covered and the fraction of high-quality samples (within 3 sigma of their nearest mode).

    A mode counts as covered when at least ``min_fraction`` of all samples are high-quality samples of it
    (as Srivastava et al. 2017 / Metz et al. 2017 count modes on the ring of Gaussians)."""
    d = torch.cdist(samples.double(), centers.double())          # [N, M]
    dist, nearest = d.min(1)
    hq = dist <= 3 * sigma
    counts = torch.bincount(nearest[hq], minlength=len(centers))
    return {"modes_covered": int((counts >= max(1, min_fraction * len(samples))).sum()),
            "high_quality_fraction": float(hq.double().mean())}


# --------------------------------------------------------------------------------------------- nets
class Generator(nn.Module):
    """z (+ one-hot condition) -> x. ``arch="mlp"``: two hidden ReLU layers; ``arch="conv"``: DCGAN
    (linear to 2c x H/4 x W/4, two stride-2 transposed convs, batch norm except at the output)."""

    def __init__(self, latent: int, out_shape: tuple[int, ...], *, arch: str, hidden: int, channels: int,
                 n_cond: int = 0, bounded: bool = True, mlp_norm: bool = False):
        super().__init__()
        self.out_shape, self.n_cond = tuple(out_shape), n_cond
        out_act = nn.Sigmoid() if bounded else nn.Identity()        # images in [0, 1]; toy points unbounded
        if arch == "mlp":   # mlp_norm: batch norm after each hidden linear layer (Radford et al. 2016, sec. 3)
            def block(n_in: int) -> list[nn.Module]:   # (no Identity placeholders: the weight names stay)
                return [nn.Linear(n_in, hidden), *([nn.BatchNorm1d(hidden)] if mlp_norm else []), nn.ReLU()]
            self.net = nn.Sequential(*block(latent + n_cond), *block(hidden),
                                     nn.Linear(hidden, math.prod(out_shape)), out_act)
        else:
            C, H, W = out_shape
            c = channels
            self.net = nn.Sequential(
                nn.Linear(latent + n_cond, 2 * c * (H // 4) * (W // 4)), nn.BatchNorm1d(2 * c * (H // 4) * (W // 4)),
                nn.ReLU(), nn.Unflatten(1, (2 * c, H // 4, W // 4)),
                nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),      # H/4 -> H/2
                nn.ConvTranspose2d(c, C, 4, 2, 1), out_act)                               # H/2 -> H, no BN

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_cond:
            z = torch.cat([z, c.to(z.dtype)], 1)
        return self.net(z).reshape(-1, *self.out_shape)


class Discriminator(nn.Module):
    """x (+ one-hot condition) -> features -> logit [B]; optional heads on the features: ``aux`` (ACGAN class
    logits) and ``q`` (InfoGAN code logits). ``arch="conv"``: two stride-2 convs with leaky ReLU, batch norm on
    the second only (none at all with ``norm=False``, as WGAN-GP requires)."""

    def __init__(self, in_shape: tuple[int, ...], *, arch: str, hidden: int, channels: int, n_cond: int = 0,
                 n_aux: int = 0, n_q: int = 0, norm: bool = True):
        super().__init__()
        self.n_cond = n_cond
        if arch == "mlp":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape) + n_cond, hidden), nn.LeakyReLU(0.2),
                                      nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
            feat = hidden
        else:
            C, H, W = in_shape
            c = channels
            self.body = nn.Sequential(
                nn.Conv2d(C + n_cond, c, 4, 2, 1), nn.LeakyReLU(0.2),                    # no BN on the input layer
                nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c) if norm else nn.Identity(), nn.LeakyReLU(0.2),
                nn.Flatten())
            feat = 2 * c * (H // 4) * (W // 4)
        self.arch = arch
        self.head = nn.Linear(feat, 1)
        self.aux = nn.Linear(feat, n_aux) if n_aux else None
        self.q = nn.Linear(feat, n_q) if n_q else None

    def features(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_cond:
            c = c.to(x.dtype)
            if self.arch == "mlp":
                x = torch.cat([x.flatten(1), c], 1)
            else:   # the one-hot label as constant extra input planes (cGAN, Mirza & Osindero 2014)
                x = torch.cat([x, c[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1)
        return self.body(x)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, c)).squeeze(1)


# -------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class GANConfig(CommonConfig):
    """Train a GAN (Goodfellow et al. 2014, Algorithm 1); every field is a CLI flag (``--d-steps 5``)."""

    dataset: str = option("toy2d:8gaussians", "data set: toy2d:<name>, mnist, fashion-mnist, digits")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    arch: str = option("mlp", "networks: mlp, or conv (DCGAN; images with sides divisible by 4)",
                       choices=("mlp", "conv"))
    loss: str = option("non-saturating", "generator loss: minimax log(1-D(G(z))), non-saturating -log D(G(z)), "
                                         "or wasserstein (critic)", choices=LOSSES)
    latent: int = option(16, "dimensions of the noise z ~ N(0, I)", min=1)
    hidden: int = option(256, "hidden units of the MLP layers", min=1)
    channels: int = option(64, "channels of the first conv layer (conv arch)", min=1)
    max_steps: int = option(5000, "generator steps (each after --d-steps discriminator steps)", min=1)
    batch_size: int = option(256, "mini-batch size of real and of generated samples", min=1)
    d_steps: int = option(1, "k: discriminator (critic) steps per generator step (Algorithm 1)", min=1)
    optimizer: str = option("adam", "optimizer of both networks", choices=("adam", "rmsprop", "sgd"))
    lr: float = option(2e-4, "learning rate of the generator", min=0.0)
    d_lr: float = option(0.0, "learning rate of the discriminator (0: same as --lr)", min=0.0)
    adam_betas: tuple[float, ...] = option((0.5, 0.999), "Adam (beta1, beta2); DCGAN uses 0.5,0.999")
    clip: float = option(0.0, "WGAN: clip the critic's weights to [-clip, clip] after each step (0: off)", min=0.0)
    gp_weight: float = option(0.0, "WGAN-GP: weight lambda of the gradient penalty (0: off)", min=0.0)
    train_subset: int = option(0, "use only the first N training examples (0: all)", min=0)
    toy_noise: float = option(0.0, "toy2d: std of the data's Gaussian noise (0: the set's default, 8gaussians "
                                   "0.354; Metz et al.'s ring of 8 uses 0.02)", min=0.0)
    # conditional / information / unrolled variants (set by their algorithms in gan_variants)
    condition: str = option("none", "none; cgan (G and D see the label); acgan (G sees it, D predicts it); "
                                    "infogan (G gets a categorical code, D's Q head recovers it)",
                            choices=("none", "cgan", "acgan", "infogan"))
    info_weight: float = option(1.0, "InfoGAN / ACGAN: weight of the code (class) cross-entropy term", min=0.0)
    info_codes: int = option(10, "InfoGAN: categories of the latent code c", min=2)
    unroll: int = option(0, "unrolled GAN: look-ahead discriminator steps the generator differentiates through",
                         min=0)
    unroll_lr: float = option(0.0, "unrolled GAN: SGD step size of the look-ahead (0: --d-lr)", min=0.0)
    g_norm: str = option("auto", "batch norm in the MLP generator's hidden layers: on, off, or auto (on for "
                                 "images, where the plain MLP generator collapses to one sample; off for toy2d)",
                         choices=("auto", "on", "off"))

    def check(self) -> None:
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise UserError("--adam-betas: give two numbers in [0, 1), e.g. --adam-betas 0.5,0.999")
        if self.compile:
            raise UserError("--compile is not supported by the GAN loop (two networks, double backward)")
        if self.loss == "wasserstein" and self.condition in ("acgan", "infogan"):
            raise UserError(f"--condition {self.condition} needs a probabilistic discriminator, not --loss wasserstein")
        if self.unroll and self.condition in ("acgan", "infogan"):
            raise UserError("--unroll works with --condition none or cgan (the heads are not unrolled)")
        if self.loss != "wasserstein" and (self.clip or self.gp_weight):
            raise UserError("--clip and --gp-weight belong to the Wasserstein critic: add --loss wasserstein")
        if self.toy_noise and not self.dataset.startswith("toy2d:"):
            raise UserError(f"--toy-noise applies to toy2d:* data sets, not {self.dataset}; drop it")
        if self.toy_noise and self.dataset == "toy2d:checkerboard":
            raise UserError("toy2d:checkerboard is exactly uniform and has no noise: drop --toy-noise")

    @property
    def discriminator_lr(self) -> float:
        return self.d_lr or self.lr


@dataclasses.dataclass
class DCGANConfig(GANConfig):
    """DCGAN (Radford et al. 2016): convolutional G and D with batch norm, Adam(2e-4, (0.5, 0.999)) on MNIST."""

    dataset: str = option("mnist", "data set: mnist, fashion-mnist, digits")
    arch: str = option("conv", "networks: conv (DCGAN) or mlp", choices=("mlp", "conv"))
    latent: int = option(64, "dimensions of the noise z ~ N(0, I)", min=1)
    batch_size: int = option(128, "mini-batch size of real and of generated samples", min=1)


@dataclasses.dataclass
class WGANConfig(DCGANConfig):
    """WGAN with weight clipping (Arjovsky et al. 2017, Algorithm 1): RMSProp 5e-5, n_critic 5, c = 0.01."""

    loss: str = option("wasserstein", "generator loss (wasserstein: critic)", choices=LOSSES)
    d_steps: int = option(5, "n_critic: critic steps per generator step", min=1)
    optimizer: str = option("rmsprop", "optimizer of both networks", choices=("adam", "rmsprop", "sgd"))
    lr: float = option(5e-5, "learning rate", min=0.0)
    clip: float = option(0.01, "clip the critic's weights to [-clip, clip] after each step", min=0.0)


@dataclasses.dataclass
class WGANGPConfig(DCGANConfig):
    """WGAN-GP (Gulrajani et al. 2017, Algorithm 1): gradient penalty 10, n_critic 5, Adam(1e-4, (0, 0.9))."""

    loss: str = option("wasserstein", "generator loss (wasserstein: critic)", choices=LOSSES)
    d_steps: int = option(5, "n_critic: critic steps per generator step", min=1)
    lr: float = option(1e-4, "learning rate", min=0.0)
    adam_betas: tuple[float, ...] = option((0.0, 0.9), "Adam (beta1, beta2)")
    gp_weight: float = option(10.0, "weight lambda of the gradient penalty", min=0.0)


# --------------------------------------------------------------------------------------------- model
class GAN(nn.Module):
    """The generator and discriminator of one GAN with its two losses (:meth:`d_loss`, :meth:`g_loss`).

    ``sample(n, label=, code=)`` draws G(z) with z ~ N(0, I) (cGAN/ACGAN: a class label; InfoGAN: a code)."""

    def __init__(self, config: GANConfig, data_shape: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        self.config = config
        self.data_shape = tuple(data_shape)
        image = len(data_shape) == 3
        if config.arch == "conv" and not (image and data_shape[1] % 4 == 0 and data_shape[2] % 4 == 0):
            raise UserError(f"--arch conv needs images with sides divisible by 4, got shape {data_shape}")
        cond = config.condition
        self.num_classes = num_classes if cond in ("cgan", "acgan") else (config.info_codes if cond == "infogan" else 0)
        kw = {"arch": config.arch, "hidden": config.hidden, "channels": config.channels}
        mlp_norm = config.g_norm == "on" or (config.g_norm == "auto" and image)
        self.G = Generator(config.latent, data_shape, n_cond=self.num_classes, bounded=image, mlp_norm=mlp_norm,
                           **kw)
        self.D = Discriminator(data_shape, n_cond=num_classes if cond == "cgan" else 0,
                               n_aux=num_classes if cond == "acgan" else 0,
                               n_q=config.info_codes if cond == "infogan" else 0,
                               norm=config.gp_weight == 0, **kw)
        self.latent = config.latent

    # -- pieces ----------------------------------------------------------------------------------
    def onehot(self, y: torch.Tensor | None) -> torch.Tensor | None:
        return None if y is None or not self.num_classes else F.one_hot(y.long(), self.num_classes).float()

    def noise(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z ~ N(0, I) and, for conditional / InfoGAN models, labels or codes c ~ Uniform{0..K-1}."""
        z = torch.randn(n, self.latent, device=device)
        c = torch.randint(self.num_classes, (n,), device=device) if self.num_classes else None
        return z, c

    def d_cond(self, y: torch.Tensor | None) -> torch.Tensor | None:
        return self.onehot(y) if self.config.condition == "cgan" else None

    # -- losses ----------------------------------------------------------------------------------
    def d_loss(self, real: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """One discriminator objective on a real batch (and its labels) against fresh generated samples."""
        cfg = self.config
        B = real.shape[0]
        z, c = self.noise(B, real.device)
        if cfg.condition == "cgan":
            c = y[torch.randint(B, (B,), device=real.device)]      # fake labels drawn from the label distribution
        with torch.no_grad():
            fake = self.G(z, self.onehot(c))
        h_real, h_fake = self.D.features(real, self.d_cond(y)), self.D.features(fake, self.d_cond(c))
        l_real, l_fake = self.D.head(h_real).squeeze(1), self.D.head(h_fake).squeeze(1)
        assert l_real.shape == (B,) and l_fake.shape == (B,)
        out = {}
        if cfg.loss == "wasserstein":
            loss = critic_loss(l_real, l_fake)                   # -(E f(x) - E f(G(z)))
            out["wasserstein"] = -loss.detach()
            if cfg.gp_weight:
                gp = gradient_penalty(lambda x: self.D(x, self.d_cond(y)), real, fake)
                loss = loss + cfg.gp_weight * gp                 # + lambda (||grad f(x_hat)|| - 1)^2
                out["gp"] = gp.detach()
        else:
            loss = discriminator_loss(l_real, l_fake)            # -[E log D(x) + E log(1 - D(G(z)))]
            out["d_real"] = torch.sigmoid(l_real).mean().detach()
            out["d_fake"] = torch.sigmoid(l_fake).mean().detach()
        if cfg.condition == "acgan":   # L_C = E log P(C=c|x_real) + E log P(C=c|x_fake) (Odena et al. 2017)
            aux = F.cross_entropy(self.D.aux(h_real), y) + F.cross_entropy(self.D.aux(h_fake), c)
            loss = loss + cfg.info_weight * aux
            out["class_ce"] = aux.detach()
        if cfg.condition == "infogan":  # L_I = E log Q(c | G(z, c)) (Chen et al. 2016, eq. 5); Q shares D's body
            mi = F.cross_entropy(self.D.q(h_fake), c)
            loss = loss + cfg.info_weight * mi
            out["info_ce"] = mi.detach()
        out["d_loss"] = loss
        return out

    def g_loss(self, n: int, device, y: torch.Tensor | None = None, d_params: dict | None = None) -> dict:
        """The generator objective on n fresh samples; ``d_params`` evaluates D with other (look-ahead) weights."""
        cfg = self.config
        z, c = self.noise(n, device)
        if cfg.condition == "cgan" and y is not None:
            c = y[torch.randint(len(y), (n,), device=device)]
        fake = self.G(z, self.onehot(c))
        if d_params is None:
            h = self.D.features(fake, self.d_cond(c))
            logits = self.D.head(h).squeeze(1)
        else:   # unrolled GAN: D with look-ahead weights theta_D^K, themselves functions of G (Metz et al., eq. 7)
            h = None
            logits = functional_call(self.D, d_params, (fake, self.d_cond(c)))
        loss = generator_loss(logits, cfg.loss)
        out = {}
        if cfg.condition == "acgan":
            ce = F.cross_entropy(self.D.aux(h), c)
            loss = loss + cfg.info_weight * ce
        if cfg.condition == "infogan":
            ce = F.cross_entropy(self.D.q(h), c)             # G and Q both minimize lambda L_I
            loss = loss + cfg.info_weight * ce
        out["g_loss"] = loss
        return out

    @torch.no_grad()
    def sample(self, n: int, label: int | torch.Tensor | None = None, code: int | torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples G(z, c), z ~ N(0, I) (eval mode); ``label`` (cGAN/ACGAN) or ``code`` (InfoGAN) fixes c,
        which is otherwise uniform."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        z = torch.randn(n, self.latent, generator=generator).to(dev)
        c = label if label is not None else code
        if self.num_classes:
            if c is None:
                c = torch.randint(self.num_classes, (n,), generator=generator)
            elif not isinstance(c, torch.Tensor):
                c = torch.full((n,), int(c))
            c = c.to(dev)
        x = self.G(z, self.onehot(c))
        self.train(was)
        return x


# ---------------------------------------------------------------------------------------------- data
def load_data(config: GANConfig, split: str = "train") -> tuple[torch.Tensor, torch.Tensor | None]:
    from mlcanon.data import load
    if config.dataset.startswith("toy2d:"):
        ds = load(config.dataset, split, noise=config.toy_noise or None)      # None: the set's default
    else:
        ds = load(config.dataset, split, data_dir=config.data_dir)
    x, y = ds.x, getattr(ds, "targets", None)
    if config.condition in ("cgan", "acgan") and y is None:
        raise UserError(f"--dataset {config.dataset} has no labels; {config.condition} needs a labelled data set")
    if split == "train" and config.train_subset:
        x, y = x[:config.train_subset], None if y is None else y[:config.train_subset]
    return x, y


# ------------------------------------------------------------------------------------ unrolled GAN
def unrolled_d_params(model: GAN, config: GANConfig, real: torch.Tensor, y: torch.Tensor | None) -> dict:
    """theta_D^K after K look-ahead SGD steps on the discriminator loss, kept differentiable w.r.t. G.

    Metz et al. (2017), eq. 5-7: theta^{k+1} = theta^k - eta d L_D(theta^k, G) / d theta^k with theta^0 the
    current D; the generator then minimizes its loss against D(.; theta^K) and its gradient flows through the
    K steps (create_graph=True; torch.func.functional_call evaluates D with the stepped weights). The look-ahead
    uses plain SGD steps (the paper unrolls the optimizer it trains D with) and the same real batch each step.
    """
    params = dict(model.D.named_parameters())
    lr = config.unroll_lr or config.discriminator_lr
    B = real.shape[0]
    for _ in range(config.unroll):
        z, c = model.noise(B, real.device)
        if config.condition == "cgan":
            c = y[torch.randint(B, (B,), device=real.device)]
        fake = model.G(z, model.onehot(c))                        # not detached: theta^K depends on G
        l_real = functional_call(model.D, params, (real, model.d_cond(y)))
        l_fake = functional_call(model.D, params, (fake, model.d_cond(c)))
        loss = critic_loss(l_real, l_fake) if config.loss == "wasserstein" else discriminator_loss(l_real, l_fake)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}   # theta <- theta - eta grad L_D
    return params


# ------------------------------------------------------------------------------------ one alternation
def train_step(model: GAN, batches: list[dict], opt_d: torch.optim.Optimizer, opt_g: torch.optim.Optimizer, *,
               precision: str = "fp32") -> dict[str, float]:
    """One iteration of Algorithm 1: a discriminator step on each of the k real ``batches`` (dicts with "x" and,
    for labelled models, "y"), then one generator step; returns the logged means."""
    config = model.config
    device = batches[0]["x"].device
    k = len(batches)
    logged: dict[str, float] = {}
    for batch in batches:                                           # k discriminator steps
        with autocast(device, precision):
            out = model.d_loss(batch["x"], batch.get("y"))
        opt_d.zero_grad(set_to_none=True)
        out["d_loss"].float().backward()
        opt_d.step()                                                # ascend V (descend -V)
        if config.clip:                                             # WGAN: w <- clip(w, -c, c)
            with torch.no_grad():
                for p in model.D.parameters():
                    p.clamp_(-config.clip, config.clip)
        for key, v in out.items():
            logged[key] = logged.get(key, 0.0) + float(v.detach()) / k
    last = batches[-1]
    look_ahead = unrolled_d_params(model, config, last["x"], last.get("y")) if config.unroll else None
    with autocast(device, precision):
        gout = model.g_loss(len(last["x"]), device, last.get("y"), d_params=look_ahead)
    opt_g.zero_grad(set_to_none=True)
    gout["g_loss"].float().backward()
    opt_g.step()                       # descend the generator loss; D's gradients from this pass are dropped
    opt_d.zero_grad(set_to_none=True)  # (ACGAN's / InfoGAN's heads learn the class / code term in d_loss)
    logged["g_loss"] = float(gout["g_loss"].detach())
    return logged


# ---------------------------------------------------------------------------------------------- loop
def train_gan(name: str, config: GANConfig, run: Run | None = None) -> dict:
    """Algorithm 1 of Goodfellow et al.: per generator step, k discriminator steps on fresh real and fake
    batches, then one generator step (optionally against look-ahead discriminator weights)."""
    run = Run.start(name, config, run)
    x, y = load_data(config)
    model = GAN(config, tuple(x.shape[1:])).to(run.device)
    opt = {"betas": config.adam_betas}
    opt_g = make_optimizer(config.optimizer, model.G.parameters(), config.lr, **opt)
    opt_d = make_optimizer(config.optimizer, model.D.parameters(), config.discriminator_lr, **opt)
    state = TrainState(generator=model.G, discriminator=model.D, opt_g=opt_g, opt_d=opt_d)
    state.restore(run)
    tensors = {"x": x} if y is None else {"x": x, "y": y}
    data = TensorBatches(tensors, config.batch_size, seed=config.seed)
    if run.device.type == "cuda":
        data.to(run.device)
    loop = Loop(run, state, total=config.max_steps, log_every=config.log_every,
                checkpoint_every=config.checkpoint_every, desc=name, progress=config.progress,
                postfix_keys=("train/d_loss", "train/g_loss"))
    k = config.d_steps
    model.train()
    while not loop.finished:
        step = state.step
        batches = [{key: v.to(run.device) for key, v in data.get(step * k + i)[0].items()} for i in range(k)]
        logged = train_step(model, batches, opt_d, opt_g, precision=config.precision)
        loop.advance(1, {f"train/{key}": v for key, v in logged.items()})
    loop.close()
    out = {"run_dir": str(run.dir), "step": state.step}
    if run.dist.is_main:
        state.save(run, tag="best")      # no validation: the last generator is the one evaluated
        write_figures(model.cpu(), config, x, run.dir, config.seed)
        run.finish(out, step=state.step)
    out["model"] = model
    return out


# ------------------------------------------------------------------------------------------- figures
def save_scatter(samples: torch.Tensor, real: torch.Tensor, path: Path, title: str = "") -> Path:
    """Generated points over the data (2-D)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(real[:, 0], real[:, 1], s=2, c="0.75", label="data")
    ax.scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=2, c="C3", label="generated")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title or "samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_figures(model: GAN, config: GANConfig, x: torch.Tensor, run_dir: Path, seed: int, n: int = 64) -> Path:
    g = torch.Generator().manual_seed(seed)
    path = run_dir / "samples.png"
    if len(model.data_shape) == 1:
        return save_scatter(model.sample(max(n, 1000), generator=g), x[:5000], path, f"{config.loss} GAN")
    if model.num_classes:   # row c: 10 samples of class / code c
        lab = torch.arange(model.num_classes).repeat_interleave(10)
        return save_image_grid(model.sample(len(lab), label=lab, generator=g), path, nrow=10)
    return save_image_grid(model.sample(n, generator=g), path)


# -------------------------------------------------------------------------------------- eval / sample
GAN_NAMES: dict[str, type] = {}


def _config(run_dir) -> tuple[str, GANConfig]:
    algo, config = algorithm_of_run(run_dir)
    if algo.name not in GAN_NAMES:
        raise UserError(f"{run_dir} is a {algo.name} run, not a GAN run")
    return algo.name, config


def load_model(run_dir: str | Path, config: GANConfig | None = None, tag: str = "best") -> GAN:
    config = config or _config(run_dir)[1]
    x, _ = load_data(config, "test")
    model = GAN(config, tuple(x.shape[1:]))
    load_weights(model.D, run_dir, tag, key="discriminator")
    load_weights(model.G, run_dir, tag, key="generator")
    return model.eval()


@dataclasses.dataclass
class GANEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a GAN run."""

    num_samples: int = option(10000, "generated samples scored (toy2d: 2500 is the usual count)", min=1)
    min_mode_fraction: float = option(0.01, "toy2d:8gaussians: a mode is covered when at least this fraction of "
                                            "the samples are high-quality samples of it", min=0.0, max=1.0)


def eval_samples(model: GAN, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The n samples `mlcanon eval --seed S` scores (chunks of 1,000 from one generator seeded S; conditional
    models cycle through the classes), and their labels (None for unconditional models)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    s = torch.cat([model.sample(min(1000, n - i),
                                label=None if labels is None else labels[i:i + 1000], generator=g)
                   for i in range(0, n, 1000)])
    return s, labels


def evaluate(run_dir: str | Path, options: GANEvalOptions | None = None) -> dict:
    """toy2d: modes covered and high-quality fraction (8gaussians), mean log p_data of the samples (closed-form
    sets); 28x28 images: MNIST-FID, precision/recall (fixed MNIST features), label accuracy of conditional
    models; other images: precision/recall on pixels."""
    options = options or GANEvalOptions()
    _, config = _config(run_dir)
    model = load_model(run_dir, config)
    n = options.num_samples
    out: dict[str, float] = {"n": n}
    s, labels = eval_samples(model, n, options.seed)
    if config.dataset.startswith("toy2d:"):
        from mlcanon.data import toy2d
        toy = config.dataset.split(":", 1)[1]
        if toy == "8gaussians":
            sigma = config.toy_noise or toy2d.DEFAULT_NOISE[toy]        # "high quality": within 3 sigma
            out.update({f"eval/{k}": v for k, v in mode_coverage(s, toy2d._gauss_centers(), sigma,
                                                                 min_fraction=options.min_mode_fraction).items()})
        if toy in toy2d.CLOSED_FORM:
            lp = toy2d.log_prob(toy, s.double(), config.toy_noise or None)
            out["eval/sample_log_density"] = float(lp.clamp(min=-1e3).mean())
        return out
    if tuple(model.data_shape) == (1, 28, 28):
        from mlcanon.metrics import mnist_features as mf  # lazy: loads the fixed feature network
        ref = "test" if config.dataset == "mnist" else load_data(config, "test")[0]
        out["eval/fid"] = float(mf.mnist_fid(s, ref, data_dir=config.data_dir))
        p, r = mf.mnist_precision_recall(s, ref, data_dir=config.data_dir)
        out["eval/precision"], out["eval/recall"] = float(p), float(r)
        if config.condition in ("cgan", "acgan") and config.dataset == "mnist":
            out["eval/label_accuracy"] = float(mf.label_accuracy(s, labels))
        out["feature_net"] = mf.FEATURE_NET_ID
    else:
        from mlcanon.metrics.sample_quality import precision_recall
        real, _ = load_data(config, "test")
        p, r = precision_recall(real.flatten(1), s.flatten(1)[:len(real)])
        out["eval/pixel_precision"], out["eval/pixel_recall"] = float(p), float(r)
    return out


@dataclasses.dataclass
class GANSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a GAN run."""

    label: int = option(-1, "cGAN/ACGAN: the class to draw; InfoGAN: the code (-1: rows of every class)", min=-1)


def sample(run_dir: str | Path, n: int = 64, out: str | Path | None = None,
           options: GANSampleOptions | None = None) -> Path:
    """Images as a grid (conditional: rows of classes, or --label), 2-D points as a scatter over the data."""
    options = options or GANSampleOptions()
    name, config = _config(run_dir)
    model = load_model(run_dir, config)
    g = torch.Generator().manual_seed(options.seed)
    out = Path(out) if out else Path(run_dir) / "samples.png"
    if len(model.data_shape) == 1:
        x, _ = load_data(config, "test")
        return save_scatter(model.sample(n, generator=g), x[:5000], out, name)
    if model.num_classes and options.label < 0:
        per = max(1, math.ceil(n / model.num_classes))
        lab = torch.arange(model.num_classes).repeat_interleave(per)
        return save_image_grid(model.sample(len(lab), label=lab, generator=g), out, nrow=per)
    if options.label >= 0 and not model.num_classes:
        raise UserError("--label needs a conditional model (cgan, acgan, infogan)")
    return save_image_grid(model.sample(n, label=options.label if model.num_classes else None, generator=g), out)


def register_gan(name: str, config_cls: type, description: str, tiny: dict) -> None:
    """Register one GAN variant: its config class, and the shared loop, eval and sample."""
    def train(config: GANConfig, run: Run | None = None) -> dict:
        return train_gan(name, config, run)
    train.__name__ = train.__qualname__ = "train_" + name.replace("-", "_")
    train.__doc__ = f"Train {name} (see {config_cls.__module__}); returns the result dict."
    GAN_NAMES[name] = config_cls
    register(name, family="generative", config=config_cls, description=description, evaluate=evaluate,
             sample=sample, load=load_model, eval_options=GANEvalOptions, sample_options=GANSampleOptions,
             tiny=tiny)(train)


TINY_TOY = {"hidden": 16, "latent": 4, "max_steps": 8, "batch_size": 32, "train_subset": 512, "checkpoint_every": 4}
TINY_IMAGE = {"dataset": "digits", "hidden": 16, "channels": 4, "latent": 4, "max_steps": 6, "batch_size": 16,
              "train_subset": 256, "checkpoint_every": 3}

register_gan("gan", GANConfig, "GAN (Goodfellow et al. 2014, Algorithm 1): k D-steps per G-step, minimax or "
             "non-saturating loss; MLP on toy2d", TINY_TOY)
register_gan("dcgan", DCGANConfig, "DCGAN: convolutional G and D with batch norm, Adam betas (0.5, 0.999)",
             TINY_IMAGE)
register_gan("wgan", WGANConfig, "WGAN: Wasserstein critic with weight clipping, RMSProp, n_critic 5",
             {**TINY_IMAGE, "d_steps": 2})
register_gan("wgan-gp", WGANGPConfig, "WGAN-GP: Wasserstein critic with a gradient penalty, n_critic 5",
             {**TINY_IMAGE, "d_steps": 2})
