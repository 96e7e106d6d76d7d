"""`nnstab bench nn`: one training step of nnstab.nn against the same network in torch, on the CPU in float32.

What is measured: the time of one full training step, forward + cross-entropy + zero_grad + backward
+ Adam step, on the same network, weights, batch and optimiser in both frameworks:

  mlp   784-256-256-10 with ReLU (torch.nn.Linear / nnstab.nn.Dense), batch 128;
  cnn   Conv2d(1, 16, 3, padding=1) ReLU MaxPool2d(2) Conv2d(16, 32, 3, padding=1) ReLU MaxPool2d(2)
        Flatten Dense(32*7*7, 10), on 28x28 single-channel images, batch 64.

Each comparison is nnstab.bench.timing.compare: interleaved pairs of samples, median and spread of the
per-pair ratios nnstab / torch (< 1: nnstab is faster). Both sides run on --threads threads (default
1): torch.set_num_threads, and the BLAS behind NumPy through threadpoolctl when it is installed (it
comes with scikit-learn); on a shared machine, spinning BLAS/OpenMP threads distort the ratio.
A second table splits nnstab's step into its phases (forward, loss, backward, optimiser).

Target (never asserted; "!" marks a miss): mlp median <= 1.5. The cnn ratio is reported, not
targeted: torch runs convolutions as direct oneDNN kernels, while nnstab.nn copies every input window
into an im2col matrix (input x kh*kw floats), multiplies per example, and in backward adds the
kh*kw shifted window gradients back one kernel position at a time, so the CNN step is bound by that
memory traffic rather than by arithmetic. The MLP step is a few large matrix products, where both
call an optimised GEMM; the difference is the input gradient of the first layer, which nnstab
computes (backward returns dL/dx) and torch skips for an input that does not require grad, and
NumPy's unfused elementwise passes (ReLU masks, Adam's moments) where torch fuses them.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from nnstab.bench import timing
from nnstab.bench.timing import compare, text_table

MLP_TARGET = 1.5
PHASES = ("forward", "loss", "backward", "optimiser")


def _mlp(nn_mod, torch_mod, batch, rng):
    ours = nn_mod.Sequential(nn_mod.Dense(784, 256, rng=rng), nn_mod.ReLU(), nn_mod.Dense(256, 256, rng=rng),
                             nn_mod.ReLU(), nn_mod.Dense(256, 10, rng=rng))
    T = torch_mod.nn
    theirs = T.Sequential(T.Linear(784, 256), T.ReLU(), T.Linear(256, 256), T.ReLU(), T.Linear(256, 10))
    x = rng.standard_normal((batch, 784)).astype(np.float32)
    return ours, theirs, x


def _cnn(nn_mod, torch_mod, batch, rng):
    n = nn_mod
    ours = n.Sequential(n.Conv2d(1, 16, 3, padding=1, rng=rng), n.ReLU(), n.MaxPool2d(2),
                        n.Conv2d(16, 32, 3, padding=1, rng=rng), n.ReLU(), n.MaxPool2d(2),
                        n.Flatten(), n.Dense(32 * 7 * 7, 10, rng=rng))
    T = torch_mod.nn
    theirs = T.Sequential(T.Conv2d(1, 16, 3, padding=1), T.ReLU(), T.MaxPool2d(2),
                          T.Conv2d(16, 32, 3, padding=1), T.ReLU(), T.MaxPool2d(2),
                          T.Flatten(), T.Linear(32 * 7 * 7, 10))
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    return ours, theirs, x


MODELS = {"mlp": (_mlp, 128, 16), "cnn": (_cnn, 64, 8)}   # name -> (builder, batch, quick batch)


def build(name: str, quick: bool = False, seed: int = 0):
    """(nnstab step, torch step, nnstab phase functions) for one model, with torch's weights copied from ours."""
    import torch

    import nnstab.nn as nn

    rng = np.random.default_rng(seed)
    builder, batch, quick_batch = MODELS[name]
    ours, theirs, x = builder(nn, torch, quick_batch if quick else batch, rng)
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            q.copy_(torch.from_numpy(p.data))
    y = rng.integers(0, 10, len(x))
    loss_fn, opt = nn.CrossEntropyLoss(), nn.optim.Adam(ours.parameters(), lr=1e-3)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cross_entropy = torch.nn.functional.cross_entropy

    def ours_step():
        out = ours(x)
        loss_fn(out, y)
        opt.zero_grad()
        ours.backward(loss_fn.backward())
        opt.step()

    def torch_step():
        topt.zero_grad()
        cross_entropy(theirs(xt), yt).backward()
        topt.step()

    state = {}
    phases = {
        "forward": lambda: state.__setitem__("out", ours(x)),
        "loss": lambda: (loss_fn(state["out"], y), opt.zero_grad()),
        "backward": lambda: ours.backward(loss_fn.backward()),
        "optimiser": opt.step,
    }
    return ours_step, torch_step, phases


