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


def test_fixed_budget_runs_exactly_that_many_env_steps_without_evaluation(tmp_path):
    """``run_ours(..., fixed_steps=n)`` (the bench's cost-only DQN rows): n env steps, no evaluation during training
    and no early stop (``train`` still evaluates once at the end; the rows take the time without it)."""
    import json

    from mlcanon.bench.deep_rl import run_ours
    tiny = {"learning_starts": 50, "train_every": 20, "gradient_steps": 2, "batch_size": 8, "hidden": (8,),
            "buffer_size": 300}
    r = run_ours("dqn", 0, out_dir=str(tmp_path), overrides=tiny, fixed_steps=300)
    assert r["steps"] is None and 0 < r["wall_no_eval_s"] < r["wall_s"]
    (result,) = [json.loads(p.read_text()) for p in tmp_path.rglob("result.json")]
    assert result["step"] == 300 and result["solved_step"] is None
    lines = [json.loads(x) for p in tmp_path.rglob("metrics.jsonl") for x in p.read_text().splitlines()]
    assert {rec["step"] for rec in lines if any(k.startswith("eval/") for k in rec)} == {300}   # the final one


def test_torch_threads_sets_and_restores():
    import torch

    from mlcanon.bench.deep_rl import torch_threads
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
