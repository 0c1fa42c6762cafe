"""The flows benchmark entries: the MAF-vs-IAF speed function times both flows (no timing assertions)."""

from __future__ import annotations

from mlcanon.bench import entries
from mlcanon.bench.flows import maf_vs_iaf, speed_rows


def test_maf_vs_iaf_times_both_directions_of_both_flows():
    out = maf_vs_iaf(dim=3, layers=2, hidden=8, batch=4, repeats=1)
    assert set(out) == {"maf_density_s", "maf_sample_s", "iaf_density_s", "iaf_sample_s"}
    assert all(v > 0 for v in out.values())


def test_speed_rows_pair_each_flow_with_the_other():
    rows = speed_rows(dim=3, layers=1, hidden=8, batch=4, repeats=1)
    assert [r.reference_label.split(",")[0] for r in rows] == ["IAF", "MAF"]
    assert all(r.unit == "ms" and not r.higher_is_better for r in rows)


def test_flow_entries_are_in_the_suites():
    assert "flows-maf-vs-iaf" in {e.name for e in entries("quick")}
    assert {"flows-toy2d", "flows-mnist"} <= {e.name for e in entries("full")}
