"""`mlcanon bench`: run a suite's entries and rewrite their marked sections of docs/BENCHMARKS.md.

Each entry owns the text between its two markers (:func:`markers`); hand-run and GPU sections elsewhere in the
file are kept (DESIGN.md section 9).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mlcanon.bench import Row, entries
from mlcanon.errors import UserError
from mlcanon.runs import environment_info


def markers(entry: str) -> tuple[str, str]:
    """The two lines that delimit one entry's section of the report."""
    return (f"<!-- mlcanon-bench:{entry}:begin (written by `mlcanon bench`; edits here are overwritten) -->",
            f"<!-- mlcanon-bench:{entry}:end -->")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1e5 or (0 < abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:,.4g}" if abs(v) >= 1000 else f"{v:.4g}"


def render(entry, suite: str, rows: list[Row], wall_s: float) -> str:
    """One entry's section: a heading, the machine and versions, and the table of rows."""
    env = environment_info()
    begin, end = markers(entry.name)
    lines = [begin, f"### {entry.name}: {entry.description}", "",
             f"`mlcanon bench --suite {suite} --only {entry.name}`, measured "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {env['platform']}, "
             f"{env['cpu_count']} CPU cores, torch {env['torch']}, numpy {env['numpy']}, python {env['python']}, "
             f"mlcanon {env['mlcanon']}" + (f", GPU {env['cuda_device']}" if "cuda_device" in env else "")
             + f"; {wall_s:.0f} s in all.", "",
             "| benchmark | ours | reference | ratio | met | wall (s) | command | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{_fmt(r.reference)} {r.unit} ({r.reference_label})" if r.reference is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        ratio = f"{r.ratio:.3f}x" if r.ratio is not None else "-"
        lines.append(f"| {r.name} | {_fmt(r.ours)} {r.unit} | {ref} | {ratio} | {met} | "
                     f"{_fmt(r.wall_s)} | `{r.command}` | {r.notes} |")
    if entry.footer:
        lines += ["", entry.footer]
    lines.append(end)
    return "\n".join(lines)


HEADER = """# Benchmarks

Every number here was measured on the machine named beside it; nothing is copied from elsewhere unless the
column says "paper". Sections between `mlcanon-bench` markers are rewritten by `mlcanon bench` (one section per
entry, so `--only NAME` rewrites just that one); everything else in this file is kept.

ratio: ours / reference where higher is better, reference / ours where lower is better (> 1: we beat it).
"""


def write_section(path: str | Path, entry_name: str, section: str) -> None:
    """Replace (or append) one entry's marked section of the report; the rest of the file is kept."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    begin, end = markers(entry_name)
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_suite(suite: str, out: str | Path | None = "docs/BENCHMARKS.md", only: str | None = None) -> list[Row]:
    """Run every entry of ``suite`` (or those named in ``only``) and write each one's section."""
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
        if out:
            write_section(out, e.name, render(e, suite, got, time.perf_counter() - t))
            print(f"[bench] wrote {e.name} to {out}", file=sys.stderr)
    return rows
