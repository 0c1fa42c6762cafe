"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio") on generated signals.

p(x) = prod_t p(x_t | x_<t) over mu-law codes (256 levels, :mod:`signals`), every conditional a softmax:

* input: one-hot codes through a causal convolution shifted by one step (:class:`mlcanon.nn.CausalConv1d`,
  ``shift=1``), so output t never sees x_t;
* ``stacks`` x ``layers`` residual blocks of dilated causal convolutions, dilations 1, 2, ..., 2^(layers-1)
  (section 2.1, fig. 3), each with the gated activation unit (eq. 2)

      z = tanh(W_f * x) . sigmoid(W_g * x),   x <- x + W_r z (residual),   skip += W_s z  (section 2.4, fig. 4)

* output: ReLU -> 1x1 -> ReLU -> 1x1 -> softmax over the levels, on the sum of the skips.

Receptive field: output t sees exactly x_{t-R}, ..., x_{t-1} with R = k_in + stacks * (2^layers - 1) (kernel 2:
each dilated layer adds its dilation), tested by gradient. Sampling is sequential, each step recomputing the
network on the last R codes only (that window is all the output sees).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.generative.autoregressive.signals import (
    mu_law_decode,
    mu_law_encode,
    plot_signals,
    sinusoid_mixtures,
)
from mlcanon.nn.masked import CausalConv1d
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches, generator


