"""BERT-style masked-token pretraining (Devlin et al., NAACL 2019) on the same text, with a small fine-tuning task.

A transformer ENCODER (the GPT blocks of :mod:`gpt` with ``causal=False``: every token attends to every other)
is trained to recover corrupted tokens. 15% of the positions are chosen; of those 80% become [MASK], 10% a
random token, 10% stay (section 3.1, "Task #1"); the loss is the cross-entropy on the chosen positions only:

    L = -1/|M| sum_{t in M} log p(x_t | x~),   p(. | x~) = softmax(LN(h_t) E^T + b)   (tied output)

``--attention causal`` keeps the causal mask instead, so a token sees only its left context: the contrast that
makes full self-attention the right choice for an encoder (its masked-token loss is much lower).

Fine-tuning (section 4): a linear layer on the mean of the encoder's outputs, trained with the whole encoder on
a classification task the corpus gives: which speaker says a speech (tiny-shakespeare's "NAME:" headings; the
``finetune_speakers`` most frequent speakers), scored on a held-out 20% of the speeches beside the majority
class baseline. Reported by training (``speaker_accuracy``) and by ``mlcanon eval``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.generative.autoregressive.gpt import Block
from mlcanon.generative.autoregressive.language import LMConfig, load_text, windows
from mlcanon.registry import EvalOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import Trainer, WindowBatches, evaluate_in_batches, generator, make_optimizer


class BERT(nn.Module):
    """Transformer encoder over V tokens + [MASK] (id V); ``forward(idx) -> hidden [B, T, d]``."""

    def __init__(self, vocab_size: int, context: int = 64, layers: int = 4, heads: int = 4, width: int = 128,
                 dropout: float = 0.0, causal: bool = False):
        super().__init__()
        self.vocab_size, self.mask_id, self.context = vocab_size, vocab_size, context
        self.wte = nn.Embedding(vocab_size + 1, width)                       # tokens and [MASK]
        self.wpe = nn.Embedding(context, width)                              # learned positions
        self.blocks = nn.ModuleList(Block(width, heads, dropout, causal=causal) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, T = idx.shape
        h = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            h, _ = block(h)
        return self.ln_f(h)

    def mlm_logits(self, idx: torch.Tensor) -> torch.Tensor:
        return F.linear(self(idx), self.wte.weight[:self.vocab_size], self.out_bias)   # tied: h E^T + b

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None, rate: float = 0.15):
        """(x~, chosen mask): 15% of positions chosen; 80% -> [MASK], 10% -> random token, 10% unchanged."""
        u = torch.rand(x.shape, generator=generator).to(x.device)
        r = torch.rand(x.shape, generator=generator).to(x.device)
        rand_tok = torch.randint(self.vocab_size, x.shape, generator=generator).to(x.device)
        chosen = u < rate
        xt = torch.where(chosen & (r < 0.8), torch.full_like(x, self.mask_id), x)
        xt = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, xt)
        return xt, chosen

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Masked-token cross-entropy on the chosen positions (nats/token) and their accuracy."""
        x = batch["x"]
        xt, chosen = self.corrupt(x, generator)
        logits = self.mlm_logits(xt)[chosen].float()                        # [M, V]
        target = x[chosen]
        return {"loss": F.cross_entropy(logits, target), "mlm_accuracy": (logits.argmax(-1) == target).float().mean()}


class SpeakerClassifier(nn.Module):
    """Fine-tuning head: softmax(W mean_t h_t + b) over the speakers."""

    def __init__(self, encoder: BERT, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.ln_f.normalized_shape[0], classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(idx).mean(1))


# ------------------------------------------------------------------------------------- speaker task
def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs from play text whose blocks read "NAME:\\nlines" separated by blank lines."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        head, _, body = block.strip().partition("\n")
        if head.endswith(":") and body.strip() and len(head) <= 40:
            out.append((head[:-1].strip(), body.strip()))
    return out


def speaker_task(config: BERTConfig, tokenizer, classes: int, seed: int = 0):
    """(x_train, y_train, x_test, y_test, names): the first ``context`` tokens of each speech of the ``classes``
    most frequent speakers (space-padded), split 80/20 by a seeded shuffle; None with fewer than 2 speakers."""
    from mlcanon.data import load
    full = "".join(load(config.dataset, s, data_dir=config.data_dir, tokenizer=config.tokenizer,
                        block_size=config.context).text for s in ("train", "valid", "test"))
    pairs = speeches(full)
    counts: dict[str, int] = {}
    for s, _ in pairs:
        counts[s] = counts.get(s, 0) + 1
    names = sorted(counts, key=lambda s: (-counts[s], s))[:classes]
    if len(names) < 2:
        return None
    pad = tokenizer.encode(" ")[0]
    xs, ys = [], []
    for s, body in pairs:
        if s in names:
            ids = tokenizer.encode(body)[:config.context]
            xs.append(ids + [pad] * (config.context - len(ids)))
            ys.append(names.index(s))
    x, y = torch.tensor(xs, dtype=torch.long), torch.tensor(ys, dtype=torch.long)
    perm = torch.randperm(len(x), generator=generator(seed, 2024))
    cut = int(0.8 * len(x))
    tr, te = perm[:cut], perm[cut:]
    return x[tr], y[tr], x[te], y[te], names


