"""Recurrent networks from the equations: Elman RNN, LSTM cell and multi-layer LSTM, BPTT, gradient clipping.

Parameter names and gate order follow torch (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``; gates stacked as i, f, g, o), so a ``torch.nn.RNN`` / ``torch.nn.LSTM`` state_dict loads
into ours and gives the same outputs (DESIGN.md section 5).

- Elman:  h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
- LSTM:   [i; f; g; o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
          i = sigma(i), f = sigma(f), g = tanh(g), o = sigma(o)      (input, forget, candidate, output)
          c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)            (Hochreiter & Schmidhuber 1997)
- BPTT (Elman, explicit): delta_t = dL/dh_t + W_hh^T (delta_{t+1} * (1 - h_{t+1}^2));
  dL/dW_hh = sum_t (delta_t * (1 - h_t^2)) h_{t-1}^T, etc. Through the chain dh_T/dh_0 = prod_t
  diag(1 - h_t^2) W_hh the gradient shrinks geometrically (vanishing gradients); the LSTM's additive
  cell path dc_t/dc_{t-1} = f_t keeps it when the forget gate is open.
- Gradient-norm clipping: g <- g * min(1, max_norm / ||g||), ||g|| the global L2 norm over all parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LSTM", "ElmanRNN", "LSTMCell", "clip_grad_norm", "elman_bptt"]


def _uniform_(params: Iterable[torch.Tensor], hidden: int) -> None:
    k = 1.0 / math.sqrt(hidden)  # torch's init: U(-1/sqrt(H), 1/sqrt(H))
    for p in params:
        nn.init.uniform_(p, -k, k)


def _check_input(x: torch.Tensor, input_size: int, batch_first: bool) -> torch.Tensor:
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"recurrent layer: expected input [B, T, {input_size}] (batch_first) or "
                        f"[T, B, {input_size}], got {list(x.shape)}")
    return x if batch_first else x.transpose(0, 1)


class ElmanRNN(nn.Module):
    """Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), stacked ``num_layers`` deep (torch names)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ElmanRNN: num_layers must be >= 1, got {num_layers}")
        self.input_size, self.hidden_size, self.num_layers, self.batch_first = (input_size, hidden_size,
                                                                                 num_layers, batch_first)
        for layer in range(num_layers):
            d_in = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(hidden_size, d_in)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(hidden_size, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(hidden_size)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(hidden_size)))
        _uniform_(self.parameters(), hidden_size)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> (outputs [B, T, H] of the last layer, h_T [num_layers, B, H]) like torch.nn.RNN."""
        x = _check_input(x, self.input_size, self.batch_first)
        B, T, _ = x.shape
        hs = []
        for layer in range(self.num_layers):
            W_ih, W_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            b = getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")
            h = x.new_zeros(B, self.hidden_size) if h0 is None else h0[layer]
            xw = x @ W_ih.T + b  # W_ih x_t + b for all t at once
            outs = []
            for t in range(T):
                h = torch.tanh(xw[:, t] + h @ W_hh.T)  # h_t = tanh(W_ih x_t + b + W_hh h_{t-1})
                outs.append(h)
            x = torch.stack(outs, dim=1)
            hs.append(h)
        out = x if self.batch_first else x.transpose(0, 1)
        return out, torch.stack(hs)


def elman_bptt(x: torch.Tensor, h0: torch.Tensor, W_ih: torch.Tensor, W_hh: torch.Tensor, b: torch.Tensor,
               grad_h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Backpropagation through time for one Elman layer, by the explicit recursion (no autograd).

    x [B, T, D], h0 [B, H], grad_h [B, T, H] = dL/dh_t from the loss directly. Returns dL/dW_ih, dL/dW_hh,
    dL/db, dL/dh0 and dL/dx.
    """
    _B, T, _D = x.shape
    hs = [h0]
    for t in range(T):
        hs.append(torch.tanh(x[:, t] @ W_ih.T + hs[-1] @ W_hh.T + b))  # forward pass, keep h_t
    gW_ih, gW_hh, gb = torch.zeros_like(W_ih), torch.zeros_like(W_hh), torch.zeros_like(b)
    gx = torch.zeros_like(x)
    carry = torch.zeros_like(h0)  # W_hh^T (delta_{t+1} * (1 - h_{t+1}^2))
    for t in reversed(range(T)):
        delta = grad_h[:, t] + carry  # delta_t = dL/dh_t (direct) + from the future
        da = delta * (1 - hs[t + 1] ** 2)  # through tanh: d tanh(a)/da = 1 - tanh(a)^2
        gW_ih += da.T @ x[:, t]  # dL/dW_ih += da_t x_t^T
        gW_hh += da.T @ hs[t]  # dL/dW_hh += da_t h_{t-1}^T
        gb += da.sum(0)
        gx[:, t] = da @ W_ih  # dL/dx_t = W_ih^T da_t
        carry = da @ W_hh  # W_hh^T da_t -> dL/dh_{t-1}
    return {"W_ih": gW_ih, "W_hh": gW_hh, "b": gb, "h0": carry, "x": gx}


