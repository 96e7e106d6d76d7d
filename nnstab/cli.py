"""The `nnstab` command: a thin layer over silent library functions.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `main(args) -> int`;
this file only routes. Exit status: 0 healthy, 1 findings at or above --fail-on, 2 usage errors.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). A module is imported only when the parser is built.
COMMANDS = {
    "accuracy": ("nnstab.bench.accuracy", "accuracy table: nnstab vs scipy.special vs torch, against mpmath"),
    "bench": ("nnstab.bench.cli", "speed ratios against the peers, measured side by side"),
}

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnstab",
        description="Numerical health of neural-network training.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_line) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name, help=help_line, description=(module.__doc__ or help_line),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_main=module.main)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