def finetune_speakers(encoder: BERT, config: BERTConfig, tokenizer, *, steps: int, classes: int, lr: float = 3e-4,
                      batch_size: int = 32, seed: int = 0, device="cpu") -> dict:
    """Fine-tune a copy of the encoder + a linear head on the speaker task; held-out accuracy vs majority."""
    task = speaker_task(config, tokenizer, classes, seed)
    if task is None:
        return {}
    xtr, ytr, xte, yte, names = task
    torch.manual_seed(seed)
    clf = SpeakerClassifier(copy.deepcopy(encoder), len(names)).to(device)     # the run's weights stay as they are
    opt = make_optimizer("adamw", clf.parameters(), lr, weight_decay=0.01)
    g = generator(seed, 77)
    clf.train()
    for _ in range(steps):
        idx = torch.randint(len(xtr), (min(batch_size, len(xtr)),), generator=g)
        loss = F.cross_entropy(clf(xtr[idx].to(device)), ytr[idx].to(device))   # -log softmax(W h + b)_y
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    acc = evaluate_in_batches(lambda b: {"acc": (clf(b["x"]).argmax(-1) == b["y"]).float().mean()},
                              {"x": xte, "y": yte}, batch_size=256, device=device)["acc"]
    majority = float(torch.bincount(yte, minlength=len(names)).max()) / len(yte)
    return {"speaker_accuracy": acc, "speaker_majority_baseline": majority, "speaker_classes": len(names),
            "speaker_test_examples": len(yte)}


# ------------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class BERTConfig(LMConfig):
    """BERT-style masked-token pretraining on text, then speaker-classification fine-tuning."""

    layers: int = option(4, "transformer blocks", min=1)
    heads: int = option(4, "attention heads", min=1)
    width: int = option(128, "model width d (divisible by --heads)", min=1)
    attention: str = option("full", "self-attention: full (an encoder) or causal (left context only)",
                            choices=("full", "causal"))
    finetune_steps: int = option(300, "speaker-classification fine-tuning steps after pretraining (0: skip)", min=0)
    finetune_speakers: int = option(4, "most frequent speakers in the fine-tuning task", min=2)
    samples: int = option(0, "unused by bert (it does not generate text)", min=0)


def build(config: BERTConfig, vocab_size: int) -> BERT:
    return BERT(vocab_size, config.context, config.layers, config.heads, config.width, config.dropout,
                causal=config.attention == "causal")


def train(config: BERTConfig, run: Run | None = None) -> dict:
    """Masked-token pretraining on random windows (best by validation MLM loss), then fine-tuning."""
    run = Run.start("bert", config, run)
    train_ds, val_ds = load_text(config, "train"), load_text(config, "valid")
    model = build(config, train_ds.vocab_size)
    trainer = Trainer(model, config, run)
    data = WindowBatches(train_ds.ids.to(run.device), config.context, config.batch_size, seed=config.seed)
    val = windows(val_ds.ids, config.context, config.eval_windows)

    def val_fn() -> dict:   # the same corruption every time: a fixed generator
        g = generator(config.seed, 99)
        m = evaluate_in_batches(lambda b: model.loss(b, g), val, batch_size=64, device=run.device)
        return {"val/loss": m["loss"], "val/mlm_accuracy": m["mlm_accuracy"]}

    fit = trainer.fit(lambda b: model.loss(b), data, val_fn=val_fn, monitor="val/loss")
    out = {"run_dir": str(run.dir), "step": fit.step, "best_val_loss": fit.best_value}
    if run.dist.is_main:
        load_weights(model, run.dir, "best")
        if config.finetune_steps:
            out.update(finetune_speakers(model, config, train_ds.tokenizer, steps=config.finetune_steps,
                                         classes=config.finetune_speakers, seed=config.seed, device=run.device))
        run.finish(out, step=fit.step, metrics={k: v for k, v in out.items() if k.startswith("speaker_acc")})
    out["model"] = model
    return out


@dataclasses.dataclass
class BERTEvalOptions(EvalOptions):
    """Options of `mlcanon eval` on a bert run: masked-token loss, then speaker fine-tuning."""

    split: str = option("valid", "split scored by the masked-token loss", choices=("test", "valid", "train"))
    finetune_steps: int = option(300, "fine-tuning steps of the speaker task (0: skip)", min=0)


def load_model(run_dir: str | Path, config=None, tag: str = "best") -> BERT:
    config = config if config is not None else config_of(run_dir, "bert")
    return load_weights(build(config, load_text(config, "valid").vocab_size), run_dir, tag)


def evaluate(run_dir: str | Path, options: BERTEvalOptions | None = None) -> dict:
    """Masked-token loss and accuracy on a split (seeded corruption), and fine-tuned speaker accuracy."""
    options = options or BERTEvalOptions()
    config = config_of(run_dir, "bert")
    model = load_model(run_dir, config)
    ds = load_text(config, options.split)
    g = generator(options.seed, 99)
    with torch.no_grad():
        m = evaluate_in_batches(lambda b: model.loss(b, g), windows(ds.ids, config.context), batch_size=64)
    out = {"eval/mlm_loss": m["loss"], "eval/mlm_accuracy": m["mlm_accuracy"],
           "eval/mlm_bits_per_token": m["loss"] / math.log(2)}
    if options.finetune_steps:
        ft = finetune_speakers(model, config, ds.tokenizer, steps=options.finetune_steps,
                               classes=config.finetune_speakers, seed=options.seed)
        out.update({f"eval/{k}": v for k, v in ft.items()})
    return out


register("bert", family="generative", config=BERTConfig,
         description="BERT-style masked-token pretraining (full vs causal attention) + speaker fine-tuning",
         evaluate=evaluate, load=load_model, eval_options=BERTEvalOptions,
         tiny={"layers": 1, "heads": 2, "width": 16, "context": 16, "batch_size": 4, "max_steps": 8,
               "warmup_steps": 2, "eval_every": 4, "eval_windows": 8, "checkpoint_every": 4,
               "finetune_steps": 5})(train)
