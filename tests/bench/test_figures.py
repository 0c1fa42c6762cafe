"""The report figures: each plotting function writes a non-empty PNG on tiny inputs; the energy distance
matches its closed form on point masses and is zero between a sample and itself."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mlcanon.bench import entries
from mlcanon.bench import figures as F

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


def test_bands_and_toy_scatter(tmp_path):
    rng = np.random.default_rng(0)
    x = np.arange(10)
    curves = {"a": (x, rng.normal(size=(5, 10))), "b": (x, rng.normal(size=(3, 10)))}
    _png(F.plot_bands(curves, tmp_path / "iqr.png", ylabel="return"))
    _png(F.plot_bands(curves, tmp_path / "ci.png", band="ci95", smooth=3, ylim=(-3, 3)))
    with pytest.raises(ValueError):
        F.plot_bands(curves, tmp_path / "bad.png", band="sd")
    data = torch.randn(100, 2)
    _png(F.plot_toy_samples(data, {"DDIM 5 steps": torch.randn(50, 2)}, tmp_path / "toy.png"))


def test_speed_quality_plot(tmp_path):
    points = [("DDPM", "1000", 2.0, 0.01), ("DDIM (eta 0)", "5", 0.01, 0.3), ("DDIM (eta 0)", "50", 0.1, 0.02)]
    flows = {"MAF": {"log_prob": 1e-3, "sample": 5e-2}, "IAF": {"log_prob": 5e-2, "sample": 1e-3}}
    _png(F.plot_speed_quality(points, flows, tmp_path / "speed.png", flow_dim=8, floor=0.005))


def test_tabular_curves_tiny(tmp_path):
    path, final = F.tabular_curves(tmp_path, seeds=3, episodes=20, env="mlcanon/GridWorld-v0")
    _png(path)
    assert set(final) == {"q-learning", "sarsa"} and all(v.shape == (3,) for v in final.values())


def test_flow_speeds_tiny():
    s = F.flow_speeds(dim=4, n=8, calls=1)
    assert set(s) == {"MAF", "IAF"} and all(v["log_prob"] > 0 and v["sample"] > 0 for v in s.values())


def test_energy_distance_closed_form():
    # point masses at 0 and at a (in R^2): 2|a| - 0 - 0
    a = torch.tensor([3.0, 4.0])
    x, y = torch.zeros(7, 2), a.expand(5, 2)
    assert F.energy_distance(x, y) == pytest.approx(2 * 5.0, rel=1e-12)
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    assert abs(F.energy_distance(z, z)) < 1e-12
    assert F.energy_distance(z, z + 2.0) > 1.0


def test_registered_in_quick_suite():
    assert "report-figures" in {e.name for e in entries("quick")}


def test_footer_under_the_table_and_links_resolve():
    from pathlib import Path

    from mlcanon.bench import report

    entry = next(e for e in entries("quick") if e.name == "report-figures")
    text = report.render(entry, "quick", [], 1.0)
    begin, end = report.markers("report-figures")
    assert text.startswith(begin) and text.endswith(end)
    assert text.index("|---|") < text.index(F.FOOTER) < text.index(end)
    links = re.findall(r"\]\(figures/([\w.-]+\.png)\)", F.FOOTER)
    assert len(links) == 5
    docs = Path(__file__).resolve().parents[2] / "docs" / "figures"
    assert all((docs / name).is_file() for name in links), "run `mlcanon bench --suite quick --only report-figures`"


def test_classifier_curves_read_each_runs_metrics(tmp_path):
    flags = ["--dataset", "digits", "--model", "mlp", "--width", "16", "--epochs", "2", "--train-subset", "256",
             "--batch-size", "64", "--device", "cpu"]
    path, final = F.classifier_curves(tmp_path, seeds=2, flags=flags)
    _png(path)
    assert final.shape == (2,) and np.all((final >= 0) & (final <= 1))
