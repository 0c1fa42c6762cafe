"""VRNN: a variational recurrent neural network (Chung et al., NeurIPS 2015), beside an LSTM with a Gaussian
output, on the generated sinusoid mixtures (:mod:`signals`, real-valued, not quantized).

VRNN: a VAE at every time step whose prior depends on the recurrent state h_{t-1} (eq. 5-10):

    prior    p(z_t | x_<t, z_<t)  = N(mu_0,t, sigma_0,t),   [mu_0,t, sigma_0,t] = phi_prior(h_{t-1})       (5)
    decoder  p(x_t | z_<=t, x_<t) = N(mu_x,t, sigma_x,t),   [mu_x,t, sigma_x,t] = phi_dec(phi_z(z_t), h_{t-1}) (6)
    recurrence  h_t = LSTM([phi_x(x_t), phi_z(z_t)], h_{t-1})                                                (7)
    encoder  q(z_t | x_<=t, z_<t) = N(mu_z,t, sigma_z,t),   [mu_z,t, sigma_z,t] = phi_enc(phi_x(x_t), h_{t-1}) (9)
    ELBO = sum_t E_q[ log p(x_t | z_<=t, x_<t) - KL(q(z_t | .) || p(z_t | .)) ]                               (10)

One sampled path z_1..T gives log w = sum_t [log p(x_t | .) + log p(z_t | .) - log q(z_t | .)]; E[log w] is the
ELBO, and K independent paths give the importance-weighted bound log (1/K) sum_k w_k (Burda et al. 2016),
which tightens toward log p(x) as K grows (``mlcanon eval --iwae-k``).

Baseline (``--model lstm``): p(x_t | x_<t) = N(mu(h_{t-1}), sigma(h_{t-1})) with h the LSTM state over x_<t:
an exact likelihood, reported beside the VRNN's bounds. Densities are of real values: NLL in nats per signal.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from mlcanon.config import option
from mlcanon.generative.autoregressive.signals import plot_signals, sinusoid_mixtures
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches, generator

MIN_STD = 1e-3


def _gaussian(params: torch.Tensor) -> Normal:
    mu, s = params.chunk(2, dim=-1)
    return Normal(mu, F.softplus(s) + MIN_STD)                        # sigma = softplus(.) + eps > 0


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class VRNN(nn.Module):
    """VRNN over x [B, T] (one real value per step), latent size ``latent``, LSTM state size ``hidden``."""

    def __init__(self, hidden: int = 64, latent: int = 8, features: int = 32):
        super().__init__()
        self.hidden, self.latent = hidden, latent
        self.phi_x, self.phi_z = _mlp(1, features, features), _mlp(latent, features, features)
        self.prior = _mlp(hidden, features, 2 * latent)                 # phi_prior(h_{t-1})
        self.enc = _mlp(features + hidden, features, 2 * latent)        # phi_enc(phi_x(x_t), h_{t-1})
        self.dec = _mlp(features + hidden, features, 2)                 # phi_dec(phi_z(z_t), h_{t-1})
        self.cell = nn.LSTMCell(2 * features, hidden)                   # f(phi_x, phi_z, h_{t-1})

    def step_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per step [B, T] along one path z_t ~ q (reparameterized): log p(x_t | z_<=t, x_<t),
        log p(z_t | .) - log q(z_t | .), and KL(q(z_t | .) || p(z_t | .)) in closed form."""
        B, T = x.shape
        h = c = x.new_zeros(B, self.hidden)
        ll, ratio, kl = [], [], []
        for t in range(T):
            fx = self.phi_x(x[:, t:t + 1])
            p_z, q_z = _gaussian(self.prior(h)), _gaussian(self.enc(torch.cat([fx, h], -1)))   # eq. 5, 9
            z = q_z.rsample()                                            # z = mu + sigma eps
            fz = self.phi_z(z)
            p_x = _gaussian(self.dec(torch.cat([fz, h], -1)))           # eq. 6
            ll.append(p_x.log_prob(x[:, t:t + 1]).sum(-1))
            ratio.append(p_z.log_prob(z).sum(-1) - q_z.log_prob(z).sum(-1))
            kl.append(kl_divergence(q_z, p_z).sum(-1))
            h, c = self.cell(torch.cat([fx, fz], -1), (h, c))            # eq. 7
        return torch.stack(ll, 1), torch.stack(ratio, 1), torch.stack(kl, 1)

    def log_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log w [B], analytic-KL ELBO [B]) of one path: log w = sum_t [log p(x_t|.) + log p(z_t|.) - log q(z_t|.)],
        ELBO = sum_t [log p(x_t|.) - KL_t] (eq. 10)."""
        ll, ratio, kl = self.step_terms(x)
        return (ll + ratio).sum(1), (ll - kl).sum(1)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_weights(x)[1]

    def log_prob_iwae(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log (1/K) sum_k w_k [B]: a lower bound on log p(x), equal to the ELBO in expectation at K = 1."""
        B = x.shape[0]
        lw, _ = self.log_weights(x.repeat(k, 1))
        return torch.logsumexp(lw.view(k, B), 0) - math.log(k)

    def loss(self, batch: dict) -> dict:
        x = batch["x"]
        elbo = self.elbo(x)
        return {"loss": -elbo.mean() / x.shape[1], "elbo_nats": elbo.mean().detach()}   # per-step for the optimizer

    @torch.no_grad()
    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z_t ~ p(z_t | h_{t-1}), x_t ~ p(x_t | z_t, h_{t-1}), h_t = f(x_t, z_t, h_{t-1})."""
        dev = next(self.parameters()).device
        h = c = torch.zeros(n, self.hidden, device=dev)
        xs = []
        for _ in range(length):
            p_z = _gaussian(self.prior(h))
            z = p_z.loc + p_z.scale * torch.randn(p_z.loc.shape, generator=generator).to(dev)
            fz = self.phi_z(z)
            p_x = _gaussian(self.dec(torch.cat([fz, h], -1)))
            x = p_x.loc + p_x.scale * torch.randn(p_x.loc.shape, generator=generator).to(dev)
            xs.append(x)
            h, c = self.cell(torch.cat([self.phi_x(x), fz], -1), (h, c))
        return torch.cat(xs, 1)


class GaussianLSTM(nn.Module):
    """p(x_t | x_<t) = N(mu(h_{t-1}), sigma(h_{t-1})), h over the past values (h_0 = 0): exact likelihood."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 2)
        self.hidden = hidden

    def _dists(self, x: torch.Tensor) -> Normal:
        B, _ = x.shape
        prev = torch.cat([x.new_zeros(B, 1), x[:, :-1]], 1)             # x_<t, shifted by one (x_0 := 0)
        h0 = x.new_zeros(1, B, self.hidden)
        h, _ = self.lstm(prev[..., None], (h0, h0))
        return _gaussian(self.out(h))                                     # [B, T, 2] -> N(mu, sigma)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self._dists(x).log_prob(x[..., None]).sum((1, 2))         # sum_t log N(x_t; mu_t, sigma_t)

    def loss(self, batch: dict) -> dict:
        x = batch["x"]
        lp = self.log_prob(x)
        return {"loss": -lp.mean() / x.shape[1], "log_prob_nats": lp.mean().detach()}

    @torch.no_grad()
    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = self.out.weight.device
        state = (torch.zeros(1, n, self.hidden, device=dev), torch.zeros(1, n, self.hidden, device=dev))
        x, xs = torch.zeros(n, 1, 1, device=dev), []
        for _ in range(length):
            h, state = self.lstm(x, state)
            d = _gaussian(self.out(h[:, -1]))
            x = (d.loc + d.scale * torch.randn(d.loc.shape, generator=generator).to(dev))[:, None]
            xs.append(x[:, 0])
        return torch.cat(xs, 1)


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class VRNNConfig(TrainConfig):
    """VRNN (or the Gaussian-output LSTM baseline) on generated sinusoid mixtures."""

    model: str = option("vrnn", "vrnn, or lstm (Gaussian output, exact likelihood: the baseline)",
                        choices=("vrnn", "lstm"))
    num_signals: int = option(2000, "training signals (valid and test: a quarter each)", min=4)
    signal_length: int = option(128, "time steps per signal", min=2)
    noise: float = option(0.05, "std of the Gaussian noise added to each signal", min=0.0)
    hidden: int = option(64, "LSTM state size", min=1)
    latent: int = option(8, "VRNN latent size per step", min=1)
    features: int = option(32, "VRNN feature-extractor width", min=1)
    batch_size: int = option(32, "signals per mini-batch", min=1)
    epochs: int = option(10, "passes over the training signals", min=1)
    samples: int = option(4, "signals sampled into samples.png at the end of training (0: none)", min=0)


