"""Generalized state-dependent exploration, gSDE (Raffin, Kober & Stulp 2022, "Smooth exploration for robotic
reinforcement learning", section 3; as stable-baselines3's StateDependentNoiseDistribution with full_std=True,
use_expln=False, learn_features=False).

Instead of fresh Gaussian noise at every step, the exploration noise is a linear function of the policy's features:

    a = mu(s) + eps(s),   eps(s) = phi(s)^T theta_eps,   theta_eps ~ N(0, sigma^2)   [E]

with phi(s) [latent_dim] the last hidden layer of the policy network (detached: the features are not trained
through the noise), theta_eps [latent_dim, action_dim] an exploration matrix with independent entries
theta_ij ~ N(0, sigma_ij^2), and sigma = exp(log_std) a learned [latent_dim, action_dim] matrix. theta_eps is held
fixed for several steps (``--sde-sample-freq``) and resampled, so that the same state gives the same action in
between: smooth, state-consistent exploration. One matrix per parallel env.

For a fixed s, eps_j(s) = sum_i phi_i(s) theta_ij is a sum of independent Gaussians, so

    pi(a|s) = N(mu(s), diag(v(s))),   v_j(s) = sum_i phi_i(s)^2 sigma_ij^2               [V]

which is the likelihood PPO uses for its ratio (a small epsilon is added to v as SB3 does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["StateDependentNoise"]


class StateDependentNoise(nn.Module):
    """The learned log sigma [latent_dim, action_dim] and ``num_matrices`` exploration matrices theta_eps (a buffer,
    so a checkpoint restores them). Takes the mean mu(s) [B, action_dim] and features phi(s) [B, latent_dim]."""

    def __init__(self, latent_dim: int, action_dim: int, num_matrices: int = 1, log_std_init: float = 0.0,
                 epsilon: float = 1e-6):
        super().__init__()
        if latent_dim < 1 or action_dim < 1 or num_matrices < 1:
            raise ValueError(f"StateDependentNoise: dimensions must be positive, got latent_dim={latent_dim}, "
                             f"action_dim={action_dim}, num_matrices={num_matrices}")
        self.epsilon = epsilon
        self.log_std = nn.Parameter(torch.full((latent_dim, action_dim), float(log_std_init)))   # log sigma_ij
        self.register_buffer("theta", torch.zeros(num_matrices, latent_dim, action_dim))      # theta_eps per env

    def std(self) -> torch.Tensor:
        """sigma = exp(log sigma) [latent_dim, action_dim]."""
        return self.log_std.exp()

    @torch.no_grad()
    def resample(self) -> None:
        """theta_eps ~ N(0, sigma^2), entrywise and independently for every matrix (global torch RNG, which the
        training checkpoint saves)."""
        self.theta.copy_(torch.randn(self.theta.shape, device=self.theta.device) * self.std())

    def noise(self, phi: torch.Tensor) -> torch.Tensor:
        """eps(s) = phi(s)^T theta_eps [B, action_dim] (the [E] eq. above): row b uses matrix b when B equals the number of
        matrices (one per env), otherwise every row uses matrix 0 (SB3's single exploration matrix)."""
        phi = phi.detach()
        B, L = phi.shape
        if L != self.theta.shape[1]:
            raise ValueError(f"StateDependentNoise: features of width {L}, expected {self.theta.shape[1]}")
        if B == self.theta.shape[0]:
            return torch.bmm(phi.unsqueeze(1), self.theta).squeeze(1)           # phi_b^T theta_b
        return phi @ self.theta[0]

    def variance(self, phi: torch.Tensor) -> torch.Tensor:
        """v(s) = (phi(s)^2)^T sigma^2 + epsilon [B, action_dim] (the [V] eq. above); differentiable in log sigma only."""
        return (phi.detach() ** 2) @ (self.std() ** 2) + self.epsilon

    def sample(self, mu: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a = mu(s) + phi(s)^T theta_eps with the current matrices, and log pi(a|s) [B]."""
        a = mu + self.noise(phi)
        return a, self.log_prob_entropy(mu, phi, a)[0]

    def log_prob_entropy(self, mu: torch.Tensor, phi: torch.Tensor,
                         actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log N(a; mu(s), diag v(s)) [B] and its entropy [B], summed over the action dimensions."""
        if mu.shape != actions.shape:
            raise ValueError(f"StateDependentNoise: mean {tuple(mu.shape)} and actions {tuple(actions.shape)} differ")
        var = self.variance(phi)
        log_var = var.log()
        logp = -0.5 * ((actions - mu) ** 2 / var + log_var + math.log(2 * math.pi))   # log N(a_j; mu_j, v_j)
        entropy = 0.5 * (log_var + math.log(2 * math.pi * math.e))                    # H = 1/2 log(2 pi e v_j)
        return logp.sum(-1), entropy.sum(-1)
