"""DQN's hand-written gradients (:meth:`DQN.backprop`, :meth:`DQN.backprop_host`) and direct fused-Adam step (:meth:`DQN.optimizer_step`) give
what autograd and ``torch.optim.Adam.step()`` give: the gradient against autograd's in float64 (the exact value up
to float64 rounding) within float32's rounding bound, a training phase against the autograd phase, and the Adam
step bitwise (the same kernel on the same state)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from replay_data import random_replay_buffer

from mlcanon.rl.dqn import DQN, DQNConfig
from mlcanon.rl.policies import mlp, mlp_backward, mlp_forward

EPS32 = torch.finfo(torch.float32).eps


def _agent(**kw):
    """(A DQN agent is not deep-copied: nn.Parameter's deepcopy clones its data, cutting the flat-vector views.)"""
    cfg = DQNConfig(device="cpu", progress=False, **{"hidden": (32, 24), "batch_size": 16, **kw})
    torch.manual_seed(0)
    return DQN("CartPole-v1", cfg, device="cpu")


def _autograd_grad(agent, obs, actions, y, dtype):
    """dL/dtheta by autograd on a copy of the Q-network in ``dtype``, as one flat vector."""
    q = copy.deepcopy(agent.q).to(dtype)
    q_sa = q(obs.to(dtype)).gather(1, actions).squeeze(1)
    loss_fn = F.smooth_l1_loss if agent.config.loss == "huber" else F.mse_loss
    loss_fn(q_sa, y.to(dtype).squeeze(1)).backward()
    return torch.cat([p.grad.reshape(-1) for p in q.parameters()]), q_sa


@pytest.mark.parametrize("path", ["torch", "host"])
@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("hidden", [(32, 24), (16,), (8, 8, 8), (48, 40)])
def test_hand_gradient_equals_autograd(path, loss, activation, hidden):
    """Both hand-written steps: ``backprop`` (torch; other devices) and ``backprop_host`` (the CPU's: numpy views,
    products with a dimension < 32 in numpy, wider ones in torch; hidden (48, 40) at B = 48 has such a wide
    product, the others none)."""
    agent = _agent(loss=loss, activation=activation, hidden=hidden)
    assert agent.hand_backprop
    assert agent.host_step                               # the CPU's default
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):                                   # random minibatches
        B = 48
        obs = torch.randn(B, 4, generator=gen)
        actions = torch.randint(2, (B, 1), generator=gen)
        with torch.no_grad():
            q_now = agent.q(obs).gather(1, actions)
        y = q_now + 2.0 * torch.randn(B, 1, generator=gen)   # TD errors on both sides of Huber's |d| = 1
        q_sa = torch.empty(B, 1)
        agent.flat.grad.fill_(float("nan"))              # every entry must be written
        if path == "torch":
            agent.backprop(obs, actions, y, q_sa)
        else:
            agent.backprop_host(obs.numpy(), actions.numpy(), y.numpy(), q_sa.numpy(),
                                agent.loss_derivative_rows(actions).numpy())
        if hidden == (48, 40) and path == "host":
            assert [L.wide for L in agent._host_plan(B).layers] == [False, True, False]
        exact, q64 = _autograd_grad(agent, obs, actions, y, torch.float64)
        ours = agent.flat.grad.double()
        # float32 rounding of sums of at most B + width terms along the chain: |error| <= (B + H) eps32 * scale
        scale = float(exact.abs().max())
        tol = (B + max(hidden)) * EPS32 * scale
        err = float((ours - exact).abs().max())
        assert err <= tol, (err, tol)
        torch.testing.assert_close(q_sa.squeeze(1).double(), q64.detach(), rtol=0, atol=64 * EPS32 * scale + 1e-6)
        # and autograd in float32 sits within the same bound (the bound is not loose for our side only)
        ref32, _ = _autograd_grad(agent, obs, actions, y, torch.float32)
        assert float((ref32.double() - exact).abs().max()) <= tol
        # a wrong derivative (here: the ReLU/tanh factor left out) is far outside that bound
        assert tol < 1e-3 * scale


@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_a_hand_written_phase_trains_as_the_autograd_phase(host, double, loss):
    kw = {"gradient_steps": 6, "lr": 1e-2, "double": double, "loss": loss, "max_grad_norm": 1.0}
    agent, ref = _agent(**kw), _agent(**kw)             # the same initial weights (the same seed)
    agent.host_step = host                               # backprop_host (the CPU's) or backprop (other devices')
    ref.hand_backprop = False                            # DQN.update: autograd, then the same optimizer step
    buf, ref_buf = random_replay_buffer(), random_replay_buffer()
    out, ref_out = agent.train_phase(buf, 0.4), ref.train_phase(ref_buf, 0.4)
    G = agent.config.gradient_steps
    # weights O(1), G Adam steps each rounded in float32 (the gradients agree to ~(B + H) eps, relative)
    atol = 10 * G * EPS32
    for p, r in zip(agent.q.parameters(), ref.q.parameters()):
        torch.testing.assert_close(p, r, rtol=0, atol=atol)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)   # mean loss and Q over the phase
    # the phase moved the weights by O(lr) (the comparison above is not between two unmoved networks)
    assert max(float((p - t).detach().abs().max()) for p, t in zip(agent.q.parameters(), agent.target.parameters())) > 1e-3


