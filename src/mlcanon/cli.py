"""The command line: ``mlcanon list | train | eval | sample | bench``.

Flags of ``train`` are generated from the algorithm's config dataclass (one flag per field, help text from the
field). Bad input (a :class:`~mlcanon.errors.UserError`) prints one line and exits 2; any other exception is a
bug and keeps its traceback. ``--debug`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mlcanon import config as cfg
from mlcanon import registry
from mlcanon.bench.report import run_suite
from mlcanon.errors import UserError
from mlcanon.runs import Run, read_config

BENCH_SUITES = ("quick", "full", "gpu")


_Parser = cfg.FlagParser
_flag = cfg.flag


build_config = cfg.build_config


def _print_result(result: dict) -> None:
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}
    for k, v in shown.items():
        if k == "run_dir":
            continue
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    if "run_dir" in result:
        print(f"run folder: {result['run_dir']}")


def cmd_list(ns) -> int:
    algos = registry.all_algorithms()
    if ns.family:
        algos = [a for a in algos if a.family == ns.family]
        if not algos:
            raise UserError(f"--family {ns.family!r}: no such family; run `mlcanon list` to see them")
    width = max(len(a.name) for a in algos)
    fam_w = max(len(a.family) for a in algos)
    for a in algos:
        missing = f"  [needs: {a.install_hint()}]" if a.missing() else ""
        print(f"{a.name:<{width}}  {a.family:<{fam_w}}  {a.description}{missing}")
    errors = registry.import_errors()
    for mod, err in errors.items():
        print(f"mlcanon: error: module {mod} failed to import ({err}); its algorithms are missing above",
              file=sys.stderr)
    return 1 if errors else 0


def cmd_train(ns, rest: list[str]) -> int:
    if ns.resume:
        data = read_config(ns.resume)
        algo = registry.get(data["algorithm"])
        if ns.name and ns.name != algo.name:
            raise UserError(f"--resume {ns.resume}: that run is {algo.name!r}, not {ns.name!r}")
        config = cfg.from_dict(algo.config_cls, data["config"], source=f"{ns.resume}/config.json")
        changes = build_config(algo, rest) if rest else None
        if changes is not None:
            changed = [f.name for f in cfg.fields(config) if getattr(changes, f.name) != getattr(
                algo.config_cls(), f.name) and f.name != "progress"]
            if changed:
                raise UserError(f"--resume continues the run with its saved config; remove "
                                f"{', '.join(_flag(c) for c in changed)}")
            config = dataclasses.replace(config, progress=changes.progress)
        run, step = Run.reopen(ns.resume)
        print(f"resuming {algo.name} in {run.dir} from step {step}", file=sys.stderr)
        result = algo.train(config, run)
    else:
        if not ns.name:
            raise UserError("mlcanon train: name an algorithm (`mlcanon list` shows them) or give --resume RUN_DIR")
        algo = registry.get(ns.name)
        config = build_config(algo, rest, ns.config)
        result = algo.train(config)
    _print_result(result if isinstance(result, dict) else {})
    return 0


def _options(algo, kind: str, rest: list[str], run_dir: str):
    cls = algo.eval_options if kind == "eval" else algo.sample_options
    extra = " [-n N] [--out FILE]" if kind == "sample" else ""
    prog = f"mlcanon {kind} {run_dir}"
    if any(a in ("-h", "--help") for a in rest):
        print(f"usage: mlcanon {kind} RUN_DIR{extra} [--OPTION VALUE ...]\n\n{algo.name} {kind} options:")
        cfg.flag_parser(cls, prog).print_help()
        raise SystemExit(0)
    return cfg.from_flags(cls, rest, prog=prog, print_help=False)


def cmd_eval(ns, rest: list[str]) -> int:
    algo, _ = registry.algorithm_of_run(ns.run_dir)
    if algo.evaluate is None:
        raise UserError(f"{algo.name} has no evaluation yet")
    options = _options(algo, "eval", rest, ns.run_dir)
    metrics = algo.evaluate(Path(ns.run_dir), options)
    text = json.dumps(metrics, indent=2, default=float)
    Run(Path(ns.run_dir)).write_json("eval.json", json.loads(text))
    for k, v in metrics.items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def cmd_sample(ns, rest: list[str]) -> int:
    algo, _ = registry.algorithm_of_run(ns.run_dir)
    if algo.sample is None:
        raise UserError(f"{algo.name} has no sampler yet")
    if ns.n < 1:
        raise UserError(f"-n must be >= 1, got {ns.n}")
    options = _options(algo, "sample", rest, ns.run_dir)
    out = Path(ns.out) if ns.out else None
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it or pick another path")
    out = algo.sample(Path(ns.run_dir), ns.n, out, options)
    print(f"wrote {out}")
    return 0


def cmd_bench(ns, rest: list[str]) -> int:
    run_suite(ns.suite, out=ns.out, only=ns.only)
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mlcanon", description="mlcanon: the canon of modern machine learning, end to end.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    lp = sub.add_parser("list", help="every algorithm, its family and one line about it")
    lp.add_argument("--family", default=None, help="only this family")
    tp = sub.add_parser("train", help="train an algorithm; writes a run folder", add_help=False)
    tp.add_argument("name", nargs="?", default=None, help="algorithm name (see `mlcanon list`)")
    tp.add_argument("--config", default=None, help="a .toml or .json file of config fields")
    tp.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    ep = sub.add_parser("eval", help="evaluate a trained run (`mlcanon eval RUN_DIR --help`: its options)",
                        add_help=False)
    ep.add_argument("run_dir")
    sp = sub.add_parser("sample", help="samples / predictions / rollouts from a trained run", add_help=False)
    sp.add_argument("run_dir")
    sp.add_argument("-n", type=int, default=64, help="how many samples")
    sp.add_argument("--out", default=None, help="output file (default: RUN_DIR/samples.png)")
    bp = sub.add_parser("bench", help="run the benchmark suite and write docs/BENCHMARKS.md")
    bp.add_argument("--suite", default="quick", choices=BENCH_SUITES)
    bp.add_argument("--out", default="docs/BENCHMARKS.md")
    bp.add_argument("--only", default=None, help="comma-separated entry names")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        parser = make_parser()
        if argv and argv[0] == "train":
            # train's own flags first (NAME, --config, --resume); the rest are the algorithm's config flags
            rest = argv[1:]
            if rest and rest[0] in ("-h", "--help"):
                print("usage: mlcanon train NAME [--config FILE] [--FIELD VALUE ...]\n"
                      "       mlcanon train --resume RUN_DIR\n"
                      "`mlcanon list` shows the algorithms; `mlcanon train NAME --help` their flags.")
                return 0
            name = rest.pop(0) if rest and not rest[0].startswith("-") else None
            head = _Parser(prog="mlcanon train", add_help=False)
            head.add_argument("--config", default=None)
            head.add_argument("--resume", default=None)
            known, others = head.parse_known_args(rest)
            known.name = name
            return cmd_train(known, others)
        if argv and argv[0] in ("eval", "sample") and (len(argv) == 1 or argv[1] in ("-h", "--help")):
            print(f"usage: mlcanon {argv[0]} RUN_DIR [--OPTION VALUE ...]\n"
                  f"`mlcanon {argv[0]} RUN_DIR --help` lists the options of that run's algorithm.")
            return 0
        ns, rest = parser.parse_known_args(argv)
        if rest and ns.command not in ("eval", "sample"):
            raise UserError(f"mlcanon {ns.command or ''}: unrecognized arguments: {' '.join(rest)}")
        if ns.command is None:
            parser.print_help()
            return 0
        return {"list": lambda: cmd_list(ns), "eval": lambda: cmd_eval(ns, rest),
                "sample": lambda: cmd_sample(ns, rest), "bench": lambda: cmd_bench(ns, rest)}[ns.command]()
    except UserError as e:
        if debug:
            raise
        print(f"mlcanon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlcanon: interrupted; `mlcanon train --resume RUN_DIR` continues from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
