"""Side-by-side: our dynamic programming vs pymdptoolbox on random MDPs (dense 1k, sparse 10k states).

Run: python benchmarks/tabular_dp.py [--repeats 3]   (needs: pip install 'mlcanon[bench]' for the peer)
What is measured and how: see mlcanon/bench/tabular.py.
"""

from __future__ import annotations

import argparse

from mlcanon.bench.tabular import measure


def main() -> None:
    """Print one line per measured row: ours, the peer's figure, the speed-up, notes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per solver")
    args = ap.parse_args()
    for r in measure(repeats=args.repeats):
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        ref = f"{r.reference:.4g}" if r.reference is not None else "-"
        print(f"{r.name}\n  ours {r.ours:.4g} {r.unit} | {r.reference_label}: {ref} | speed-up {ratio}\n"
              f"  {r.notes}")


if __name__ == "__main__":
    main()
