"""CLI-level hooks of the tabular algorithms: train/evaluate/sample write the promised files; resume equals
an uninterrupted run."""

import json

import numpy as np
import pytest

from mlcanon import registry
from mlcanon.config import to_dict
from mlcanon.errors import UserError
from mlcanon.runs import Run, read_metrics

NAMES = ["value-iteration", "policy-iteration", "mc", "td0", "sarsa", "expected-sarsa", "q-learning",
         "nstep-sarsa", "bandit"]


def test_all_names_registered_with_documented_configs():
    for name in NAMES:
        algo = registry.get(name)
        assert algo.family == "rl-tabular" and algo.evaluate and algo.sample
        for f in __import__("dataclasses").fields(algo.config_cls):
            assert f.metadata.get("help"), (name, f.name)


def test_flag_names():
    """An episode's time limit is --max-episode-steps; a budget in env steps is --total-steps."""
    import dataclasses
    for name in NAMES:
        fields = {f.name for f in dataclasses.fields(registry.get(name).config_cls)}
        assert "max_steps" not in fields and "steps" not in fields, name
        assert ("total_steps" if name == "bandit" else "max_episode_steps") in fields, name


def test_num_seeds_are_independent_runs(tmp_runs):
    """Through the CLI entries: seed i of --num-seeds 3 is the run with --seed seed+i --num-seeds 1."""
    def train(name, **kw):
        algo = registry.get(name)
        cfg = algo.config_cls(out_dir=str(tmp_runs), progress=False, **kw)
        return algo.train(cfg, Run.create(name, cfg, enabled=False))     # no files: the results are compared

    kw = {"episodes": 30, "env": "FrozenLake-v1"}
    many, one = train("q-learning", num_seeds=3, seed=5, **kw), train("q-learning", num_seeds=1, seed=7, **kw)
    np.testing.assert_array_equal(one["Q"][0], many["Q"][2])
    np.testing.assert_array_equal(one["result"].returns[0], many["result"].returns[2])
    many, one = train("bandit", num_seeds=3, seed=5, total_steps=100), train("bandit", num_seeds=1, seed=6,
                                                                             total_steps=100)
    np.testing.assert_array_equal(one["result"].actions[0], many["result"].actions[1])
    np.testing.assert_array_equal(one["result"].regret[0], many["result"].regret[1])


def test_q_learning_train_eval_sample(tmp_runs):
    algo = registry.get("q-learning")
    cfg = algo.config_cls(out_dir=str(tmp_runs), episodes=120, num_seeds=8, alpha=0.5, gamma=0.9,
                          progress=False, log_every=10, checkpoint_every=40)
    r = algo.train(cfg)
    d = tmp_runs / r["run_dir"].split("/")[-1]
    for f in ("config.json", "metrics.jsonl", "checkpoint.safetensors", "state.json", "curves_band.png",
              "epsilon.png", "values.png", "policy.png", "result.json", "curves.png"):
        assert (d / f).is_file(), f
    assert not list(d.glob("*.npy"))
    res = json.loads((d / "result.json").read_text())
    assert res["gap"] == pytest.approx(res["dp_optimum"] - res["greedy_return_mean"])
    assert res["gap"] < 0.05 and r["Q"].shape == (8, 16, 4)
    m = read_metrics(d)
    assert [x["step"] for x in m] == list(range(10, 121, 10))
    assert {"rollout/episode_return", "train/epsilon", "eval/gap_to_optimal"} <= set(m[-1])
    assert m[0]["train/epsilon"] > m[-1]["train/epsilon"]
    ev = algo.evaluate(d, algo.eval_options(episodes=20))
    assert ev["episodes"] == 160 and 0.0 < ev["eval/return_mean"] <= 1.0 and ev["eval/return_ci95"] >= 0
    out = algo.sample(d, 10, tmp_runs / "s.png")
    assert out.is_file() and (tmp_runs / "s.txt").read_text().count("t=") >= 1


