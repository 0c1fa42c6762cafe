"""Latent diffusion on a frozen autoencoder run: the run folder is validated and its checkpoint pinned by sha256."""

import json

import pytest

from mlcanon.config import build_config
from mlcanon.errors import UserError
from mlcanon.generative.diffusion.latent import LatentDiffusionConfig, file_sha256, load_model
from mlcanon.registry import get
from mlcanon.runs import load_checkpoint, save_checkpoint


def test_latent_diffusion_on_a_vae_run(tmp_runs):
    vae = get("vae")
    vae_dir = vae.train(build_config(vae, ["--dataset", "digits", "--hidden", "16", "--latent", "3", "--max-steps",
                                           "4", "--train-subset", "128", "--batch-size", "32", "--out-dir",
                                           str(tmp_runs / "vae"), "--progress", "false"]))["run_dir"]
    algo = get("latent-diffusion")
    flags = ["--dataset", "digits", "--autoencoder", vae_dir, "--train-subset", "128", "--batch-size", "32",
             "--max-steps", "4", "--timesteps", "10", "--width", "16", "--mlp-layers", "2",
             "--out-dir", str(tmp_runs / "ld"), "--progress", "false"]
    config = build_config(algo, flags)
    sha = file_sha256(tmp_runs / vae_dir / "best.safetensors")
    assert config.autoencoder_sha256 == sha                          # recorded when the config is built
    run_dir = algo.train(config)["run_dir"]
    assert json.loads((tmp_runs / run_dir / "config.json").read_text())["config"]["autoencoder_sha256"] == sha
    model = load_model(run_dir)
    x = model.sample(5, sampler="ddim", steps=4)
    assert x.shape == (5, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1   # decoded images
    assert algo.sample(run_dir, 4, tmp_runs / "ld.png", algo.sample_options()).is_file()
    # the autoencoder changes under the run: loading refuses it
    ck, step = load_checkpoint(vae_dir, tag="best")
    name = next(k for k in ck["model"] if k.endswith("weight"))
    ck["model"][name] = ck["model"][name] + 1
    save_checkpoint(vae_dir, ck, tag="best", step=step)
    with pytest.raises(UserError, match="sha256"):
        load_model(run_dir)
    with pytest.raises(UserError, match="is a latent-diffusion run"):
        build_config(algo, ["--autoencoder", run_dir, "--dataset", "digits"])
    with pytest.raises(UserError, match="trained on digits"):
        build_config(algo, ["--autoencoder", vae_dir, "--dataset", "mnist"])
    with pytest.raises(UserError, match="no such run folder"):
        LatentDiffusionConfig(autoencoder=str(tmp_runs / "nope")).check()
