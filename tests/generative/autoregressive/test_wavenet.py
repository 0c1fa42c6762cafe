"""WaveNet and its signals: receptive field by gradient, normalization by brute force, mu-law round trip."""

import itertools
import math

import torch

from mlcanon.generative.autoregressive.signals import mu_law_decode, mu_law_encode, sinusoid_mixtures
from mlcanon.generative.autoregressive.wavenet import WaveNet


def test_receptive_field_by_gradient():
    torch.manual_seed(0)
    for layers, stacks, k_in in ((3, 1, 2), (2, 2, 3)):
        model = WaveNet(levels=5, channels=4, skip_channels=4, layers=layers, stacks=stacks,
                        input_kernel=k_in).double()
        R = model.receptive_field
        assert R == k_in + stacks * (2 ** layers - 1)
        T, t = 40, 30
        x = torch.randn(2, 5, T, dtype=torch.float64, requires_grad=True)
        model.network(x)[:, :, t].sum().backward()
        seen = torch.nonzero(x.grad.abs().sum((0, 1))).flatten().tolist()
        assert seen == list(range(t - R, t))          # exactly x_{t-R} .. x_{t-1}: causal, nothing of x_t


def test_log_prob_sums_to_one_over_all_sequences():
    torch.manual_seed(0)
    model = WaveNet(levels=3, channels=4, skip_channels=4, layers=2, stacks=1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=4)))
    with torch.no_grad():
        lp = model.log_prob(seqs)
    assert abs(float(torch.logsumexp(lp, 0))) < 1e-10
    assert lp.std() > 0.1


def test_mu_law_round_trip_and_monotone():
    x = torch.linspace(-1, 1, 2001)
    q = mu_law_encode(x)
    assert q.min() == 0 and q.max() == 255 and torch.all(q[1:] >= q[:-1])
    y = mu_law_decode(q)
    # the decoding error is at most half a level in the companded domain: |F(x) - F(y)| <= 1/mu
    F = lambda v: torch.sign(v) * torch.log1p(255 * v.abs()) / math.log(256)
    assert (F(x) - F(y)).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(mu_law_encode(y), q)


def test_sinusoid_mixtures_are_seeded_and_bounded():
    a = sinusoid_mixtures(5, 100, seed=3)
    assert torch.equal(a, sinusoid_mixtures(5, 100, seed=3))
    assert not torch.equal(a, sinusoid_mixtures(5, 100, seed=3, split="test"))
    assert a.abs().max() < 1.0
