"""Plots write readable, non-empty PNGs."""

import numpy as np
from matplotlib.image import imread

import mlcanon.rl.envs as E
from mlcanon.rl import dp, plots


def _ok(path):
    img = imread(path)
    assert path.stat().st_size > 2000 and img.shape[0] > 100 and img.std() > 0


def test_value_and_policy_plots(tmp_path):
    env = E.make("mlcanon/SuttonBartoGrid-v0").unwrapped
    V, pi = dp.value_iteration(env.mdp)
    _ok(plots.plot_values(V, env.shape, tmp_path / "v.png", "values", terminal=env.mdp.terminal))
    _ok(plots.plot_policy(pi, env.shape, tmp_path / "p.png", V=V, terminal=env.mdp.terminal))
    _ok(plots.plot_policy(np.full((16, 4), 0.25), env.shape, tmp_path / "p2.png"))
    robot = E.make("mlcanon/RobotGrid-v0").unwrapped
    Vr, pr = dp.value_iteration(robot.mdp)
    _ok(plots.plot_values(Vr, robot.shape, tmp_path / "rv.png", terminal=robot.mdp.terminal))
    _ok(plots.plot_policy(pr, robot.shape, tmp_path / "rp.png", V=Vr, terminal=robot.mdp.terminal))


def test_curves_band(tmp_path):
    rng = np.random.default_rng(0)
    curves = {"a": rng.normal(size=(10, 40)), "b": rng.normal(1, 1, size=(10, 40))}
    _ok(plots.plot_curves_band(curves, tmp_path / "c.png"))
    _ok(plots.plot_curves_band(curves["a"], tmp_path / "c1.png", label="a", smooth=5))
    _ok(plots.plot_schedule(np.linspace(1.0, 0.05, 50), tmp_path / "eps.png"))