def phase_times(phases, rounds: int) -> dict:
    """Median seconds of each phase of nnstab's step, run in order `rounds` times."""
    times = {k: [] for k in PHASES}
    for _ in range(rounds):
        for k in PHASES:
            start = time.perf_counter()
            phases[k]()
            times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def add_arguments(parser):
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME",
                        help="networks to measure: mlp, cnn (default: both)")
    timing.add_common_arguments(parser, "small batches and 3 pairs (checks that everything runs; the ratios mean little)")


def main(args) -> int:
    with timing.threads(args.threads):
        return _run(args)


def _run(args) -> int:
    repeat, min_time = (3, 0.005) if args.quick else (args.repeat, 0.1)
    rows, phase_rows, records, failures = [], [], [], 0
    start = time.perf_counter()
    for k, name in enumerate(args.models, 1):
        print(f"[{k}/{len(args.models)}] {name}", file=sys.stderr, flush=True)
        try:
            ours_step, torch_step, phases = build(name, args.quick)
            c = compare(ours_step, torch_step, repeat=repeat, min_time=min_time)
            split = phase_times(phases, 3 if args.quick else 20)
        except Exception as exc:
            failures += 1
            rows.append([name, "error", "", "", "", ""])
            records.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        q1, q3 = c.iqr
        mark = "!" if name == "mlp" and c.median > MLP_TARGET else ""
        rows.append([mark + name, f"{np.median(c.ours) * 1e3:.2f}", f"{np.median(c.peer) * 1e3:.2f}",
                     f"{c.median:.2f}", f"{c.best:.2f}-{c.worst:.2f}", f"{q1:.2f}-{q3:.2f}"])
        total = sum(split.values())
        phase_rows.append([name] + [f"{split[p] * 1e3:.2f} ({split[p] / total:.0%})" for p in PHASES])
        records.append({"model": name, "missed_target": bool(mark), "phases_s": split, **c.to_dict()})
    print(text_table(["model", "nnstab ms", "torch ms", "ratio", "min-max", "IQR"], rows, right_from=1))
    print(f"\nratio: median of per-pair nnstab/torch step times (< 1: nnstab faster); target: mlp <= {MLP_TARGET}; "
          f"! marks a miss. The cnn ratio is bound by im2col/col2im memory traffic (see the module doc).")
    if phase_rows:
        print("\nnnstab step by phase (median ms, share):")
        print(text_table(["model", *PHASES], phase_rows, right_from=1))
    print(f"\n{len(records) - failures} comparisons, {failures} errors "
          f"({time.perf_counter() - start:.1f} s, {args.threads} thread(s))")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"schema": "nnstab.bench.nn/1", "quick": bool(args.quick), "repeat": repeat,
                       "threads": args.threads, "results": records}, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    import argparse

    _parser = argparse.ArgumentParser(prog="nnstab bench nn", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