def test_resume_equals_uninterrupted(tmp_runs, monkeypatch):
    algo = registry.get("sarsa")
    kw = {"episodes": 60, "num_seeds": 5, "alpha": 0.3, "progress": False, "checkpoint_every": 20,
          "log_every": 5, "epsilon_schedule": "exp"}
    straight = algo.train(algo.config_cls(out_dir=str(tmp_runs / "a"), **kw))

    class Killed(Exception):
        pass

    real_save = Run.save

    def save_then_die(self, obj, step, **k):
        real_save(self, obj, step, **k)
        if step == 20:
            raise Killed

    monkeypatch.setattr(Run, "save", save_then_die)
    cfg = algo.config_cls(out_dir=str(tmp_runs / "b"), **kw)
    with pytest.raises(Killed):
        algo.train(cfg)
    monkeypatch.setattr(Run, "save", real_save)
    (run_dir,) = list((tmp_runs / "b").iterdir())
    run, step = Run.reopen(run_dir)
    assert step == 20
    _, cfg2 = registry.algorithm_of_run(run_dir)
    assert to_dict(cfg2) == to_dict(cfg)
    resumed = algo.train(cfg2, run)
    np.testing.assert_array_equal(resumed["Q"], straight["Q"])
    np.testing.assert_array_equal(resumed["result"].returns, straight["result"].returns)
    strip = [{k: v for k, v in x.items()} for x in read_metrics(straight["run_dir"])]
    assert read_metrics(run_dir) == strip


def test_td0_and_dp_and_bandit(tmp_runs):
    td = registry.get("td0")
    r = td.train(td.config_cls(out_dir=str(tmp_runs), episodes=100, num_seeds=4, gamma=0.9, progress=False))
    assert r["value_error_of_seed_mean"] < 0.2 and r["V"].shape == (4, 16)
    ev = td.evaluate(r["run_dir"])                            # against V^pi of the random policy, by DP
    assert ev["eval/value_error_of_seed_mean"] == pytest.approx(r["value_error_of_seed_mean"])
    assert ev["eval/value_error"] == pytest.approx(r["value_error_max"]) and ev["seeds"] == 4
    for name in ("value-iteration", "policy-iteration"):
        algo = registry.get(name)
        r = algo.train(algo.config_cls(out_dir=str(tmp_runs), env="FrozenLake-v1", gamma=0.95, progress=False))
        res = json.loads((tmp_runs / r["run_dir"].split("/")[-1] / "result.json").read_text())
        assert res["dp_optimum"] == pytest.approx(r["V"] @ np.full(16, 0) + r["V"][0])  # start state 0
        ev = algo.evaluate(r["run_dir"], algo.eval_options(episodes=200))
        assert 0.6 < ev["eval/return_mean"] < 0.9          # slippery FrozenLake: optimal success rate ~0.74
    b = registry.get("bandit")
    r = b.train(b.config_cls(out_dir=str(tmp_runs), strategy="thompson", total_steps=300, num_seeds=50,
                             progress=False))
    assert (tmp_runs / r["run_dir"].split("/")[-1] / "regret.png").is_file()
    assert b.evaluate(r["run_dir"])["eval/cumulative_regret"] == pytest.approx(r["cumulative_regret"])
    assert b.sample(r["run_dir"], 1, tmp_runs / "regret.png").is_file()


def test_bad_config_values(tmp_runs):
    algo = registry.get("q-learning")
    with pytest.raises(UserError, match="epsilon-min"):
        algo.train(algo.config_cls(out_dir=str(tmp_runs), epsilon_max=0.1, epsilon_min=0.5))
    with pytest.raises(UserError, match="unknown environment"):
        algo.train(algo.config_cls(out_dir=str(tmp_runs), env="NoSuchEnv-v9"))
    with pytest.raises(UserError, match="--episodes"):
        algo.train(algo.config_cls(out_dir=str(tmp_runs), episodes=0))
