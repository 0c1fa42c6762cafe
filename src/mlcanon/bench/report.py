"""`mlcanon bench`: run a suite's entries and rewrite our marked section of docs/BENCHMARKS.md.

Only the text between the two markers below is replaced; hand-run and GPU sections elsewhere in the file are
kept (DESIGN.md section 9).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mlcanon.bench import Row, entries
from mlcanon.errors import UserError
from mlcanon.runs import environment_info

BEGIN = "<!-- mlcanon-bench:begin (written by `mlcanon bench`; edits here are overwritten) -->"
END = "<!-- mlcanon-bench:end -->"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1e5 or (0 < abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:,.4g}" if abs(v) >= 1000 else f"{v:.4g}"


def render(suite: str, rows: list[Row], wall_s: float) -> str:
    env = environment_info()
    lines = [BEGIN, f"## `mlcanon bench --suite {suite}`", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {env['platform']}, "
             f"{env['cpu_count']} CPU cores, torch {env['torch']}, numpy {env['numpy']}, python {env['python']}, "
             f"mlcanon {env['mlcanon']}" + (f", GPU {env['cuda_device']}" if "cuda_device" in env else "")
             + f". Whole suite: {wall_s:.0f} s.", "",
             "| benchmark | ours | reference | ratio | met | wall (s) | command | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{_fmt(r.reference)} {r.unit} ({r.reference_label})" if r.reference is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(f"| {r.name} | {_fmt(r.ours)} {r.unit} | {ref} | {ratio} | {met} | "
                     f"{_fmt(r.wall_s)} | `{r.command}` | {r.notes} |")
    lines += ["", "ratio: ours / reference where higher is better, reference / ours where lower is better "
              "(so > 1 means we beat the reference).", END]
    return "\n".join(lines)


def write_section(path: str | Path, section: str) -> None:
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        pre = text[:text.index(BEGIN)]
        post = text[text.index(END) + len(END):]
        text = pre + section + post
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_suite(suite: str, out: str | Path = "docs/BENCHMARKS.md", only: str | None = None) -> list[Row]:
    chosen = entries(suite)
    if only:
        names = {n.strip() for n in only.split(",")}
        unknown = names - {e.name for e in chosen}
        if unknown:
            raise UserError(f"--only: no entries {', '.join(sorted(unknown))} in suite {suite}; "
                            f"known: {', '.join(e.name for e in chosen)}")
        chosen = [e for e in chosen if e.name in names]
    if not chosen:
        raise UserError(f"suite {suite!r} has no benchmark entries")
    rows: list[Row] = []
    t0 = time.perf_counter()
    for e in chosen:
        print(f"[bench] {e.name}: {e.description}", file=sys.stderr)
        t = time.perf_counter()
        got = e.fn()
        for r in got:
            if r.wall_s is None:
                r.wall_s = time.perf_counter() - t
            print(f"[bench]   {r.name}: {_fmt(r.ours)} {r.unit}"
                  + (f" vs {_fmt(r.reference)} ({r.reference_label})" if r.reference is not None else ""),
                  file=sys.stderr)
        rows += got
    section = render(suite, rows, time.perf_counter() - t0)
    if out:
        write_section(out, section)
        print(f"wrote {out}", file=sys.stderr)
    return rows
