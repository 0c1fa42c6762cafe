"""Side-by-side: dp.solve and dp.value_iteration vs pymdptoolbox's fastest solver, to 1e-6.

Problems: 100x100 mazes (gamma 0.99, 0.999), FrozenLake 8x8 (gamma 0.999), random dense 1k / sparse 10k MDPs
and a random sparse 1,000,000-state MDP (ours alone).
Run: python benchmarks/tabular_dp.py [--repeats 3] [--cases maze-0.99,dense-1k]
(needs: pip install 'mlcanon[bench]' for the peer). What is measured and how: see mlcanon/bench/tabular.py.
"""

from __future__ import annotations

import argparse
import os

from mlcanon.bench.tabular import CASES, measure


def main() -> None:
    """Print one block per measured row: ours, the peer's figure, the speed-up, whether the target is met."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per solver, both sides")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(c[0] for c in CASES)}")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    for r in measure(repeats=args.repeats, cases=args.cases.split(",") if args.cases else None):
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        ref = f"{r.reference:.4g}" if r.reference is not None else "-"
        met = {True: "met", False: "NOT met", None: "-"}[r.met]
        print(f"{r.name}\n  ours {r.ours:.4g} {r.unit} | {r.reference_label}: {ref} | speed-up {ratio} | "
              f"target {met}\n  {r.notes}")


if __name__ == "__main__":
    main()
