"""A toy sequence-to-sequence task solved by the encoder-decoder transformer: ``mlcanon train seq2seq``.

Task: map a digit string (``min_len``..``max_len`` digits) to its reversal (``--task reverse``) or its sorted
digits (``--task sort``). Model: :class:`mlcanon.nn.attention.EncoderDecoder` (bidirectional encoder, causal
decoder with cross-attention, Vaswani et al. 2017). Training: teacher forcing, per-token cross-entropy
    L = -(1/T) sum_t log p(y_t | y_<t, x)        (padding positions excluded)
Decoding: greedy, y_t = argmax_v p(v | y_<t, x), until EOS. Metric: exact match of the whole string.

Note: under teacher forcing every argmax is right  <=>  greedy decoding reproduces the target exactly
(each greedy step then sees the true prefix), so the per-epoch ``val/exact_match`` computed from
teacher-forced argmaxes is the greedy exact match; the final ``test/exact_match`` decodes for real.
Test strings never occur in the training set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.registry import register
from mlcanon.runs import Run
from mlcanon.supervised.fit import fit
from mlcanon.supervised.tasks import FitConfig, config_of, load_weights, start

PAD, BOS, EOS = 0, 1, 2
DIGIT0 = 3            # token of digit d is DIGIT0 + d
VOCAB = DIGIT0 + 10


@dataclasses.dataclass
class Seq2SeqConfig(FitConfig):
    """Encoder-decoder transformer on reversing or sorting digit strings; every field is a CLI flag."""

    task: str = option("reverse", "what to learn: reverse or sort the digit string", choices=("reverse", "sort"))
    min_len: int = option(2, "shortest string", min=1)
    max_len: int = option(10, "longest string", min=1)
    num_train: int = option(20000, "generated training strings", min=1)
    num_val: int = option(500, "generated validation strings", min=1)
    num_test: int = option(2000, "generated held-out test strings (none occurs in train)", min=1)
    d_model: int = option(64, "transformer model width", min=1)
    n_heads: int = option(4, "attention heads", min=1)
    layers: int = option(2, "encoder and decoder layers", min=1)
    d_ff: int = option(128, "feed-forward width", min=1)
    dropout: float = option(0.0, "dropout", min=0.0, max=0.99)
    epochs: int = option(8, "passes over the training set", min=1)
    batch_size: int = option(128, "global mini-batch size", min=1)
    lr: float = option(1e-3, "learning rate", min=0.0)
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this value (0: off)", min=0.0)

    def check(self) -> None:
        if self.min_len > self.max_len:
            raise UserError(f"--min-len {self.min_len} > --max-len {self.max_len}; swap them")
        if self.d_model % self.n_heads:
            raise UserError(f"--d-model {self.d_model} must be divisible by --n-heads {self.n_heads}")


# ------------------------------------------------------------------------------------------------- data
def target_of(digits: list[int], task: str) -> list[int]:
    """The answer for one string: reversed or sorted digits."""
    return digits[::-1] if task == "reverse" else sorted(digits)


def encode_pairs(strings: list[list[int]], task: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, 2*max_len+1] = source (PAD-padded) | decoder input BOS y (PAD-padded), y [N, max_len+1] = y EOS)."""
    N, T = len(strings), max_len + 1
    src = torch.full((N, max_len), PAD, dtype=torch.long)
    tgt_in = torch.full((N, T), PAD, dtype=torch.long)
    tgt_out = torch.full((N, T), PAD, dtype=torch.long)
    for i, s in enumerate(strings):
        t = [DIGIT0 + d for d in target_of(s, task)]
        src[i, :len(s)] = torch.tensor([DIGIT0 + d for d in s])
        tgt_in[i, :len(t) + 1] = torch.tensor([BOS] + t)      # decoder reads BOS y_1 .. y_n
        tgt_out[i, :len(t) + 1] = torch.tensor(t + [EOS])     # and predicts  y_1 .. y_n EOS
    return torch.cat([src, tgt_in], dim=1), tgt_out


def make_strings(config: Seq2SeqConfig) -> dict[str, list[list[int]]]:
    """Disjoint train / valid / test digit strings from a generator seeded by --seed."""
    g = torch.Generator().manual_seed(config.seed + 12345)
    out: dict[str, list[list[int]]] = {}
    seen: set[tuple[int, ...]] = set()
    space = sum(10 ** n for n in range(config.min_len, config.max_len + 1))
    need = config.num_val + config.num_test
    if need > space // 2:
        raise UserError(f"only {space} distinct strings of length {config.min_len}..{config.max_len}; "
                        f"lower --num-val/--num-test or raise --max-len")
    for name, n in (("test", config.num_test), ("valid", config.num_val), ("train", config.num_train)):
        strings = []
        while len(strings) < n:
            L = int(torch.randint(config.min_len, config.max_len + 1, (1,), generator=g))
            s = tuple(torch.randint(0, 10, (L,), generator=g).tolist())
            if name != "train":
                if s in seen:
                    continue
                seen.add(s)
            elif s in seen:      # held-out strings never appear in training
                continue
            strings.append(list(s))
        out[name] = strings
    return out


