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
from mlcanon.nn.attention import EncoderDecoder
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches

PAD, BOS, EOS = 0, 1, 2
DIGIT0 = 3            # token of digit d is DIGIT0 + d
VOCAB = DIGIT0 + 10


@dataclasses.dataclass
class Seq2SeqConfig(TrainConfig):
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


def encode_pairs(strings: list[list[int]], task: str, max_len: int) -> dict[str, torch.Tensor]:
    """{"src": [N, max_len] source (PAD-padded), "tgt_in": [N, T] BOS y, "tgt_out": [N, T] y EOS}, T = max_len+1."""
    N, T = len(strings), max_len + 1
    src = torch.full((N, max_len), PAD, dtype=torch.long)
    tgt_in = torch.full((N, T), PAD, dtype=torch.long)
    tgt_out = torch.full((N, T), PAD, dtype=torch.long)
    for i, s in enumerate(strings):
        t = [DIGIT0 + d for d in target_of(s, task)]
        src[i, :len(s)] = torch.tensor([DIGIT0 + d for d in s])
        tgt_in[i, :len(t) + 1] = torch.tensor([BOS] + t)      # decoder reads BOS y_1 .. y_n
        tgt_out[i, :len(t) + 1] = torch.tensor(t + [EOS])     # and predicts  y_1 .. y_n EOS
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


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
    """EncoderDecoder: (source [B, S], decoder input [B, T]) -> logits [B, T, V]."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.S = config.max_len
        self.net = EncoderDecoder(VOCAB, VOCAB, d_model=config.d_model, n_heads=config.n_heads,
                                  num_layers=config.layers, d_ff=config.d_ff, dropout=config.dropout,
                                  max_len=config.max_len + 2)
        for emb in (self.net.encoder.embed, self.net.decoder.embed):
            # token embeddings ~ N(0, 1/d): after the sqrt(d) scaling they are O(1), like the sinusoidal
            # positions, instead of drowning them (the positions are all that reversal depends on)
            nn.init.normal_(emb.weight, std=config.d_model ** -0.5)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
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


def batch_metrics(model: Seq2Seq, batch: dict) -> dict:
    """Teacher-forced loss -(1/T) sum_t log p(y_t | y_<t, x) over real tokens, exact match, token accuracy."""
    logits = model(batch["src"], batch["tgt_in"]).float()
    y = batch["tgt_out"]
    B, T, V = logits.shape
    assert y.shape == (B, T), (logits.shape, y.shape)
    nll = F.cross_entropy(logits.reshape(B * T, V), y.reshape(-1), reduction="none").view(B, T)
    real = y != PAD
    loss = (nll * real).sum(1) / real.sum(1)
    pred = logits.argmax(-1)
    return {"loss": loss.mean(),
            "exact_match": ((pred == y) | ~real).all(1).float().mean(),           # all tokens right
            "token_accuracy": (((pred == y) & real).sum(1).float() / real.sum(1)).mean()}


def exact_match(model: Seq2Seq, src: torch.Tensor, y: torch.Tensor, batch_size: int = 500
                ) -> tuple[float, torch.Tensor]:
    """(fraction of strings greedy decoding gets exactly right, the decoded tokens [N, S+1])."""
    model.eval()
    preds = [model.greedy(src[i:i + batch_size]) for i in range(0, len(src), batch_size)]
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


def _data(config: Seq2SeqConfig) -> dict[str, dict[str, torch.Tensor]]:
    return {k: encode_pairs(v, config.task, config.max_len) for k, v in make_strings(config).items()}


def train(config: Seq2SeqConfig, run: Run | None = None) -> dict:
    """Train with teacher forcing, keep the best by val/exact_match, report greedy test exact match."""
    run = Run.start("seq2seq", config, run)
    data = _data(config)
    model = Seq2Seq(config)
    trainer = Trainer(model, config, run)

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: batch_metrics(model, b), data["valid"], device=run.device)
        return {f"val/{k}": v for k, v in m.items()}

    fit = trainer.fit(lambda b: batch_metrics(model, b), TensorBatches(data["train"], config.batch_size,
                                                                       seed=config.seed),
                      val_fn=val_fn, monitor="val/exact_match", mode="max")
    load_weights(model, run.dir).to("cpu")
    em, _ = exact_match(model, data["test"]["src"], data["test"]["tgt_out"])
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch,
           "best_val_exact_match": fit.best_value, "test_exact_match": em}
    run.finish(out, step=fit.step, metrics={"test/exact_match": em})
    out["model"] = model
    return out


def load_model(run_dir: str | Path, tag: str = "best") -> tuple[Seq2Seq, Seq2SeqConfig]:
    """The run's best model (eval mode, CPU) and its config."""
    config = config_of(run_dir, "seq2seq")
    return load_weights(Seq2Seq(config), run_dir, tag), config


@dataclasses.dataclass
class SplitOptions(EvalOptions):
    """Options of `mlcanon eval` on a seq2seq run."""

    split: str = option("test", "which generated held-out split to score", choices=("test", "valid"))


def evaluate(run_dir: str | Path, options: SplitOptions | None = None) -> dict:
    """Greedy exact match on the regenerated held-out split."""
    options = options or SplitOptions()
    model, config = load_model(run_dir)
    d = _data(config)[options.split]
    em, _ = exact_match(model, d["src"], d["tgt_out"])
    return {f"{options.split}/exact_match": em}


def sample(run_dir: str | Path, n: int = 20, out: str | Path | None = None, options: SampleOptions | None = None
           ) -> Path:
    """A text file of ``n`` test strings: input -> greedy output (truth), printed too."""
    model, config = load_model(run_dir)
    d = _data(config)["test"]
    n = min(n, len(d["src"]))
    _, pred = exact_match(model, d["src"][:n], d["tgt_out"][:n])
    lines = [f"# {config.task}: input -> greedy output   (expected; x = wrong)"]
    for i in range(n):
        src, got, want = decode_text(d["src"][i]), decode_text(pred[i]), decode_text(d["tgt_out"][i])
        lines.append(f"{src:>{config.max_len}} -> {got:<{config.max_len}}  ({want})" + ("" if got == want else " x"))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(out) if out else Path(run_dir) / "samples.txt"
    out.write_text(text)
    return out


register("seq2seq", family="supervised", config=Seq2SeqConfig,
         description="encoder-decoder transformer reversing / sorting digit strings (greedy, exact match)",
         evaluate=evaluate, sample=sample, load=lambda run_dir, config, tag: load_model(run_dir, tag)[0],
         eval_options=SplitOptions,
         tiny={"num_train": 128, "num_val": 32, "num_test": 32, "d_model": 16, "n_heads": 2, "layers": 1,
               "d_ff": 32, "epochs": 2, "batch_size": 32, "max_len": 5, "checkpoint_every": 2})(train)
