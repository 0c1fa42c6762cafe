"""GAN variants on the shared loop of :mod:`mlcanon.generative.gan`: ``cgan``, ``acgan``, ``infogan``,
``unrolled-gan``. Their loss terms are in :class:`mlcanon.generative.gan.GAN` (``d_loss`` / ``g_loss``) and
the look-ahead in :func:`mlcanon.generative.gan.unrolled_d_params`; here are their configurations.

- cGAN (Mirza & Osindero 2014): G(z, y) and D(x, y), the label y a one-hot input to both;
  min_G max_D E log D(x|y) + E log(1 - D(G(z|y)|y))                                    (eq. 2)
- ACGAN (Odena et al. 2017): G(z, c); D outputs P(real | x) and P(C | x). D maximizes L_S + L_C, G maximizes
  L_C - L_S, with L_S = E log P(S=real | x_real) + E log P(S=fake | x_fake) and
  L_C = E log P(C=c | x_real) + E log P(C=c | x_fake)                                  (eq. 2-3)
- InfoGAN (Chen et al. 2016): G(z, c) with a categorical code c ~ Cat(K); a head Q(c | x) on D's features;
  min_{G,Q} max_D V(D, G) - lambda L_I(G, Q), L_I = E_{c, x~G(z,c)} log Q(c | x) + H(c) (eq. 5-6); the
  entropy H(c) is a constant. Samples with the same c share a discovered factor (digit class, unsupervised).
- Unrolled GAN (Metz et al. 2017): G's loss is f_K(theta_G, theta_D) = f(theta_G, theta_D^K(theta_G,
  theta_D)) with K look-ahead discriminator steps differentiated through (eq. 5-7); D itself takes its usual
  step. It spreads G over the modes that a plain GAN collapses on (toy2d:8gaussians).
"""

from __future__ import annotations

import dataclasses

from mlcanon.config import option
from mlcanon.generative.gan import LOSSES, TINY_IMAGE, TINY_TOY, DCGANConfig, GANConfig, register_gan


@dataclasses.dataclass
class CGANConfig(DCGANConfig):
    """Conditional GAN (Mirza & Osindero 2014): G and D both see the one-hot label."""

    arch: str = option("mlp", "networks: mlp (as the paper) or conv", choices=("mlp", "conv"))
    condition: str = option("cgan", "cgan: G(z, y) and D(x, y)", choices=("none", "cgan", "acgan", "infogan"))


@dataclasses.dataclass
class ACGANConfig(DCGANConfig):
    """Auxiliary-classifier GAN (Odena et al. 2017): G(z, c); D predicts real/fake and the class."""

    condition: str = option("acgan", "acgan: G(z, c), D's auxiliary head predicts c",
                            choices=("none", "cgan", "acgan", "infogan"))


@dataclasses.dataclass
class InfoGANConfig(DCGANConfig):
    """InfoGAN (Chen et al. 2016): a categorical latent code whose mutual information with G(z, c) is maximized."""

    condition: str = option("infogan", "infogan: G(z, c), c ~ Cat(--info-codes), Q head on D",
                            choices=("none", "cgan", "acgan", "infogan"))


@dataclasses.dataclass
class UnrolledGANConfig(GANConfig):
    """Unrolled GAN (Metz et al. 2017): the generator steps against K look-ahead discriminator steps."""

    unroll: int = option(5, "K: look-ahead discriminator steps the generator differentiates through", min=0)
    unroll_lr: float = option(0.0, "SGD step size of the look-ahead (0: --d-lr, else --lr)", min=0.0)
    loss: str = option("non-saturating", "generator loss", choices=LOSSES)


register_gan("cgan", CGANConfig, "conditional GAN: G(z, y), D(x, y); sample a chosen digit", TINY_IMAGE)
register_gan("acgan", ACGANConfig, "ACGAN: D also classifies; G(z, c) draws class c", TINY_IMAGE)
register_gan("infogan", InfoGANConfig, "InfoGAN: categorical code c, mutual-information head Q(c|x)", TINY_IMAGE)
register_gan("unrolled-gan", UnrolledGANConfig, "unrolled GAN: G against K look-ahead D steps (torch.func), "
             "against mode collapse on toy2d", {**TINY_TOY, "unroll": 2})
