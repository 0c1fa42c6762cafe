"""What the language models (``lstm-lm``, ``gpt``) share: text data, the training loop on random windows,
scoring and text sampling.

A language model factorizes a token sequence by the chain rule, p(x_1..T) = prod_t p(x_t | x_<t), and is trained
by teacher forcing: on a window x[o : o+T] it predicts y = x[o+1 : o+T+1] at every position at once, with the
mean cross-entropy -1/(BT) sum_{b,t} log p(y_bt | x_b,<=t) (nats per token) as the loss. Batches are random
windows of the training token stream (:class:`mlcanon.training.WindowBatches`), never materialized.

Models are ``nn.Module``s with ``forward(idx [B, T]) -> (logits [B, T, V], state)``, ``step(new [B, T'],
state) -> (logits, state)`` (``state``: the LSTM's (h, c) or the transformer's KV cache, carried between calls
while sampling; ``model.context``: the longest window the model takes, None for none), ``loss(batch)``,
``log_prob(x)`` (sum_{t >= 2} log p(x_t | x_<t), nats) and ``sample`` through :func:`generate`.

Sampling (:func:`generate`): logits / temperature, then top-k (keep the k largest, Fan et al. 2018) and
top-p (nucleus: the smallest set whose probability reaches p, Holtzman et al. 2020), renormalized.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.registry import EvalOptions, SampleOptions, config_of
from mlcanon.runs import Run, load_weights
from mlcanon.training import (
    LR_SCHEDULES,
    OPTIMIZERS,
    TrainConfig,
    Trainer,
    WindowBatches,
    evaluate_in_batches,
    generator,
)


@dataclasses.dataclass
class LMConfig(TrainConfig):
    """Fields every language model shares (defaults: nanoGPT's shakespeare-char CPU configuration)."""

    dataset: str = option("text:tinyshakespeare", "text:tinyshakespeare or text:PATH (any UTF-8 file)")
    data_dir: str | None = option(None, "folder with data files (default: $MLCANON_DATA, then ~/.cache/mlcanon)")
    tokenizer: str = option("char", "tokenizer", choices=("char", "word", "bpe"))
    context: int = option(64, "tokens per training window (the model's context length)", min=2)
    batch_size: int = option(12, "windows per global mini-batch", min=1)
    max_steps: int = option(2000, "optimizer steps (0: --epochs decides; an epoch = N / (B T) steps)", min=0)
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    optimizer: str = option("adamw", "optimizer", choices=OPTIMIZERS)
    adam_betas: tuple[float, ...] = option((0.9, 0.99), "Adam/AdamW (beta1, beta2)")
    weight_decay: float = option(0.1, "AdamW decoupled weight decay (matrices only; not biases, norms)", min=0.0)
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this value (0: off)", min=0.0)
    lr_schedule: str = option("cosine", "learning-rate decay after warm-up", choices=LR_SCHEDULES)
    warmup_steps: int = option(100, "linear learning-rate warm-up steps", min=0)
    eval_every: int = option(250, "steps between validations (0: once per epoch)", min=0)
    eval_windows: int = option(200, "validation windows scored at each validation (0: the whole split)", min=0)
    dropout: float = option(0.0, "dropout probability", min=0.0, max=0.99)
    samples: int = option(1, "texts sampled into samples.txt at the end of training (0: none)", min=0)
    sample_length: int = option(200, "tokens per sample written at the end of training", min=1)


def load_text(config: LMConfig, split: str):
    from mlcanon.data import load
    if not config.dataset.startswith("text:"):
        raise UserError(f"--dataset {config.dataset!r}: language models take text:tinyshakespeare or text:PATH")
    return load(config.dataset, split, data_dir=config.data_dir, tokenizer=config.tokenizer,
                block_size=config.context)


def windows(ids: torch.Tensor, T: int, limit: int = 0) -> dict:
    """Non-overlapping (x, y) windows of a token stream: x = ids[kT : kT+T], y = ids[kT+1 : kT+T+1]."""
    n = (len(ids) - 1) // T
    if limit:
        n = min(n, limit)
    x = ids[:n * T].view(n, T)
    y = ids[1:n * T + 1].view(n, T)
    return {"x": x, "y": y}


def cross_entropy_loss(model: nn.Module, batch: dict) -> dict:
    """{"loss": -mean_{b,t} log p(y_bt | x_b,<=t)} in nats per token (teacher forcing)."""
    x, y = batch["x"], batch["y"]
    B, T = x.shape
    logits, _ = model(x)
    assert logits.shape[:2] == (B, T), logits.shape
    return {"loss": F.cross_entropy(logits.reshape(B * T, -1).float(), y.reshape(B * T))}


def sequence_log_prob(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """sum_{t >= 2} log p(x_t | x_<t) [B] in nats (the first token is given)."""
    logits, _ = model(x[:, :-1])
    lp = torch.log_softmax(logits.float(), -1).gather(-1, x[:, 1:, None])[..., 0]
    return lp.sum(-1)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups: weight decay on matrices (dim >= 2), none on biases, norms (as nanoGPT / GPT-2)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def train_language_model(name: str, config: LMConfig, run: Run, model: nn.Module) -> dict:
    """Teacher forcing on random windows; best by validation loss (nats/token); test loss and samples."""
    train_ds, val_ds, test_ds = (load_text(config, s) for s in ("train", "valid", "test"))
    trainer = Trainer(model, config, run, params=decay_groups(model, config.weight_decay))
    data = WindowBatches(train_ds.ids.to(run.device), config.context, config.batch_size, seed=config.seed)

    def score(ds, limit: int) -> float:
        m = evaluate_in_batches(lambda b: cross_entropy_loss(model, b), windows(ds.ids, config.context, limit),
                                batch_size=64, device=run.device, precision=config.precision)
        return m["loss"]

    fit = trainer.fit(lambda b: cross_entropy_loss(model, b), data,
                      val_fn=lambda: {"val/loss": score(val_ds, config.eval_windows)}, monitor="val/loss")
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch, "best_val_loss": fit.best_value}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        val_loss, test_loss = score(val_ds, 0), score(test_ds, 0)
        # valid + test = the text after the training part (nanoGPT's validation split is that last 10%): the mean
        # over both splits' windows, each loss weighted by its number of windows
        nv, nt = ((len(ds.ids) - 1) // config.context for ds in (val_ds, test_ds))   # as windows() counts
        out.update({"val_loss": val_loss, "test_loss": test_loss, "test_bits_per_token": test_loss / math.log(2),
                    "val_test_loss": (nv * val_loss + nt * test_loss) / (nv + nt)})
        if config.samples:
            tok = train_ds.tokenizer
            prompt = torch.tensor([tok.encode(train_ds.text[:1])] * config.samples, dtype=torch.long)
            ids = generate(model, prompt.to(run.device), config.sample_length, temperature=1.0,
                           generator=generator(config.seed, 1618))
            (run.dir / "samples.txt").write_text("\n\n---\n\n".join(tok.decode(r.tolist()) for r in ids) + "\n")
        run.finish(out, step=fit.step, metrics={"test/loss": test_loss, "test/nll_nats": test_loss,
                                                "eval/val_loss": val_loss})
    out["model"] = model
    return out


# --------------------------------------------------------------------------------------------- sampling
def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """log-probabilities [B, V] after temperature, top-k and top-p (nucleus) truncation, renormalized."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits) / temperature  # exp(z/tau)
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, -math.inf)                          # keep the k most likely tokens
    if top_p < 1.0:
        sz, si = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sz, -1).cumsum(-1)
        drop = cum - torch.softmax(sz, -1) >= top_p                    # tokens after the nucleus reached p
        z = z.masked_fill(drop.scatter(-1, si, drop), -math.inf)
    return torch.log_softmax(z, -1)


def recompute(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of the whole (last ``model.context`` tokens of the) sequence, from scratch: no state."""
    T = getattr(model, "context", None)
    return model(x[:, -T:] if T else x)[0]


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, length: int, *, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """prompt [B, T0] -> [B, T0 + length]: x_t ~ filter(p(. | x_<t)). With ``use_cache`` the model's state
    (KV cache / LSTM (h, c)) is carried and only the new token is fed (``model.step``); otherwise the whole
    context is recomputed at every step (the reference the cache must equal)."""
    was = model.training
    model.eval()
    x = prompt
    logits, state = model.step(x, None) if use_cache else (recompute(model, x), None)
    for _ in range(length):
        logp = filter_logits(logits[:, -1], temperature, top_k, top_p)
        u = torch.rand(logp.shape[0], 1, generator=generator).to(logp.device)
        nxt = (logp.exp().cumsum(-1) < u).sum(-1, keepdim=True).clamp_max(logp.shape[-1] - 1)   # inverse CDF
        x = torch.cat([x, nxt], 1)
        logits, state = model.step(nxt, state) if use_cache else (recompute(model, x), None)
    model.train(was)
    return x


# ------------------------------------------------------------------------------------- eval / sample hooks
@dataclasses.dataclass
class LMEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a language model: mean cross-entropy per token."""

    split: str = option("test", "which split to score", choices=("test", "valid", "train"))
    windows: int = option(0, "score only the first N non-overlapping windows (0: the whole split)", min=0)


@dataclasses.dataclass
class LMSampleOptions(SampleOptions):
    """Options of `mlcanon sample` on a language model (-n is the number of texts)."""

    prompt: str = option("\n", "text the samples continue")
    length: int = option(500, "tokens generated per sample", min=1)
    temperature: float = option(1.0, "softmax temperature (lower: more conservative)", min=1e-6)
    top_k: int = option(0, "sample among the k most likely tokens only (0: all)", min=0)
    top_p: float = option(1.0, "nucleus sampling: the smallest set of tokens with probability >= p", min=0.0,
                          max=1.0)


class LMHooks:
    """load / evaluate / sample of a registered language model built by ``build(config, vocab_size)``."""

    def __init__(self, name: str, build: Callable[[LMConfig, int], nn.Module]):
        self.name, self.build = name, build

    def load(self, run_dir: str | Path, config=None, tag: str = "best") -> nn.Module:
        config = config if config is not None else config_of(run_dir, self.name)
        return load_weights(self.build(config, load_text(config, "valid").vocab_size), run_dir, tag)

    def evaluate(self, run_dir: str | Path, options: LMEvalOptions | None = None) -> dict:
        """Mean cross-entropy (nats and bits per token) of the best model on a split's windows."""
        options = options or LMEvalOptions()
        config = config_of(run_dir, self.name)
        model = self.load(run_dir, config)
        ds = load_text(config, options.split)
        m = evaluate_in_batches(lambda b: cross_entropy_loss(model, b),
                                windows(ds.ids, config.context, options.windows), batch_size=64)
        return {"eval/loss": m["loss"], "eval/nll_nats": m["loss"], "eval/bits_per_token": m["loss"] / math.log(2),
                "split": options.split}

    def sample(self, run_dir: str | Path, n: int = 1, out: str | Path | None = None,
               options: LMSampleOptions | None = None) -> Path:
        """n texts continuing --prompt, printed and written to samples.txt (seeded)."""
        options = options or LMSampleOptions()
        config = config_of(run_dir, self.name)
        model = self.load(run_dir, config)
        tok = load_text(config, "valid").tokenizer
        try:
            ids = tok.encode(options.prompt)
        except (KeyError, ValueError) as e:
            raise UserError(f"--prompt {options.prompt!r}: not encodable by this run's tokenizer ({e})") from e
        if not ids:
            raise UserError("--prompt gives no tokens; give some text, e.g. --prompt 'ROMEO:'")
        prompt = torch.tensor([ids] * n, dtype=torch.long)
        out_ids = generate(model, prompt, options.length, temperature=options.temperature, top_k=options.top_k,
                           top_p=options.top_p, generator=generator(options.seed, 1618))
        texts = [tok.decode(r.tolist()) for r in out_ids]
        text = "\n\n---\n\n".join(texts) + "\n"
        sys.stdout.write(text)
        out = Path(out).with_suffix(".txt") if out else Path(run_dir) / "samples.txt"   # text, whatever --out says
        out.write_text(text)
        return out
