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
import typing
from pathlib import Path

from mlcanon.errors import UserError

BENCH_SUITES = ("quick", "full", "gpu")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one clear line) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_parser(algo) -> argparse.ArgumentParser:
    """A parser with one flag per config field; unset flags are absent from the namespace."""
    from mlcanon import config as cfg

    p = _Parser(prog=f"mlcanon train {algo.name}", description=algo.description,
                argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(algo.config_cls)
    for f in cfg.fields(algo.config_cls):
        inner, _ = cfg.base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" {{{', '.join(map(str, choices))}}}"
        help_text += f" (default: {default})"
        kw = {"help": help_text.replace("%", "%%"), "metavar": f.name.upper() if inner is not bool else "BOOL",
              "dest": f.name}
        if inner is bool:
            kw["nargs"] = "?"
            kw["const"] = "true"
        p.add_argument(_flag(f.name), type=str, **kw)
    return p


def build_config(algo, args: list[str], config_file: str | None = None):
    """Config from defaults, then ``--config FILE``, then flags; validated."""
    from mlcanon import config as cfg

    if any(a in ("-h", "--help") for a in args):
        config_parser(algo).print_help()
        raise SystemExit(0)
    ns = vars(config_parser(algo).parse_args(args))
    base = cfg.load_file(algo.config_cls, config_file) if config_file else algo.config_cls()
    hints = typing.get_type_hints(algo.config_cls)
    changes = {k: cfg.parse_value(hints[k], v, k) for k, v in ns.items()}
    config = dataclasses.replace(base, **changes)
    cfg.validate(config)
    return config


def _print_result(result: dict) -> None:
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}
    for k, v in shown.items():
        if k == "run_dir":
            continue
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    if "run_dir" in result:
        print(f"run folder: {result['run_dir']}")


def cmd_list(ns) -> int:
    from mlcanon import registry
    algos = registry.all_algorithms()
    if ns.family:
        algos = [a for a in algos if a.family == ns.family]
        if not algos:
            raise UserError(f"--family {ns.family!r}: no such family; run `mlcanon list` to see them")
    width = max(len(a.name) for a in algos)
    fam_w = max(len(a.family) for a in algos)
    for a in algos:
        print(f"{a.name:<{width}}  {a.family:<{fam_w}}  {a.description}")
    return 0


def cmd_train(ns, rest: list[str]) -> int:
    from mlcanon import config as cfg
    from mlcanon import registry
    from mlcanon.runs import Run, read_config

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
        run, _, step = Run.reopen(ns.resume)
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


def cmd_eval(ns, rest: list[str]) -> int:
    from mlcanon import registry
    algo, _ = registry.algorithm_of_run(ns.run_dir)
    if algo.evaluate is None:
        raise UserError(f"{algo.name} has no evaluation yet")
    kw = {}
    if ns.episodes is not None:
        kw["episodes"] = ns.episodes
    if ns.split is not None:
        kw["split"] = ns.split
    metrics = algo.evaluate(Path(ns.run_dir), **kw)
    text = json.dumps(metrics, indent=2, default=float)
    (Path(ns.run_dir) / "eval.json").write_text(text)
    for k, v in metrics.items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def cmd_sample(ns, rest: list[str]) -> int:
    from mlcanon import registry
    algo, _ = registry.algorithm_of_run(ns.run_dir)
    if algo.sample is None:
        raise UserError(f"{algo.name} has no sampler yet")
    if ns.n < 1:
        raise UserError(f"-n must be >= 1, got {ns.n}")
    out = algo.sample(Path(ns.run_dir), ns.n, Path(ns.out) if ns.out else None)
    print(f"wrote {out}")
    return 0


def cmd_bench(ns, rest: list[str]) -> int:
    from mlcanon.bench.report import run_suite
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
    ep = sub.add_parser("eval", help="evaluate a trained run")
    ep.add_argument("run_dir")
    ep.add_argument("--episodes", type=int, default=None, help="RL: episodes to average over")
    ep.add_argument("--split", default=None, help="supervised: test or valid")
    sp = sub.add_parser("sample", help="samples / predictions / rollouts from a trained run")
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
        ns, rest = parser.parse_known_args(argv)
        if rest:
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