class ResidualLayer(nn.Module):
    """Dilated causal conv (kernel 2) -> gated unit -> 1x1 residual and 1x1 skip outputs."""

    def __init__(self, channels: int, skip_channels: int, dilation: int):
        super().__init__()
        self.conv = CausalConv1d(channels, 2 * channels, 2, dilation=dilation)   # [W_f; W_g] * x
        self.res = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, skip_channels, 1)

    def forward(self, x: torch.Tensor):
        f, g = self.conv(x).chunk(2, dim=1)
        z = torch.tanh(f) * torch.sigmoid(g)                                   # gated activation unit
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """``forward(codes [B, T]) -> logits [B, levels, T]`` with logits_t a function of codes_<t only."""

    def __init__(self, levels: int = 256, channels: int = 32, skip_channels: int = 64, layers: int = 8,
                 stacks: int = 2, input_kernel: int = 2):
        super().__init__()
        self.levels = levels
        self.input = CausalConv1d(levels, channels, input_kernel, shift=1)    # sees x_{t-k..t-1}
        self.blocks = nn.ModuleList(ResidualLayer(channels, skip_channels, 2 ** i)
                                    for _ in range(stacks) for i in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv1d(skip_channels, skip_channels, 1), nn.ReLU(),
                                  nn.Conv1d(skip_channels, levels, 1))
        self.receptive_field = input_kernel + stacks * (2 ** layers - 1)       # R: x_{t-R} .. x_{t-1}

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """[B, levels, T] (one-hot or any real input) -> logits [B, levels, T]."""
        h = self.input(x)
        skips = 0
        for block in self.blocks:
            h, s = block(h)
            skips = skips + s                                                    # sum of skip connections
        return self.head(skips)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.network(F.one_hot(codes, self.levels).transpose(1, 2).to(self.input.weight.dtype))

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """sum_t log p(x_t | x_<t) [B] in nats (x_0 conditioned on the zero padding)."""
        logits = self(codes)
        lp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), 1)
        return lp.gather(1, codes[:, None])[:, 0].sum(-1)

    def loss(self, batch: dict) -> dict:
        x = batch["x"]
        logits = self(x).float()
        assert logits.shape == (x.shape[0], self.levels, x.shape[1]), logits.shape
        nll = F.cross_entropy(logits, x)                                       # -mean_{b,t} log p(x_t | x_<t)
        return {"loss": nll, "bits_per_step": nll.detach() / math.log(2)}

    @torch.no_grad()
    def sample(self, n: int, length: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """[n, length] codes, one step at a time on the last R codes (the receptive field)."""
        dev = next(self.parameters()).device
        R = self.receptive_field
        x = torch.zeros(n, 0, dtype=torch.long, device=dev)
        for _ in range(length):
            window = x[:, -R:]
            inp = torch.cat([window, torch.zeros(n, 1, dtype=torch.long, device=dev)], 1)   # slot for x_t
            logits = self(inp)[:, :, -1] / temperature                         # p(x_t | x_{t-R..t-1})
            u = torch.rand(n, 1, generator=generator).to(dev)
            nxt = (torch.softmax(logits.float(), -1).cumsum(-1) < u).sum(-1, keepdim=True).clamp_max(self.levels - 1)
            x = torch.cat([x, nxt], 1)
        return x


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class WaveNetConfig(TrainConfig):
    """WaveNet on generated sinusoid mixtures, mu-law quantized."""

    num_signals: int = option(2000, "training signals (valid and test: a quarter each)", min=4)
    signal_length: int = option(512, "time steps per signal", min=8)
    noise: float = option(0.05, "std of the Gaussian noise added to each signal", min=0.0)
    levels: int = option(256, "mu-law quantization levels", min=2)
    channels: int = option(32, "residual channels", min=1)
    skip_channels: int = option(64, "skip channels", min=1)
    layers: int = option(8, "dilated layers per stack (dilations 1 .. 2^(layers-1))", min=1)
    stacks: int = option(2, "stacks of dilated layers", min=1)
    batch_size: int = option(16, "signals per mini-batch", min=1)
    epochs: int = option(10, "passes over the training signals", min=1)
    samples: int = option(4, "signals sampled into samples.png at the end of training (0: none)", min=0)


def data(config: WaveNetConfig, split: str) -> torch.Tensor:
    n = config.num_signals if split == "train" else max(2, config.num_signals // 4)
    x = sinusoid_mixtures(n, config.signal_length, seed=config.seed, split=split, noise=config.noise)
    return mu_law_encode(x, config.levels)


def build(config: WaveNetConfig) -> WaveNet:
    return WaveNet(config.levels, config.channels, config.skip_channels, config.layers, config.stacks)


def _score(model: WaveNet, codes: torch.Tensor, device, precision="fp32") -> dict:
    m = evaluate_in_batches(lambda b: model.loss(b), {"x": codes}, batch_size=64, device=device, precision=precision)
    T = codes.shape[1]
    return {"nll_per_step": m["loss"], "nll_nats": m["loss"] * T, "bits_per_step": m["loss"] / math.log(2)}


def save_samples(model: WaveNet, config: WaveNetConfig, n: int, path: Path, seed: int) -> Path:
    codes = model.sample(n, config.signal_length, generator=generator(seed, 1729))
    real = mu_law_decode(data(config, "test")[:n], config.levels)
    return plot_signals(mu_law_decode(codes.cpu(), config.levels), real, path, "WaveNet samples (blue), real (orange)")


def train(config: WaveNetConfig, run: Run | None = None) -> dict:
    """Maximum likelihood of the mu-law codes; best by validation NLL."""
    run = Run.start("wavenet", config, run)
    train_x, val_x, test_x = data(config, "train"), data(config, "valid"), data(config, "test")
    model = build(config)
    trainer = Trainer(model, config, run)
    fit = trainer.fit(lambda b: model.loss(b), TensorBatches({"x": train_x}, config.batch_size, seed=config.seed),
                      val_fn=lambda: {"val/loss": _score(model, val_x, run.device)["nll_per_step"]},
                      monitor="val/loss")
    out = {"run_dir": str(run.dir), "step": fit.step, "best_val_loss": fit.best_value,
           "receptive_field": model.receptive_field}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        m = _score(model, test_x, run.device)
        out.update({"test_nll_per_step": m["nll_per_step"], "test_nll_nats": m["nll_nats"],
                    "test_bits_per_step": m["bits_per_step"]})
        if config.samples:
            save_samples(model, config, config.samples, run.dir / "samples.png", config.seed)
        run.finish(out, step=fit.step, metrics={"test/nll_nats": m["nll_nats"], "test/bits_per_dim": m["bits_per_step"]})
    out["model"] = model
    return out


@dataclasses.dataclass
class WaveNetEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a wavenet run."""

    split: str = option("test", "which generated split to score", choices=("test", "valid", "train"))


@dataclasses.dataclass
class WaveNetSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a wavenet run (-n signals, plotted beside real ones)."""


def load_model(run_dir: str | Path, config=None, tag: str = "best") -> WaveNet:
    config = config if config is not None else config_of(run_dir, "wavenet")
    return load_weights(build(config), run_dir, tag)


def evaluate(run_dir: str | Path, options: WaveNetEvalOptions | None = None) -> dict:
    """NLL per signal (nats) and per step (nats, bits) of the best model on a generated split."""
    options = options or WaveNetEvalOptions()
    config = config_of(run_dir, "wavenet")
    m = _score(load_model(run_dir, config), data(config, options.split), "cpu")
    return {"eval/nll_nats": m["nll_nats"], "eval/nll_per_step": m["nll_per_step"],
            "eval/bits_per_dim": m["bits_per_step"], "split": options.split}


def sample(run_dir: str | Path, n: int = 4, out: str | Path | None = None,
           options: WaveNetSampleOptions | None = None) -> Path:
    """n sampled signals plotted above n real ones."""
    options = options or WaveNetSampleOptions()
    config = config_of(run_dir, "wavenet")
    out = Path(out) if out else Path(run_dir) / "samples.png"
    return save_samples(load_model(run_dir, config), config, n, out, options.seed)


register("wavenet", family="generative", config=WaveNetConfig,
         description="WaveNet: dilated causal convolutions, gated units, residual+skip, mu-law signals",
         evaluate=evaluate, sample=sample, load=load_model, eval_options=WaveNetEvalOptions,
         sample_options=WaveNetSampleOptions,
         tiny={"num_signals": 32, "signal_length": 32, "levels": 16, "channels": 4, "skip_channels": 4,
               "layers": 3, "stacks": 1, "batch_size": 8, "max_steps": 8, "eval_every": 4, "checkpoint_every": 4,
               "samples": 1})(train)