def test_optimizer_step_is_adam_step_bitwise():
    """The direct fused-Adam call and ``optimizer.step()`` run the same kernel on the same state: equal bits."""
    agent, ref = _agent(max_grad_norm=0.0, lr=1e-2), _agent(max_grad_norm=0.0, lr=1e-2)
    ref.optimizer = torch.optim.Adam([ref.flat], lr=1e-2, fused=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = torch.randn(agent.flat.numel(), generator=gen)
        agent.flat.grad.copy_(g)
        ref.flat.grad.copy_(g)
        agent.optimizer_step()
        ref.optimizer.step()
        assert torch.equal(agent.flat.detach(), ref.flat.detach())
    st, ref_st = agent.optimizer.state_dict()["state"][0], ref.optimizer.state_dict()["state"][0]
    assert float(st["step"]) == 5                       # the checkpointed step count advanced as step()'s
    for k in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(st[k], ref_st[k]), k


@pytest.mark.parametrize("gain", [1e-3, 1.0])          # |g| below and above the threshold
def test_optimizer_step_clips_as_clip_grad_norm(gain):
    agent = _agent(max_grad_norm=1.0, lr=0.0)           # lr 0: the step leaves theta, the gradient shows the clip
    g = torch.randn(agent.flat.numel(), generator=torch.Generator().manual_seed(0)) * gain
    assert (float(g.norm()) > 1.0) == (gain == 1.0)
    ref = g.clone().requires_grad_()
    ref.grad = g.clone()
    torch.nn.utils.clip_grad_norm_([ref], 1.0)
    agent.flat.grad.copy_(g)
    agent.optimizer_step()
    assert torch.equal(agent.flat.grad, ref.grad)       # the same float32 factor c / (|g| + 1e-6), or none


def test_hand_passes_run_on_a_deep_copy_s_own_weights():
    """policies.mlp_forward / mlp_backward keep the (Linear, activation) list on the Sequential after the first call:
    a deep copy made afterwards must compute with, and write the gradient of, its own layers, not the original's."""
    torch.manual_seed(0)
    net = mlp(4, (8, 8), 2, "relu")
    x = torch.randn(5, 4)
    mlp_forward(x, net)                                   # the list is now cached on net
    twin = copy.deepcopy(net)
    for m in (net, twin):
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(-2.0)
        for m in (net, twin):
            out = mlp_forward(x, m)[-1]
            tol = 16 * EPS32 * float(m(x).abs().max())     # addmm vs nn.Linear: same products, <= 8 + 8 terms
            torch.testing.assert_close(out, m(x), rtol=0, atol=tol)
        assert not torch.allclose(mlp_forward(x, twin)[-1], net(x))
        mlp_backward(mlp_forward(x, twin), twin, torch.ones(5, 2))
    assert all(bool(p.grad.abs().sum() > 0) for p in twin.parameters())
    assert all(bool(p.grad.abs().sum() == 0) for p in net.parameters())   # the original's gradient untouched


@pytest.mark.parametrize("double", [False, True])
def test_phase_targets_in_chunks_are_the_formula_row_by_row(double):
    """td_target passes a phase's next states through the nets 1,024 rows at a time: every row, in the first chunk,
    across a chunk boundary and in the last partial chunk, is y = r + discount (1 - terminated) Q_target(s', a*)
    computed for that row alone (a* = argmax Q_target, or argmax Q for Double DQN)."""
    agent = _agent(double=double, hidden=(32, 24))
    with torch.no_grad():                     # a target net different from the online net (Double DQN shows)
        for p in agent.target.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    gen = torch.Generator().manual_seed(4)
    n = 2 * 1024 + 77
    b = {"next_obs": torch.randn(n, 4, generator=gen), "rewards": torch.randn(n, generator=gen),
         "discount": torch.full((n,), 0.99), "terminated": torch.rand(n, generator=gen) < 0.2}
    y = agent.td_target(b)
    assert y.shape == (n,)
    for i in (0, 1023, 1024, 2047, 2048, n - 1):
        s = b["next_obs"][i:i + 1].double()
        qt = copy.deepcopy(agent.target).double()(s)[0].detach()
        picker = (copy.deepcopy(agent.q).double()(s)[0] if double else qt).detach()
        assert abs(float(picker[0] - picker[1])) > 1e-4      # no near-tie: float32 and float64 pick the same a*
        a_star = int(picker.argmax())
        want = float(b["rewards"][i]) + 0.99 * (not bool(b["terminated"][i])) * float(qt[a_star])
        # float32 passes of a 4-32-24-2 net, O(1) values: within (4 + 32 + 24) eps32 of the float64 row
        assert abs(float(y[i]) - want) <= 60 * EPS32 * max(1.0, abs(want)), (i, float(y[i]), want)
