"""`mlcanon bench` rewrites only its own entry's marked section and keeps everything else."""

from __future__ import annotations

import pytest

from mlcanon import bench
from mlcanon.bench import Row
from mlcanon.bench.report import markers, run_suite
from mlcanon.errors import UserError


@pytest.fixture
def fake_entries(monkeypatch):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        return [Row(name="speed", command="mlcanon bench", ours=10.0 * calls["n"], unit="steps/s",
                    reference=5.0, reference_label="peer"),
                Row(name="time", command="x", ours=2.0, unit="s", reference=4.0, reference_label="peer",
                    higher_is_better=False)]
    monkeypatch.setattr(bench, "_ENTRIES", {"fake": bench.Entry("fake", ("quick",), fn, "a fake entry"),
                                            "other": bench.Entry("other", ("quick",), fn, "another")})
    monkeypatch.setattr(bench, "_LOADED", True)
    return calls


def test_rows_ratio_and_met():
    assert Row("a", "c", 10, "x", reference=5).ratio == 2 and Row("a", "c", 10, "x", reference=5).met
    slow = Row("a", "c", 8, "s", reference=4, higher_is_better=False)
    assert slow.ratio == 0.5 and slow.met is False


def test_sections_are_rewritten_in_place_and_hand_text_kept(tmp_path, fake_entries):
    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n\n## GPU results (hand-run)\nkeep me\n")
    run_suite("quick", out=out)
    first = out.read_text()
    assert "keep me" in first and "| speed | 10 steps/s | 5 steps/s (peer) | 2.000x | yes |" in first
    assert "| time | 2 s | 4 s (peer) | 2.000x | yes |" in first
    run_suite("quick", out=out, only="fake")        # rewrites 'fake' only
    text = out.read_text()
    assert text.count(markers("fake")[0]) == 1 and text.count(markers("other")[0]) == 1
    assert "| speed | 30 steps/s" in text.split(markers("fake")[0])[1].split(markers("fake")[1])[0]
    assert "| speed | 20 steps/s" in text.split(markers("other")[0])[1]
    assert "keep me" in text
    with pytest.raises(UserError, match="no entries nope"):
        run_suite("quick", out=out, only="nope")
