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
    "run": ("nnstab.commands.run", "run an unmodified torch training script under watch and write its reports"),
    "report": ("nnstab.commands.report", "render a saved run log (.md, .html, .json, .txt)"),
    "lint": ("nnstab.commands.lint", "run one step of a torch training script and report its unstable formulas"),
    "probes": ("nnstab.commands.probes", "run the gallery of training failures (probes/*.py) and regenerate reports/"),
    "accuracy": ("nnstab.bench.accuracy", "accuracy table: nnstab vs scipy.special vs torch, against mpmath"),
    "bench": ("nnstab.bench.cli", "speed ratios against the peers, measured side by side"),
}

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others are listed by their help line).

    Importing one command's module, not all of them, keeps `nnstab run --help` fast and independent
    of the benchmark and accuracy modules' imports (scipy, mpmath).
    """
    parser = argparse.ArgumentParser(
        prog="nnstab",
        description="Numerical health of neural-network training.",
        epilog="Run 'nnstab COMMAND --help' for a command's options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_line) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_line)
            continue
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(
            name, help=help_line, description=(module.__doc__ or help_line),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_main=module.main)
    return parser


def _command_of(argv) -> str | None:
    """The subcommand named in argv: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
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
