"""PPO's update step: the closed-form gradient is autograd's gradient of the same loss; the categorical fast paths
(sampling, log-probabilities, entropy, numpy greedy action) are torch.distributions.Categorical's numbers."""

import gymnasium as gym
import pytest
import torch
from torch.distributions import Categorical

from mlcanon.rl.policies import ActorCritic
from mlcanon.rl.ppo import PPO, PPOConfig

EPS32 = torch.finfo(torch.float32).eps


def agent(**kw) -> PPO:
    return PPO("CartPole-v1", PPOConfig(**{"device": "cpu", "progress": False, "seed": 3, "hidden": (16, 16), **kw}))


def minibatch(a: PPO, B: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(B, 4, generator=g)
    with torch.no_grad():
        for p in a.net.actor.parameters():            # logits of O(1): pi far from uniform
            p.copy_(torch.randn(p.shape, generator=g))
        actions, logp = a.net.sample(obs)
        values = a.net.value(obs)
    # old log-probabilities off by up to +-0.6: ratios on both sides of [1 - eps, 1 + eps] and inside it
    log_probs = logp + (torch.rand(B, generator=g) - 0.5) * 1.2
    return {"obs": obs, "actions": actions, "log_probs": log_probs,
            "values": values + 0.3 * torch.randn(B, generator=g), "advantages": torch.randn(B, generator=g),
            "returns": values + torch.randn(B, generator=g)}


@pytest.mark.parametrize("activation,ent_coef,clip_vloss,norm_adv", [
    ("tanh", 0.0, False, True), ("tanh", 0.05, True, True), ("relu", 0.05, False, False), ("relu", 0.0, True, True)])
def test_closed_form_gradient_is_autograds(activation, ent_coef, clip_vloss, norm_adv):
    kw = {"activation": activation, "ent_coef": ent_coef, "clip_vloss": clip_vloss, "norm_adv": norm_adv,
          "max_grad_norm": 0.0}
    closed, auto = agent(closed_form_grad=True, **kw), agent(closed_form_grad=False, **kw)
    mb = minibatch(closed)
    auto.net.load_state_dict(closed.net.state_dict())
    ratio = (closed.net.log_prob_entropy(mb["obs"], mb["actions"])[0] - mb["log_probs"]).exp()
    assert (ratio < 0.8).sum() > 5 and (ratio > 1.2).sum() > 5 and ((ratio - 1).abs() < 0.2).sum() > 5
    s1, s2 = closed.update(mb, 0.2), auto.update(mb, 0.2)
    g1, g2 = closed.flat.grad, auto.flat.grad
    assert g2.abs().max() > 1e-2                           # a gradient that could be wrong
    # both sum the same B = 64 products per entry in different orders: a few eps of the largest entry
    torch.testing.assert_close(g1, g2, rtol=0, atol=64 * EPS32 * float(g2.abs().max()))
    torch.testing.assert_close(s1, s2, rtol=64 * EPS32, atol=64 * EPS32)   # same loss, KL, clip fraction


def test_closed_form_step_matches_autograd_with_clipping():
    closed, auto = agent(closed_form_grad=True, max_grad_norm=0.1), agent(closed_form_grad=False, max_grad_norm=0.1)
    mb = minibatch(closed)
    auto.net.load_state_dict(closed.net.state_dict())
    closed.update(mb, 0.2)
    auto.update(mb, 0.2)
    assert float(auto.flat.grad.norm()) == pytest.approx(0.1, rel=1e-4)   # clipped to --max-grad-norm
    torch.testing.assert_close(closed.flat, auto.flat, rtol=0, atol=1e-6)  # one Adam step of lr 1e-3


def test_categorical_fast_paths_are_torch_distributions():
    torch.manual_seed(0)
    net = ActorCritic(4, gym.spaces.Discrete(3), (16,))
    for p in net.actor.parameters():
        torch.nn.init.normal_(p)
    obs = torch.randn(500, 4)
    with torch.no_grad():
        dist = Categorical(logits=net.actor(obs))
        torch.manual_seed(1)
        a_ref = dist.sample()
        torch.manual_seed(1)
        a, logp = net.sample(obs)
        logp2, ent = net.log_prob_entropy(obs, a)
    assert torch.equal(a, a_ref)                          # the same draw from the same random stream
    assert len(torch.unique(a)) == 3
    torch.testing.assert_close(logp, dist.log_prob(a), rtol=0, atol=0)
    torch.testing.assert_close(logp2, dist.log_prob(a), rtol=0, atol=0)
    torch.testing.assert_close(ent, dist.entropy(), rtol=0, atol=4 * EPS32)


def test_parameters_are_views_of_the_flat_vector():
    a = agent()
    b = agent(seed=4)
    assert not torch.equal(a.flat, b.flat)
    b.net.load_state_dict(a.net.state_dict())               # load_state_dict copies into the views
    assert torch.equal(a.flat, b.flat)
    with torch.no_grad():
        b.flat.add_(1.0)                                    # the optimizer's in-place step reaches the modules
    assert torch.equal(b.net.actor[0].weight, a.net.actor[0].weight + 1.0)
