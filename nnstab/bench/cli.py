"""`nnstab bench [TABLE]`: speed ratios against the peers, measured side by side; each table is a module.

A table module exposes add_arguments(parser) and main(args) -> int and is registered in TABLES.
With no TABLE, every table runs with its default options.
"""
from __future__ import annotations

import argparse
import importlib

# table name -> (module, one-line help); adding a benchmark table is one line here.
TABLES = {
    "numerics": ("nnstab.bench.numerics", "numeric functions vs scipy.special and torch.nn.functional"),
    "nn": ("nnstab.bench.nn", "one training step of nnstab.nn vs torch: MLP and CNN, float32 CPU"),
    "overhead": ("nnstab.bench.overhead", "the cost of nnstab.watch per training step, vs plain, anomaly mode and an .item() probe"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="table", metavar="TABLE")
    for name, (module_name, help_line) in TABLES.items():
        module = importlib.import_module(module_name)
        table = sub.add_parser(name, help=help_line, description=module.__doc__ or help_line,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(table)
        table.set_defaults(_table_main=module.main)


def main(args) -> int:
    if getattr(args, "table", None):
        return int(args._table_main(args) or 0)
    status = 0
    for name, (module_name, _) in TABLES.items():
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"nnstab bench {name}")
        module.add_arguments(parser)
        print(f"== {name} ==")
        status = max(status, int(module.main(parser.parse_args([])) or 0))
    return status
