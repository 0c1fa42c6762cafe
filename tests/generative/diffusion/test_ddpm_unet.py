"""The DDPM U-Net layout (``--res-blocks N``, Ho et al. 2020's num_res_blocks): its size against a count derived
from the paper's description, the same function as diffusers' UNet2DModel given the same weights, learning the
closed-form noise predictor of a point mass, and old runs (no res_blocks in config.json) keeping the compact U-Net.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mlcanon.config import validate
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.ddpm import DDPMConfig, load_model
from mlcanon.generative.diffusion.model import DDPMUNet, GaussianDiffusion, ImageDenoiser
from mlcanon.generative.diffusion.schedules import NoiseSchedule, cosine_betas
from mlcanon.nn.unet import UNet
from mlcanon.registry import get

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "diffusion_vs_diffusers.py"


def paper_count(c_in, c_out, base, mult, n, attn, num_classes=0):
    """Parameters of Ho et al.'s U-Net, counted from its description (not from the code's hs stack): level l has
    C_l = base * mult[l] channels; going down N ResBlocks (+ attention at the listed levels) and a stride-2 conv
    (not after the last level); mid ResBlock, attention, ResBlock; going up at level l, N + 1 ResBlocks whose
    inputs are [h, skip] with skip C_l for the first N and, for the last, the downsample output of level l - 1
    (C_{l-1}; conv_in's C_0 at level 0), then an upsampling conv (not at level 0); GN + 3x3 conv out."""
    C = [base * m for m in mult]
    L, E = len(C), 4 * base
    conv3 = lambda ci, co: 9 * ci * co + co
    gn = lambda c: 2 * c
    attn_p = lambda c: gn(c) + 4 * (c * c + c)                           # GN, W_q, W_k, W_v, W_o with biases
    res = lambda ci, co: (gn(ci) + conv3(ci, co) + E * co + co + gn(co) + conv3(co, co)
                          + (ci * co + co if ci != co else 0))           # 1x1 projection of the skip
    total = conv3(c_in, C[0]) + (base * E + E) + (E * E + E) + (num_classes + 1) * E * (num_classes > 0)
    c = C[0]
    for lv in range(L):
        for _ in range(n):
            total += res(c, C[lv]) + (attn_p(C[lv]) if lv in attn else 0)
            c = C[lv]
        total += conv3(C[lv], C[lv]) if lv < L - 1 else 0
    total += 2 * res(C[-1], C[-1]) + attn_p(C[-1])
    for lv in reversed(range(L)):
        for j in range(n + 1):
            prev = (C[lv + 1] if lv < L - 1 else C[-1]) if j == 0 else C[lv]
            skip = C[lv] if j < n else C[max(lv - 1, 0)]
            total += res(prev + skip, C[lv]) + (attn_p(C[lv]) if lv in attn else 0)
        total += conv3(C[lv], C[lv]) if lv > 0 else 0
    return total + gn(C[0]) + conv3(C[0], c_out)


@pytest.mark.parametrize("c_in,base,mult,n,attn,k", [(1, 32, (1, 2, 2), 1, (2,), 0), (1, 32, (1, 2, 2), 2, (2,), 0),
                                                    (3, 8, (1, 2, 3, 4), 3, (0, 2), 10), (2, 4, (2,), 1, (), 0)])
def test_parameter_count_is_the_papers_layout(c_in, base, mult, n, attn, k):
    net = DDPMUNet(c_in, c_in, base, mult, n, attn, heads=2, num_classes=k)
    assert sum(p.numel() for p in net.parameters()) == paper_count(c_in, c_in, base, mult, n, attn, k)


def _bench_module():
    spec = importlib.util.spec_from_file_location("diffusion_vs_diffusers", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_same_function_as_diffusers_unet2dmodel():
    """With every weight copied across (the benchmark's name map), our network and diffusers' UNet2DModel of the
    same configuration compute the same function: the comparison of their speeds is like for like."""
    pytest.importorskip("diffusers")
    if not BENCH.is_file():
        pytest.skip("benchmarks/ is not in this checkout")
    from diffusers import UNet2DModel
    bench = _bench_module()
    torch.manual_seed(0)
    for n in (1, 2):
        ours = ImageDenoiser(1, (8, 8), base_channels=8, depth=2, channel_mult=(1, 2, 2), attn_levels=(2,),
                             heads=2, dropout=0.0, res_blocks=n).double()
        with torch.no_grad():
            for p in ours.parameters():   # random norms and biases too, so that a swapped pair cannot hide
                p.normal_(0, 0.3)
        theirs = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16, 16),
                             down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                             up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=n,
                             norm_num_groups=8, attention_head_dim=8, flip_sin_to_cos=False, freq_shift=0).double()
        theirs.load_state_dict(bench.to_diffusers_state(ours.state_dict(), n))   # strict: all tensors, same shapes
        x, t = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 17, 999])
        with torch.no_grad():
            a, b = ours(x, t), theirs(x, t).sample
        assert a.abs().mean() > 0.1
        # float64 gives about 1e-15 here; a different time embedding order alone gives 0.13
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * float(b.abs().max()))


