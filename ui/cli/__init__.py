"""`clusterplan`: the command line. Every command takes --json (one JSON document on stdout); bad
input ends with one line on stderr and exit code 2.

One module per command group, listed in COMMANDS. Each defines `register(groups)`, where groups maps
"top", "simulate", "plan" and "validate" to argparse subparser collections (and "catalog" to the
parser of `clusterplan catalog`, created here so that --help lists the groups in the order of the
usage line); every parser a module adds
calls `set_defaults(func=...)` with func(args) -> (JSON-able document, text). Flag values are
converted by ui.cli.flags. A command module that fails to import stops the command line with one
line naming the module and the error (exit code 1): a broken install, never a missing command.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys

from hwmodels.errors import InputError

EXIT_BAD_INPUT = 2
EXIT_BROKEN = 1
COMMANDS = ("ui.cli.catalog", "ui.cli.train", "ui.cli.collective", "ui.cli.serve", "ui.cli.validate",
            "ui.cli.dashboard", "ui.cli.sweep")


class CommandImportError(Exception):
    """A command module of COMMANDS could not be imported."""

    def __init__(self, module: str, error: BaseException):
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        super().__init__(f"command module {module!r} failed to import: {detail}")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage dump becomes one line, exit 2
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clusterplan", description="Cluster simulator and parallelism planner for LLM training and serving.")
    p.add_argument("--version", action="store_true",
                   help="print the versions of clusterplan and its kernel tables")
    # not required: a bare `clusterplan` prints the command list (run())
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    # The groups, in the order `clusterplan --help` lists them.
    cat = sub.add_parser("catalog", help="list devices, clusters or models")
    sim = sub.add_parser("simulate", help="simulate one plan")
    pl = sub.add_parser("plan", help="search for the best plan")
    val = sub.add_parser("validate", help="compare predictions with measurements")
    groups = {"top": sub, "catalog": cat,
              "simulate": sim.add_subparsers(dest="target", required=True, parser_class=_Parser),
              "plan": pl.add_subparsers(dest="target", required=True, parser_class=_Parser),
              "validate": val.add_subparsers(dest="suite", required=True, parser_class=_Parser)}
    for name in COMMANDS:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure to import is reported, never skipped
            raise CommandImportError(name, e) from e
        mod.register(groups)
    return p


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(version_line())
        return 0
    if args.command is None:
        # A bare `clusterplan` asks what the tool does: the command list on stdout with exit
        # code 0, as --help (stderr and exit 2 stay reserved for one-line errors).
        parser.print_help()
        return 0
    doc, text = args.func(args)
    if getattr(args, "json", False):
        doc = json_safe(doc)
        if isinstance(doc, dict):
            doc["provenance"] = provenance(getattr(args, "seed", None))
        json.dump(doc, sys.stdout, indent=1, sort_keys=False, default=str, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(text)
    for note in getattr(args, "deprecation_notes", None) or []:
        print(f"clusterplan: note: {note}", file=sys.stderr)
    return 0


def version_line() -> str:
    """`clusterplan --version`: this package's version and that of the measured kernel tables."""
    p = provenance()
    return f"clusterplan {p['clusterplan']} (kernel tables: {p['kernel_tables']})"


def provenance(seed=None) -> dict:
    """What produced a JSON document: the versions of clusterplan and of the measured kernel tables
    under the model, and the seed of its stochastic parts (None where it has none)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"
    return {"clusterplan": ver("clusterplan"), "kernel_tables": f"aiconfigurator-core {ver('aiconfigurator-core')}",
            "seed": seed}


def json_safe(o):
    """`o` as strict JSON values (RFC 8259 has no NaN or Infinity: they become null); objects with
    `to_dict` and numpy scalars/arrays are converted."""
    if isinstance(o, dict):
        return {k if isinstance(k, str) else json.dumps(k) if isinstance(k, (int, float)) or k is None else str(k):
                json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "to_dict"):
        return json_safe(o.to_dict())
    if hasattr(o, "tolist"):  # numpy scalar or array
        return json_safe(o.tolist())
    return o


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except InputError as e:
        print(f"clusterplan: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CommandImportError as e:
        print(f"clusterplan: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BROKEN
    except BrokenPipeError:
        return 0