# ------------------------------------------------------------------------------------------------ model
class Seq2Seq(nn.Module):
    """EncoderDecoder on packed inputs [B, S + T] (source | decoder input) -> logits [B, T, V]."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        from mlcanon.nn.attention import EncoderDecoder
        self.S = config.max_len
        self.net = EncoderDecoder(VOCAB, VOCAB, d_model=config.d_model, n_heads=config.n_heads,
                                  num_layers=config.layers, d_ff=config.d_ff, dropout=config.dropout,
                                  max_len=config.max_len + 2)
        for emb in (self.net.encoder.embed, self.net.decoder.embed):
            # token embeddings ~ N(0, 1/d): after the sqrt(d) scaling they are O(1), like the sinusoidal
            # positions, instead of drowning them (the positions are all that reversal depends on)
            nn.init.normal_(emb.weight, std=config.d_model ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, tgt = x[:, :self.S], x[:, self.S:]
        return self.net(src, tgt, src_key_padding_mask=src == PAD)  # p(y_t | y_<t, x) for every t

    @torch.no_grad()
    def greedy(self, src: torch.Tensor) -> torch.Tensor:
        """Greedy decoding [B, S] -> [B, S+1] tokens (PAD after the first EOS)."""
        B = src.shape[0]
        pad = src == PAD
        memory = self.net.encoder(src, pad)
        y = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        for _ in range(self.S + 1):
            h = self.net.decoder(y, memory, memory_key_padding_mask=pad)
            nxt = self.net.head(h[:, -1]).argmax(-1)          # y_t = argmax_v p(v | y_<t, x)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            y = torch.cat([y, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if bool(done.all()):
                break
        out = y[:, 1:]
        return F.pad(out, (0, self.S + 1 - out.shape[1]), value=PAD)


def _loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    B, T, V = logits.shape
    assert y.shape == (B, T), (logits.shape, y.shape)
    nll = F.cross_entropy(logits.reshape(B * T, V), y.reshape(-1), reduction="none").view(B, T)
    mask = (y != PAD).float()
    return (nll * mask).sum(1) / mask.sum(1)   # -(1/T) sum_t log p(y_t | y_<t, x) over real tokens


def _metric_fn(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = logits.argmax(-1)
    real = y != PAD
    right = (pred == y) | ~real
    return {"exact_match": float(right.all(1).sum()),                               # all tokens right
            "token_accuracy": float(((pred == y) & real).sum(1).float().div(real.sum(1)).sum())}


def exact_match(model: Seq2Seq, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> tuple[float, torch.Tensor]:
    """(fraction of strings greedy decoding gets exactly right, the decoded tokens [N, S+1])."""
    model.eval()
    preds = [model.greedy(x[i:i + batch_size, :model.S]) for i in range(0, len(x), batch_size)]
    pred = torch.cat(preds)
    right = ((pred == y) | (y == PAD)).all(1) & ((pred == PAD) | (y != PAD)).all(1)
    return float(right.float().mean()), pred


def decode_text(tokens: torch.Tensor) -> str:
    """Token ids -> digit string (stops at EOS, skips BOS/PAD)."""
    out = []
    for t in tokens.tolist():
        if t == EOS:
            break
        if t >= DIGIT0:
            out.append(str(t - DIGIT0))
    return "".join(out)


def _data(config: Seq2SeqConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k: encode_pairs(v, config.task, config.max_len) for k, v in make_strings(config).items()}


@register("seq2seq", family="supervised", config=Seq2SeqConfig,
          description="encoder-decoder transformer reversing / sorting digit strings (greedy, exact match)",
          evaluate=lambda run_dir, **kw: evaluate(run_dir, **kw), sample=lambda *a, **kw: sample(*a, **kw))
def train(config: Seq2SeqConfig, run: Run | None = None) -> dict:
    """Train with teacher forcing, keep the best by val/exact_match, report greedy test exact match."""
    run, resume_state, device = start("seq2seq", config, run)
    data = _data(config)
    model = Seq2Seq(config)
    result = fit(model, train=data["train"], val=data["valid"], config=config, run=run, device=device,
                 loss_fn=_loss_fn, metric_fn=_metric_fn, monitor="exact_match", mode="max",
                 resume_state=resume_state)
    load_weights(model, run.dir).to("cpu")
    em, _ = exact_match(model, *data["test"])
    out = {"run_dir": str(run.dir), "step": result.step, "epochs": result.epoch,
           "best_val_exact_match": result.best_value, "test_exact_match": em}
    run.finish(out, step=result.step, metrics={"test/exact_match": em})
    out["model"] = model
    return out


def load_model(run_dir: str | Path) -> tuple[Seq2Seq, Seq2SeqConfig]:
    """The run's best model (eval mode, CPU) and its config."""
    config = config_of(run_dir, "seq2seq")
    return load_weights(Seq2Seq(config), run_dir), config


def evaluate(run_dir: str | Path, split: str = "test", **_) -> dict:
    """Greedy exact match on the regenerated held-out split."""
    if split not in ("test", "valid"):
        raise UserError(f"--split {split!r}: use test or valid")
    model, config = load_model(run_dir)
    em, _ = exact_match(model, *_data(config)[split])
    return {f"{split}/exact_match": em}


def sample(run_dir: str | Path, n: int = 20, out: str | Path | None = None, **_) -> Path:
    """A text file of ``n`` test strings: input -> greedy output (truth), printed too."""
    model, config = load_model(run_dir)
    x, y = _data(config)["test"]
    n = min(n, len(x))
    _, pred = exact_match(model, x[:n], y[:n])
    lines = [f"# {config.task}: input -> greedy output   (expected; x = wrong)"]
    for i in range(n):
        src, got, want = decode_text(x[i, :config.max_len]), decode_text(pred[i]), decode_text(y[i])
        lines.append(f"{src:>{config.max_len}} -> {got:<{config.max_len}}  ({want})" + ("" if got == want else " x"))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(out) if out else Path(run_dir) / "samples.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