def test_learns_the_noise_predictor_of_a_point_mass():
    """For data = one image x0, eps*(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) exactly; training on
    L_simple must bring the network close to it (an untrained one is off by about E||eps||^2 / D = 1)."""
    torch.manual_seed(0)
    s = NoiseSchedule(cosine_betas(20))
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    net = ImageDenoiser(1, (8, 8), base_channels=8, depth=1, channel_mult=(1, 2), attn_levels=(1,), heads=2,
                        dropout=0.0, res_blocks=1)
    model = GaussianDiffusion(net, s, (1, 8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = model.loss({"x": x0.expand(16, -1, -1, -1)})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = torch.arange(20).repeat(4)
    eps = torch.randn(80, 1, 8, 8)
    x_t = s.q_sample(x0.expand(80, -1, -1, -1), t, eps)
    with torch.no_grad():
        err = ((model.eps(x_t, t) - eps) ** 2).mean()
    assert err < 0.2, float(err)                                         # 0.10 here, 1.03 untrained


def test_config_checks():
    validate(DDPMConfig(res_blocks=2))
    with pytest.raises(UserError, match="even"):
        validate(DDPMConfig(res_blocks=1, base_channels=9, heads=1))
    with pytest.raises(UserError, match="--heads"):             # the mid block always has attention
        validate(DDPMConfig(res_blocks=1, attn_levels=(), heads=3))


def test_old_runs_keep_the_compact_unet_and_new_runs_reload(tmp_runs):
    algo = get("ddpm")
    flags = {**algo.tiny, "max_steps": 2, "checkpoint_every": 2}
    args = [a for k, v in flags.items() for a in ("--" + k.replace("_", "-"),
                                                  ",".join(map(str, v)) if isinstance(v, tuple) else str(v))]
    from mlcanon.config import build_config
    old = algo.train(build_config(algo, [*args, "--out-dir", str(tmp_runs / "a"), "--progress", "false"]))["run_dir"]
    cfg_path = Path(old) / "config.json"
    data = json.loads(cfg_path.read_text())
    assert data["config"].pop("res_blocks") == 0                        # today's default: the compact U-Net
    cfg_path.write_text(json.dumps(data))                               # a run written before the field existed
    assert isinstance(load_model(old).net.unet, UNet)
    new = algo.train(build_config(algo, [*args, "--res-blocks", "1", "--out-dir", str(tmp_runs / "b"),
                                         "--progress", "false"]))["run_dir"]
    model = load_model(new)                                             # strict load of the saved weights
    assert isinstance(model.net.unet, DDPMUNet) and model.net.unet.num_res_blocks == 1
    assert model.sample(2, torch.tensor([1, 10]), sampler="ddim", steps=3).shape == (2, 1, 8, 8)


def test_null_label_and_label_errors_are_the_compact_unets():
    """Both U-Nets condition through nn.unet.label_embedding: y=None is the null label K, labels must be [N], and a
    net without classes refuses labels."""
    torch.manual_seed(0)
    net = DDPMUNet(1, 1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), heads=2,
                   num_classes=10)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9])
    null = torch.full((3,), 10)
    torch.testing.assert_close(net(x, t), net(x, t, y=null))
    assert not torch.allclose(net(x, t, y=torch.tensor([1, 2, 3])), net(x, t, y=null))
    for model in (net, UNet(1, 1, 8, depth=1, time_dim=16, num_classes=10)):
        with pytest.raises(ValueError, match=r"labels must be \[N\]"):
            model(x, t, y=torch.zeros(3, 1, dtype=torch.long))
    plain = DDPMUNet(1, 1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(), heads=2)
    with pytest.raises(ValueError, match="takes no labels"):
        plain(x, t, y=null)
