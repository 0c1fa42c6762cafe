"""Training flows: a small learning test against the true density, the run folder's pictures and figures,
eval / sample repeating the training run's figures, and the user errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mlcanon import config as cfg
from mlcanon.config import from_dict, validate
from mlcanon.data import toy2d
from mlcanon.errors import UserError
from mlcanon.generative.flows import glow, planar, realnvp
from mlcanon.generative.flows.common import FlowEvalOptions, FlowSampleOptions, evaluate_flow, sample_flow
from mlcanon.generative.flows.coupling import AffineCoupling, HalfAffineCoupling
from mlcanon.registry import algorithm_of_run


def test_realnvp_learns_8gaussians():
    """Maximum likelihood drives KL(p_true || p_model) from ~3.2 nats at the start to ~0.35 after 300 steps.

    Closed-form truth: 8 Gaussians of std 0.5/sqrt(2) on a circle (mlcanon.data.toy2d)."""
    torch.manual_seed(0)
    config = realnvp.RealNVPConfig(dataset="toy2d:8gaussians", hidden=32, couplings=6, norm="none")
    model = realnvp.build(config, (2,), False)
    g = torch.Generator().manual_seed(0)
    test = toy2d.sample("8gaussians", 2000, generator=g)
    log_p = toy2d.log_prob("8gaussians", test.double()).float()

    def kl() -> float:
        with torch.no_grad():
            return float((log_p - model.log_prob(test)).mean())     # E_p[log p - log q]

    before = kl()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.loss({"x": toy2d.sample("8gaussians", 256, generator=g)})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = kl()
    assert before > 2.0
    assert after < 0.6, (before, after)


@pytest.mark.parametrize("bad", [{"dataset": "digits"}, {"dataset": "toy2d:moons", "alpha": 0.7}])
def test_bad_configs_are_user_errors(bad):
    with pytest.raises(UserError):
        validate(from_dict(realnvp.RealNVPConfig, bad))


def test_planar_refuses_images_and_realnvp_too_many_levels():
    with pytest.raises(UserError, match="toy"):
        validate(planar.PlanarConfig(dataset="mnist"))
    with pytest.raises(UserError, match="levels"):
        validate(realnvp.RealNVPConfig(dataset="mnist", levels=4))
    with pytest.raises(UserError, match="levels"):
        validate(glow.GlowConfig(dataset="mnist", levels=3))


def test_toy_run_folder_and_eval_repeat_the_figures(tmp_path):
    config = planar.PlanarConfig(dataset="toy2d:rings", layers=4, toy_points=400, max_steps=6, batch_size=100,
                                 out_dir=str(tmp_path), progress=False, device="cpu")
    result = planar.train(config)
    run = tmp_path / next(p.name for p in tmp_path.iterdir())
    assert (run / "density.png").is_file() and (run / "samples.png").is_file()
    ev = evaluate_flow(run, FlowEvalOptions())
    assert math.isclose(ev["test/kl_to_truth_nats"], result["test_kl_to_truth_nats"], rel_tol=1e-6)
    assert math.isclose(ev["test/nll_nats"], result["test_nll_nats"], rel_tol=1e-6)
    # KL = E[log p_true] + NLL: a consistency check of the two figures against the closed form
    test = toy2d.load("rings", "test", n=400)
    assert math.isclose(ev["test/kl_to_truth_nats"] - ev["test/nll_nats"],
                        float(test.log_prob(test.x.double()).mean()), rel_tol=1e-6)
    out = sample_flow(run, 50, tmp_path / "s.png", FlowSampleOptions(temperature=0.5))
    assert out.is_file()


def test_glow_on_mnist_reports_bits_per_dim_and_draws(tmp_path, real_data):
    config = glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4, train_subset=32, eval_subset=16,
                             max_steps=2, batch_size=16, out_dir=str(tmp_path), progress=False, device="cpu")
    result = glow.train(config)
    run = tmp_path / next(p.name for p in tmp_path.iterdir())
    for f in ("samples.png", "interpolation.png", "result.json", "checkpoint.safetensors"):
        assert (run / f).is_file(), f
    assert "D ln 256" in result["dequantization"]
    D = 784
    assert math.isclose(result["test_bits_per_dim"], (result["test_nll_nats"] + D * math.log(256)) / (D * math.log(2)),
                        rel_tol=1e-9)
    ev = evaluate_flow(run, FlowEvalOptions())
    assert math.isclose(ev["test/bits_per_dim"], result["test_bits_per_dim"], rel_tol=1e-6)   # same seed, same u
    ev1 = evaluate_flow(run, FlowEvalOptions(seed=1))
    assert ev1["test/bits_per_dim"] != ev["test/bits_per_dim"]                                  # another u
    sample_flow(run, 4, tmp_path / "g.png", FlowSampleOptions(interpolate=True))
    assert (tmp_path / "g-interp.png").is_file()


def test_glow_run_folders_written_before_the_coupling_option_rebuild_the_masked_architecture(tmp_path):
    """config.json of an old Glow run has no "coupling" field: it reads as "masked" (the channel-mask coupling
    whose net sees all C channels), so the old weights load; new runs and --config files default to "half"."""
    old = cfg.to_dict(glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4, coupling="masked"))
    del old["coupling"]
    (tmp_path / "config.json").write_text(json.dumps({"algorithm": "glow", "config": old}))
    _, config = algorithm_of_run(tmp_path)
    assert config.coupling == "masked" and glow.GlowConfig().coupling == "half"
    torch.manual_seed(0)
    weights = glow.build(glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4, coupling="masked"),
                         (1, 28, 28), True).state_dict()
    rebuilt = glow.build(config, (1, 28, 28), True)
    rebuilt.load_state_dict(weights)                                   # strict: same names and shapes
    couplings = [m for m in rebuilt.modules() if isinstance(m, (AffineCoupling, HalfAffineCoupling))]
    assert couplings and all(isinstance(m, AffineCoupling) for m in couplings)
    assert [m.net.net[0].in_channels for m in couplings] == [4, 8]    # all C channels (masked) in
    with pytest.raises(RuntimeError):                                  # the new architecture has other shapes
        glow.build(glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4), (1, 28, 28), True) \
            .load_state_dict(weights)
    (tmp_path / "file.json").write_text(json.dumps({"dataset": "mnist", "hidden": 4}))
    assert cfg.load_file(glow.GlowConfig, tmp_path / "file.json").coupling == "half"   # a --config file: default


def test_glow_coupling_scale_defaults_to_sigmoid_on_images_and_old_runs_keep_tanh(tmp_path):
    """New image Glows use Glow's sigmoid(h + 2) scale; config.json written before the --scale option reads as
    "tanh" so that its weights (with the per-channel bound c) load; toys keep tanh; sigmoid where it is not
    implemented is a clear error."""
    from mlcanon.errors import UserError
    new = glow.build(glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4), (1, 28, 28), True)
    assert {m.scale for m in new.modules() if isinstance(m, HalfAffineCoupling)} == {"sigmoid"}
    old = cfg.to_dict(glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4, scale="tanh"))
    del old["scale"]
    (tmp_path / "config.json").write_text(json.dumps({"algorithm": "glow", "config": old}))
    _, config = algorithm_of_run(tmp_path)
    assert config.scale == "tanh" and config.coupling == "half"
    torch.manual_seed(0)
    weights = glow.build(glow.GlowConfig(dataset="mnist", levels=2, steps=1, hidden=4, scale="tanh"),
                         (1, 28, 28), True).state_dict()
    assert any(k.endswith("scale_bound") for k in weights)
    glow.build(config, (1, 28, 28), True).load_state_dict(weights)     # strict: same names and shapes
    with pytest.raises(RuntimeError):
        new.load_state_dict(weights)
    assert glow.GlowConfig(dataset="toy2d:moons").coupling_scale == "tanh"
    with pytest.raises(UserError, match="--scale tanh"):
        glow.GlowConfig(dataset="mnist", coupling="masked", scale="sigmoid").check()