class LSTMCell(nn.Module):
    """One LSTM step from the gate equations; torch.nn.LSTMCell's names (weight_ih, weight_hh, bias_ih, bias_hh)."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float | None = None):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        _uniform_(self.parameters(), hidden_size)
        if forget_bias is not None:
            _set_forget_bias(self.bias_ih, self.bias_hh, hidden_size, forget_bias)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D], (h, c) [B, H] each -> (h', c')."""
        B = x.shape[0]
        if state is None:
            z = x.new_zeros(B, self.hidden_size)
            state = (z, z)
        return lstm_step(x @ self.weight_ih.T + self.bias_ih, state, self.weight_hh, self.bias_hh)


def _set_forget_bias(b_ih: torch.Tensor, b_hh: torch.Tensor, H: int, value: float) -> None:
    with torch.no_grad():
        b_ih[H:2 * H] = value  # gate order i, f, g, o: the forget slice is rows H..2H
        b_hh[H:2 * H] = 0.0


def lstm_step(xw: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], W_hh: torch.Tensor,
              b_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM update given xw = W_ih x_t + b_ih (precomputed): returns (h_t, c_t)."""
    h, c = state
    gates = xw + h @ W_hh.T + b_hh  # [i; f; g; o] pre-activations
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g  # c_t = f * c_{t-1} + i * g
    h = o * torch.tanh(c)  # h_t = o * tanh(c_t)
    return h, c


class LSTM(nn.Module):
    """Multi-layer LSTM over a sequence; torch.nn.LSTM's parameter names and gate order (i, f, g, o)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = True,
                 forget_bias: float | None = None, dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LSTM: num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LSTM: dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size, self.num_layers, self.batch_first = (input_size, hidden_size,
                                                                                 num_layers, batch_first)
        self.dropout = dropout
        H = hidden_size
        for layer in range(num_layers):
            d_in = input_size if layer == 0 else H
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * H, d_in)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * H, H)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * H)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(4 * H)))
        _uniform_(self.parameters(), H)
        if forget_bias is not None:
            for layer in range(num_layers):
                _set_forget_bias(getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}"), H,
                                 forget_bias)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, T, D] -> (outputs [B, T, H], (h_T, c_T) [num_layers, B, H]) like torch.nn.LSTM."""
        x = _check_input(x, self.input_size, self.batch_first)
        B, T, _ = x.shape
        hT, cT = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout)  # between layers, as torch
            W_ih, b_ih = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"bias_ih_l{layer}")
            W_hh, b_hh = getattr(self, f"weight_hh_l{layer}"), getattr(self, f"bias_hh_l{layer}")
            if state is None:
                z = x.new_zeros(B, self.hidden_size)
                hc = (z, z)
            else:
                hc = (state[0][layer], state[1][layer])
            xw = x @ W_ih.T + b_ih  # input projections for every t at once
            outs = []
            for t in range(T):
                hc = lstm_step(xw[:, t], hc, W_hh, b_hh)
                outs.append(hc[0])
            x = torch.stack(outs, dim=1)
            hT.append(hc[0])
            cT.append(hc[1])
        out = x if self.batch_first else x.transpose(0, 1)
        return out, (torch.stack(hT), torch.stack(cT))


def clip_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale all gradients in place by min(1, max_norm / ||g||), ||g|| the global L2 norm; return ||g||."""
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.sqrt(sum((g.detach().double() ** 2).sum() for g in grads))  # ||g|| = sqrt(sum_i g_i^2)
    scale = min(1.0, max_norm / (float(total) + 1e-12))  # min(1, max_norm / ||g||)
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)  # g <- g * scale
    return total.to(grads[0].dtype)
