"""LSTM language model: embedding, stacked LSTM, softmax (Zaremba, Sutskever & Vinyals 2014; Graves 2013).

    e_t = E[x_t];   (h_t, c_t) = LSTM(e_t, (h_{t-1}, c_{t-1}))   (gates i, f, g, o; Hochreiter & Schmidhuber 1997)
    p(x_{t+1} | x_<=t) = softmax(W h_t + b)

Trained with teacher forcing on random windows, each window from a zero state (truncated BPTT of length T).
Sampling carries (h, c): one LSTM step per token. Uses ``torch.nn.LSTM`` (its fused kernel; the
from-the-equations LSTM with the same parameter layout is :class:`mlcanon.nn.LSTM`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.generative.autoregressive.language import (
    LMConfig,
    LMEvalOptions,
    LMHooks,
    LMSampleOptions,
    cross_entropy_loss,
    load_text,
    sequence_log_prob,
    train_language_model,
)
from mlcanon.registry import register
from mlcanon.runs import Run


class LSTMLM(nn.Module):
    """Embedding -> LSTM (``layers`` deep) -> dropout -> linear to the vocabulary; ``forward`` returns
    (logits, (h, c))."""

    context = None   # no window limit: the state carries the whole past

    def __init__(self, vocab_size: int, width: int = 256, layers: int = 2, dropout: float = 0.0,
                 tie_weights: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.lstm = nn.LSTM(width, width, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        # tied: logits = E h + b, the embedding matrix is the output weight (one copy in the checkpoint)
        self.head = None if tie_weights else nn.Linear(width, vocab_size)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size)) if tie_weights else None

    def forward(self, idx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        h, state = self.lstm(self.drop(self.embed(idx)), state)            # h_t for every t
        h = self.drop(h)
        if self.head is None:
            return F.linear(h, self.embed.weight, self.out_bias), state      # logits E h_t + b
        return self.head(h), state                                          # logits W h_t + b

    def step(self, new: torch.Tensor, state):
        return self(new, state)                                             # (h, c) is the whole cache

    def loss(self, batch: dict) -> dict:
        return cross_entropy_loss(self, batch)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum_{t>=2} log p(x_t | x_<t) [B] (nats)."""
        return sequence_log_prob(self, x)


@dataclasses.dataclass
class LSTMLMConfig(LMConfig):
    """LSTM language model on text (same data, budget and optimizer defaults as gpt)."""

    layers: int = option(2, "stacked LSTM layers", min=1)
    width: int = option(256, "embedding and hidden size", min=1)
    tie_weights: bool = option(False, "share the input embedding and the output projection")


def build(config: LSTMLMConfig, vocab_size: int) -> LSTMLM:
    return LSTMLM(vocab_size, config.width, config.layers, config.dropout, config.tie_weights)


def train(config: LSTMLMConfig, run: Run | None = None) -> dict:
    """Teacher forcing on random windows of the text (zero initial state); best by validation loss."""
    run = Run.start("lstm-lm", config, run)
    model = build(config, load_text(config, "valid").vocab_size)
    return train_language_model("lstm-lm", config, run, model)


hooks = LMHooks("lstm-lm", build)

register("lstm-lm", family="generative", config=LSTMLMConfig,
         description="LSTM language model (embedding + LSTM + softmax), teacher forcing on random windows",
         evaluate=hooks.evaluate, sample=hooks.sample, load=hooks.load, eval_options=LMEvalOptions,
         sample_options=LMSampleOptions,
         tiny={"layers": 1, "width": 16, "context": 16, "batch_size": 4, "max_steps": 8, "warmup_steps": 2,
               "eval_every": 4, "eval_windows": 8, "checkpoint_every": 4, "sample_length": 20})(train)
