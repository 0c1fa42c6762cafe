"""The denoisers (U-Net attention, null label, padding), the objective, learning on toy data, and the CLI."""

import dataclasses
import json

import pytest
import torch

from mlcanon.cli import main
from mlcanon.config import build_config, validate
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.ddpm import DDPMConfig, load_model
from mlcanon.generative.diffusion.model import GaussianDiffusion, ImageDenoiser, MLPDenoiser
from mlcanon.generative.diffusion.schedules import NoiseSchedule, cosine_betas
from mlcanon.nn.unet import UNet
from mlcanon.registry import get
from mlcanon.runs import load_checkpoint


def test_unet_self_attention_gives_a_global_receptive_field():
    """Without normalization (GroupNorm pools over all pixels), a 1-level U-Net of 3x3 convs cannot carry a
    corner pixel to the opposite corner of a 16x16 image; self-attention at the low level does."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16)
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1.0
    for levels, reaches in (((), False), ((1,), True)):
        net = UNet(1, 1, 4, depth=1, norm="none", residual=True, attn_levels=levels, time_dim=8)
        t = torch.tensor([3])
        diff = (net(x, t) - net(x2, t))[0, 0, -1, -1].abs()
        assert (diff > 1e-6) == reaches, (levels, float(diff))


def test_unet_null_label_is_the_unconditional_model():
    torch.manual_seed(0)
    net = UNet(1, 1, 8, depth=2, residual=True, attn_levels=(2,), heads=2, time_dim=16, num_classes=10)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9])
    null = torch.full((3,), 10)
    torch.testing.assert_close(net(x, t), net(x, t, y=null))            # y=None is the null label
    assert not torch.allclose(net(x, t, y=torch.tensor([1, 2, 3])), net(x, t, y=null))
    with pytest.raises(ValueError):
        UNet(1, 1, 4, depth=1)(x, y=null)                                 # no labels without num_classes


def test_image_denoiser_pads_28_to_32_and_crops_back():
    torch.manual_seed(0)
    den = ImageDenoiser(1, (28, 28), base_channels=8, depth=3, channel_mult=(1, 1, 2, 2), attn_levels=(3,),
                        heads=2, num_classes=10)
    assert (den.pad_h, den.pad_w) == (4, 4)
    out = den(torch.randn(2, 1, 28, 28), torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == (2, 1, 28, 28)
    assert ImageDenoiser(1, (28, 28), 8, depth=2).pad_h == 0           # 28 = 4 * 7: no padding at depth 2


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_objective_is_zero_for_the_exact_denoiser(prediction):
    """L_simple regresses f(x_t, t) on its target; for a point mass the exact x_0 is known, so a network that
    outputs the target built from it has zero loss, and eps() recovers the noise from any parametrization."""
    mu = torch.tensor([0.5, -1.0])
    s = NoiseSchedule(cosine_betas(50))

    class Exact(torch.nn.Module):
        def forward(self, x, t, y=None):
            x0 = mu.expand_as(x)
            return s.target(prediction, x0, t, s.eps_from_x0(x, t, x0))
    m = GaussianDiffusion(Exact(), s, (2,), prediction=prediction)
    batch = {"x": mu.expand(64, 2).clone()}
    assert float(m.loss(batch)["loss"]) < 1e-9
    x_t = s.q_sample(batch["x"], torch.arange(64) % 50, torch.randn(64, 2))
    torch.testing.assert_close(m.eps(x_t, torch.arange(64) % 50), s.eps_from_x0(x_t, torch.arange(64) % 50, batch["x"]))


def test_mlp_diffusion_learns_a_gaussian():
    """A few hundred Adam steps on N(mu, 0.1^2 I) data: ancestral samples land near mu with about the right
    spread (eps-prediction, as Ho et al.)."""
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0])
    s = NoiseSchedule(cosine_betas(100))
    m = GaussianDiffusion(MLPDenoiser(2, 64, 2), s, (2,))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(400):
        loss = m.loss({"x": mu + 0.1 * torch.randn(256, 2)})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = m.sample(2000, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    assert (x.mean(0) - mu).abs().max() < 0.1
    assert 0.05 < float(x.std(0).mean()) < 0.2


def test_class_conditional_model_drops_labels_for_cfg():
    torch.manual_seed(0)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen.append(y.clone())
            return torch.zeros_like(x)
    m = GaussianDiffusion(Spy(), NoiseSchedule(cosine_betas(10)), (2,), num_classes=3, p_uncond=0.25)
    m.loss({"x": torch.randn(4000, 2), "y": torch.zeros(4000, dtype=torch.long)})
    frac_null = float((seen[0] == 3).float().mean())
    assert abs(frac_null - 0.25) < 5 * (0.25 * 0.75 / 4000) ** 0.5


def test_config_validation():
    with pytest.raises(UserError, match="--betas"):
        validate(DDPMConfig(schedule="custom"))
    with pytest.raises(UserError, match="channel-mult"):
        validate(DDPMConfig(depth=3))
    with pytest.raises(UserError, match="attn-levels"):
        validate(DDPMConfig(attn_levels=(5,)))
    c = DDPMConfig(schedule="custom", betas=(0.1, 0.2, 0.3))
    validate(c)
    assert c.make_schedule().T == 3


def _tiny_flags(tmp_runs):
    algo = get("ddpm")
    flags = []
    for k, v in algo.tiny.items():
        flags += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return flags + ["--out-dir", str(tmp_runs), "--progress", "false", "--device", "cpu"]


def test_cli_train_sample_eval(tmp_runs, capsys):
    assert main(["train", "ddpm", *_tiny_flags(tmp_runs), "--ema-decay", "0.9"]) == 0
    (run_dir,) = tmp_runs.iterdir()
    ck, _ = load_checkpoint(run_dir)
    assert "ema" in ck                                                    # EMA is part of the checkpoint
    model = load_model(run_dir)
    trained = load_model(run_dir, ema=False)
    name = "net.unet.out.weight"
    torch.testing.assert_close(model.state_dict()[name], ck["ema"]["module." + name])   # sampling uses EMA
    assert not torch.equal(model.state_dict()[name], trained.state_dict()[name])
    out = tmp_runs / "grid.png"
    assert main(["sample", str(run_dir), "--sampler", "ddim", "--steps", "5", "--guidance", "3", "--label", "7",
                 "-n", "16", "--out", str(out)]) == 0
    assert out.is_file() and (tmp_runs / "grid-progress.png").is_file()
    with pytest.raises(UserError, match="--label 12"):
        get("ddpm").sample(run_dir, 4, None, get("ddpm").sample_options(label=12))
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--bound-examples", "16"]) == 0
    text = capsys.readouterr().out
    assert "eval/bound_nats" in text


def test_sampling_repeats_with_the_seed(tmp_runs):
    algo = get("ddpm")
    config = build_config(algo, _tiny_flags(tmp_runs))
    run_dir = algo.train(config)["run_dir"]
    from mlcanon.generative.diffusion.ddpm import DDPMSampleOptions, generate
    model = load_model(run_dir)
    a = generate(model, 6, DDPMSampleOptions(seed=3))[0]
    b = generate(model, 6, DDPMSampleOptions(seed=3))[0]
    c = generate(model, 6, DDPMSampleOptions(seed=4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # classifier guidance with a noisy classifier trained on the same schedule
    clf_algo = get("noisy-classifier")
    clf_config = build_config(clf_algo, ["--dataset", "digits", "--train-subset", "128", "--batch-size", "32",
                                         "--max-steps", "4", "--timesteps", "10", "--base-channels", "8",
                                         "--out-dir", str(tmp_runs), "--progress", "false"])
    clf_dir = clf_algo.train(clf_config)["run_dir"]
    opts = DDPMSampleOptions(classifier=clf_dir, guidance=2.0, label=3, sampler="ddim", steps=5)
    out = algo.sample(run_dir, 8, tmp_runs / "guided.png", opts)
    assert out.is_file()
    from mlcanon.generative.diffusion.ddpm import load_guidance_classifier
    with pytest.raises(UserError, match="another noise schedule"):   # a classifier of T=10, a model of T=20
        load_guidance_classifier(opts, dataclasses.replace(config, timesteps=20))
    assert json.loads((tmp_runs / run_dir / "config.json").read_text())["algorithm"] == "ddpm"


def test_toy2d_run_draws_reverse_trajectories(tmp_runs):
    algo = get("ddpm")
    config = build_config(algo, ["--dataset", "toy2d:moons", "--toy-points", "256", "--batch-size", "64",
                                 "--max-steps", "6", "--timesteps", "10", "--width", "16", "--out-dir",
                                 str(tmp_runs), "--progress", "false"])
    run_dir = algo.train(config)["run_dir"]
    out = algo.sample(run_dir, 32, tmp_runs / "toy.png", algo.sample_options())
    assert out.is_file()
    res = algo.evaluate(run_dir, algo.eval_options(bound_examples=64))
    assert "eval/bound_nats" in res and "eval/bits_per_dim" not in res     # continuous data: nats, no bits/dim
