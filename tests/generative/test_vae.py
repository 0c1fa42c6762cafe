"""VAEs: closed-form KL against Monte Carlo, reparameterization gradients, likelihoods, IWAE against a brute-force
integral, CVAE conditioning, and the CLI (train, eval --iwae-k, sample)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from mlcanon.generative.vae import VAE, diag_gaussian_log_prob, gaussian_kl, reparameterize


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.5
    n = 200_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, 4, generator=g, dtype=torch.float64)
    log_ratio = diag_gaussian_log_prob(z, mu, logvar) - diag_gaussian_log_prob(z, torch.zeros_like(z),
                                                                               torch.zeros_like(z))
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    kl = gaussian_kl(mu, logvar)
    assert torch.all((kl - mc).abs() < 5 * se), (kl, mc, se)
    # and the closed form equals torch.distributions' (an independent implementation)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(-1), rtol=1e-12, atol=1e-12)


def test_reparameterization_gradient():
    # E[z^2] = mu^2 + sigma^2 = mu^2 + e^logvar: d/dmu = 2 mu, d/dlogvar = e^logvar
    mu = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    n = 400_000
    z = reparameterize(mu.expand(n), logvar.expand(n), generator=torch.Generator().manual_seed(1))
    (z ** 2).mean().backward()
    # MC standard errors: d/dmu = mean(2 z), d/dlogvar = mean(z sigma eps)
    sigma = math.exp(-0.2)
    assert mu.grad.item() == pytest.approx(2 * 0.7, abs=5 * 2 * sigma / math.sqrt(n))
    assert logvar.grad.item() == pytest.approx(math.exp(-0.4), abs=5 * 2 * sigma * (0.7 + sigma) / math.sqrt(n))


def test_decoder_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    out = torch.randn(5, 1, 4, 4)
    m = VAE((1, 4, 4), 2, hidden=8)
    ref = torch.distributions.Bernoulli(logits=out).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(m.log_likelihood(x, out), ref, atol=1e-5)
    mg = VAE((1, 4, 4), 2, hidden=8, decoder="gaussian")
    xg = torch.rand(5, 1, 4, 4)
    sigma = torch.exp(mg.log_sigma.detach())
    ref = torch.distributions.Normal(out, sigma).log_prob(xg).flatten(1).sum(1)
    assert torch.allclose(mg.log_likelihood(xg, out), ref, atol=1e-4)


def test_iwae_tends_to_brute_force_log_likelihood():
    torch.manual_seed(0)
    m = VAE((1, 3, 3), 1, hidden=8).double()
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5, dtype=torch.float64))
    # log p(x) = log int p(x|z) N(z; 0, 1) dz on a fine grid (1-D latent)
    z = torch.linspace(-12, 12, 40001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        out = m.decoder(z)                                                   # [G, 1, 3, 3]
        lp = m.log_likelihood(x[:, None], out[None]) - 0.5 * (z[:, 0] ** 2 + math.log(2 * math.pi))
        exact = torch.logsumexp(lp, 1) + math.log(float(z[1, 0] - z[0, 0]))
        torch.manual_seed(1)
        iw = m.log_prob_iwae(x, 5000, chunk=1000)
        elbo = torch.stack([m.elbo(x) for _ in range(2000)]).mean(0)
    assert torch.all(elbo <= exact + 1e-9)                   # Jensen: ELBO <= log p(x)
    assert torch.all((iw - exact).abs() < 0.02), (iw, exact)
    assert torch.all(iw >= elbo)                             # the k-sample bound is tighter


def test_cvae_conditions_on_the_label():
    torch.manual_seed(0)
    m = VAE((1, 8, 8), 3, hidden=16, num_classes=10, arch="conv", channels=4)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    assert m.loss({"x": x, "y": y})["loss"].dim() == 0
    with pytest.raises(ValueError):
        m.sample(2)
    a = m.sample(4, label=3, generator=torch.Generator().manual_seed(0))
    b = m.sample(4, label=5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 8, 8) and not torch.equal(a, b)       # same z, another label
    assert m.log_prob_iwae(x, 7, y).shape == (6,)


def test_beta_weights_the_kl_term():
    torch.manual_seed(0)
    m = VAE((1, 4, 4), 2, hidden=8, beta=4.0)
    x = torch.rand(8, 1, 4, 4)
    torch.manual_seed(1)
    out = m.loss({"x": x})
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 4.0 * out["kl"].item(), rel=1e-5)
    assert out["elbo"].item() == pytest.approx(-(out["recon"] + out["kl"]).item(), rel=1e-5)


def test_cli_train_eval_sample(tmp_runs, real_data, capsys):
    from mlcanon.cli import main
    assert main(["train", "vae", "--dataset", "digits", "--hidden", "16", "--latent", "2", "--max-steps", "6",
                 "--train-subset", "128", "--val-subset", "32", "--batch-size", "32", "--out-dir", str(tmp_runs),
                 "--progress", "false"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["eval", run_dir, "--iwae-k", "20", "--num-examples", "50"]) == 0
    ev = json.loads(Path(run_dir, "eval.json").read_text())
    assert 0 < ev["eval/nll_nats"] <= -ev["test/elbo"] + 1.0   # IWAE (k=20) tighter than the 1-sample ELBO
    assert main(["sample", run_dir, "-n", "9", "--temperature", "0.5"]) == 0
    for f in ("samples.png", "reconstructions.png", "latent.png", "interpolations.png", "traversals.png"):
        assert os.path.exists(os.path.join(run_dir, f)), f
    assert json.loads(Path(run_dir, "result.json").read_text())["test_elbo"] < 0


def test_eval_on_another_dataset_scores_its_images(tmp_runs, real_data, capsys):
    """A run trained on grey MNIST with --binarize dynamic is scored on the fixed binarized-MNIST test set."""
    from mlcanon.cli import main
    from mlcanon.data import load
    from mlcanon.errors import UserError
    from mlcanon.generative.vae import VAEEvalOptions, evaluate, load_model
    assert main(["train", "vae", "--dataset", "mnist", "--binarize", "dynamic", "--hidden", "16", "--latent", "2",
                 "--max-steps", "4", "--train-subset", "128", "--val-subset", "32", "--batch-size", "32",
                 "--out-dir", str(tmp_runs), "--progress", "false"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    ev = evaluate(run_dir, VAEEvalOptions(dataset="binarized-mnist", iwae_k=3, num_examples=40))
    assert ev["dataset"] == "binarized-mnist" and ev["n"] == 40
    x = load("binarized-mnist", "test", data_dir=real_data).x[:40]
    model = load_model(run_dir)
    torch.manual_seed(0)                                   # evaluate draws its ELBO noise after manual_seed(seed)
    with torch.no_grad():
        ref = float(model.elbo(x).double().mean())
    assert ev["test/elbo"] == pytest.approx(ref, rel=1e-6)
    own = evaluate(run_dir, VAEEvalOptions(iwae_k=3, num_examples=40))   # the run's own fixed-seed binarization
    assert own["dataset"] == "mnist" and own["test/elbo"] != ev["test/elbo"]
    with pytest.raises(UserError, match="shape"):
        evaluate(run_dir, VAEEvalOptions(dataset="digits", iwae_k=3, num_examples=4))


def test_kl_warmup_weights_the_kl_linearly_from_the_saved_step(tmp_runs, real_data, capsys):
    """--kl-warmup-epochs E: the training loss is recon + w beta KL with w = min(1, step / (E * steps per epoch))."""
    torch.manual_seed(0)
    m = VAE((1, 4, 4), 2, hidden=8, beta=2.0)
    x = torch.rand(8, 1, 4, 4)
    torch.manual_seed(1)
    out = m.loss({"x": x}, kl_weight=0.25)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 0.5 * out["kl"].item(), rel=1e-5)
    assert out["elbo"].item() == pytest.approx(-(out["recon"] + out["kl"]).item(), rel=1e-5)   # the bound: w = 1
    from mlcanon.cli import main
    assert main(["train", "vae", "--dataset", "digits", "--hidden", "16", "--latent", "2", "--max-steps", "12",
                 "--train-subset", "128", "--val-subset", "32", "--batch-size", "32", "--kl-warmup-epochs", "2",
                 "--log-every", "1", "--out-dir", str(tmp_runs), "--progress", "false"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    rows = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    w = {r["step"]: r["train/kl_weight"] for r in rows if "train/kl_weight" in r}
    # 4 steps per epoch, 8 warm-up steps; the row of step s logs the weight used by step s (state.step = s - 1)
    assert w == {s: pytest.approx(min(1.0, (s - 1) / 8), abs=1e-7) for s in range(1, 13)}
