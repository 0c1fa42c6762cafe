"""The deep-RL bench's mapping of our DQN options onto SB3's arguments: at rl-zoo's values it must give exactly
rl-zoo's CartPole-v1 arguments (so "SB3 given our values" runs the same algorithm as ours)."""

from mlcanon.bench.deep_rl import DQN_ZOO, ZOO, sb3_dqn_kwargs
from mlcanon.rl.dqn import DQNConfig


def test_sb3_arguments_at_zoo_values_are_zoo_s():
    kw = sb3_dqn_kwargs(DQN_ZOO)
    for k, v in ZOO["dqn"]["kw"].items():
        assert kw[k] == v, (k, kw[k], v)
    # the rest are SB3's own defaults (DQN(tau=1.0, exploration_initial_eps=1.0, max_grad_norm=10))
    assert {k: kw[k] for k in set(kw) - set(ZOO["dqn"]["kw"])} == {
        "tau": 1.0, "exploration_initial_eps": 1.0, "max_grad_norm": 10.0}


def test_sb3_arguments_follow_our_defaults():
    c, kw = DQNConfig(), sb3_dqn_kwargs()
    assert (kw["policy_kwargs"]["net_arch"], kw["train_freq"], kw["gradient_steps"]) == (
        list(c.hidden), c.train_every, c.gradient_steps)