def data(config: VRNNConfig, split: str) -> torch.Tensor:
    n = config.num_signals if split == "train" else max(2, config.num_signals // 4)
    return sinusoid_mixtures(n, config.signal_length, seed=config.seed, split=split, noise=config.noise)


def build(config: VRNNConfig) -> nn.Module:
    return VRNN(config.hidden, config.latent, config.features) if config.model == "vrnn" else GaussianLSTM(config.hidden)


def bound(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The per-signal figure: the VRNN's ELBO, the LSTM's exact log-likelihood [B]."""
    return model.elbo(x) if isinstance(model, VRNN) else model.log_prob(x)


def _score(model, x, device, iwae_k: int = 0) -> dict:
    def f(b):
        out = {"nll": -bound(model, b["x"]).mean()}
        if iwae_k and isinstance(model, VRNN):
            out["iwae_nll"] = -model.log_prob_iwae(b["x"], iwae_k).mean()
        return out
    return evaluate_in_batches(f, {"x": x}, batch_size=128, device=device)


def save_samples(model, config: VRNNConfig, n: int, path: Path, seed: int) -> Path:
    s = model.sample(n, config.signal_length, generator=generator(seed, 1729)).cpu().clamp(-1.05, 1.05)
    return plot_signals(s, data(config, "test")[:n], path, f"{config.model} samples (blue), real (orange)")


def train(config: VRNNConfig, run: Run | None = None) -> dict:
    """Maximize the ELBO (vrnn) or the log-likelihood (lstm); best by the validation figure."""
    run = Run.start("vrnn", config, run)
    train_x, val_x, test_x = data(config, "train"), data(config, "valid"), data(config, "test")
    model = build(config)
    trainer = Trainer(model, config, run)
    fit = trainer.fit(lambda b: model.loss(b), TensorBatches({"x": train_x}, config.batch_size, seed=config.seed),
                      val_fn=lambda: {"val/nll_nats": _score(model, val_x, run.device)["nll"]}, monitor="val/nll_nats")
    out = {"run_dir": str(run.dir), "step": fit.step, "best_val_nll_nats": fit.best_value}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        m = _score(model, test_x, run.device)
        key = "test_neg_elbo_nats" if config.model == "vrnn" else "test_nll_nats"
        out[key] = m["nll"]
        if config.samples:
            save_samples(model, config, config.samples, run.dir / "samples.png", config.seed)
        run.finish(out, step=fit.step, metrics={f"test/{key[5:]}": m["nll"]})
    out["model"] = model
    return out


@dataclasses.dataclass
class VRNNEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a vrnn run."""

    split: str = option("test", "which generated split to score", choices=("test", "valid", "train"))
    iwae_k: int = option(16, "importance samples of the VRNN's IWAE bound (0: ELBO only)", min=0)


def load_model(run_dir: str | Path, config=None, tag: str = "best") -> nn.Module:
    config = config if config is not None else config_of(run_dir, "vrnn")
    return load_weights(build(config), run_dir, tag)


def evaluate(run_dir: str | Path, options: VRNNEvalOptions | None = None) -> dict:
    """VRNN: -ELBO and the IWAE bound on -log p (nats per signal); LSTM: exact NLL."""
    options = options or VRNNEvalOptions()
    torch.manual_seed(options.seed)
    config = config_of(run_dir, "vrnn")
    model = load_model(run_dir, config)
    with torch.no_grad():
        m = _score(model, data(config, options.split), "cpu", options.iwae_k)
    if config.model == "vrnn":
        out = {"eval/neg_elbo_nats": m["nll"]}
        if "iwae_nll" in m:
            out[f"eval/nll_iwae{options.iwae_k}_nats"] = m["iwae_nll"]
    else:
        out = {"eval/nll_nats": m["nll"]}
    return {**out, "split": options.split, "model": config.model}


def sample(run_dir: str | Path, n: int = 4, out: str | Path | None = None,
           options: SampleOptions | None = None) -> Path:
    """n sampled signals plotted above n real ones."""
    options = options or SampleOptions()
    config = config_of(run_dir, "vrnn")
    out = Path(out) if out else Path(run_dir) / "samples.png"
    return save_samples(load_model(run_dir, config), config, n, out, options.seed)


register("vrnn", family="generative", config=VRNNConfig,
         description="VRNN: a VAE per time step with a learned recurrent prior (--model lstm: Gaussian LSTM baseline)",
         evaluate=evaluate, sample=sample, load=load_model, eval_options=VRNNEvalOptions,
         tiny={"num_signals": 32, "signal_length": 16, "hidden": 8, "latent": 2, "features": 8, "batch_size": 8,
               "max_steps": 8, "eval_every": 4, "checkpoint_every": 4, "samples": 1})(train)
