"""`nnstab bench numerics`: speed of nnstab's numeric functions as ratios to scipy.special and torch.nn.functional.

What is measured, per function:
  numpy   nnstab.<f>(x) on NumPy arrays against the scipy.special / NumPy expression of
          nnstab.bench.accuracy.SCIPY_PEERS, in float32 and float64, at shapes (4096, 1000) and
          (64, 32000) (a batch of logits; a language-model vocabulary row);
  torch   nnstab.<f>(x) on float32 CPU tensors against torch / torch.nn.functional, forward only
          and forward + backward (y.backward(g) with a fixed g of y's shape), same shapes.
Losses run with their default reduction="mean" on both sides (scipy side: the per-element
expression then .mean(); KL "mean" is torch's "batchmean"). Inputs are standard normal logits
times 3 (targets: class indices, probabilities in (0, 1), 0/1 labels). Each comparison is
nnstab.bench.timing.compare: interleaved pairs, median and spread of the per-pair ratios
nnstab / peer (< 1: nnstab is faster). Targets (never asserted; "!" marks a miss): NumPy median
<= 1.0 and worst <= 1.5; torch median <= 1.5. torch runs on --threads intra-op threads (default 1,
as NumPy and scipy use one core; spinning OpenMP threads on a busy machine distort small shapes).
The first call of a function compiles its fused numba loops (or loads them from numba's on-disk
cache); the warm-up call of each comparison's calibration absorbs that, so it is not in the ratios.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from nnstab.bench import accuracy
from nnstab.bench import timing
from nnstab.bench.timing import compare, text_table

SHAPES = ((4096, 1000), (64, 32000))
QUICK_SHAPES = ((256, 100), (4, 3200))
NUMPY_DTYPES = ("float32", "float64")
NUMPY_MEDIAN_TARGET, NUMPY_WORST_TARGET, TORCH_MEDIAN_TARGET = 1.0, 1.5, 1.5
FUNCTIONS = tuple(accuracy.FUNCTIONS)
LOSSES = {name for name, f in accuracy.FUNCTIONS.items() if f.loss}


def make_inputs(name: str, shape, rng) -> tuple:
    """float64 NumPy arguments for `name` (cast to the measured dtype by the caller; class indices stay int64)."""
    x = rng.standard_normal(shape) * 3
    if name == "cross_entropy":
        return x, rng.integers(0, shape[-1], size=shape[:-1])
    if name == "binary_cross_entropy":
        return rng.uniform(0.001, 0.999, size=shape), rng.integers(0, 2, size=shape).astype(float)
    if name == "binary_cross_entropy_with_logits":
        return x, rng.integers(0, 2, size=shape).astype(float)
    if name == "kl_div":
        p, q = np.exp(x), np.exp(rng.standard_normal(shape))
        return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    if name == "mse":
        return x, x + rng.standard_normal(shape)
    return (x,)


def _scipy_reduced(name):
    """The scipy peer with the loss reduced as nnstab's default reduction="mean" reduces it."""
    peer = accuracy.SCIPY_PEERS[name]
    if name == "kl_div":
        return lambda p, q: peer(p, q).sum() / p.shape[0]
    return (lambda *a: peer(*a).mean()) if name in LOSSES else peer


def _torch_reduced(name):
    import torch.nn.functional as F

    reduced = {"cross_entropy": F.cross_entropy, "binary_cross_entropy": F.binary_cross_entropy,
               "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
               "kl_div": lambda p, q: F.kl_div(q.log(), p, reduction="batchmean"), "mse": F.mse_loss}
    return reduced.get(name, accuracy.TORCH_PEERS[name])


def _nnstab(name):
    import nnstab

    return getattr(nnstab, name)


def _cast(args, dtype):
    return tuple(a.astype(dtype) if a.dtype.kind == "f" else a for a in args)


def numpy_case(name, dtype, shape, rng, repeat, min_time):
    args = _cast(make_inputs(name, shape, rng), dtype)
    ours, peer = _nnstab(name), _scipy_reduced(name)
    with np.errstate(all="ignore"):
        return compare(lambda: ours(*args), lambda: peer(*args), repeat=repeat, min_time=min_time)


def torch_case(name, shape, rng, backward, repeat, min_time):
    import torch

    args = [torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a)
            for a in make_inputs(name, shape, rng)]
    ours, peer = _nnstab(name), _torch_reduced(name)
    if not backward:
        def run(fn):
            with torch.no_grad():
                fn(*args)
        return compare(lambda: run(ours), lambda: run(peer), repeat=repeat, min_time=min_time)
    leaf = args[0].clone().requires_grad_(True)
    rest = args[1:]
    grad = torch.ones_like(peer(leaf.detach(), *rest))

    def step(fn):
        leaf.grad = None
        fn(leaf, *rest).backward(grad)

    return compare(lambda: step(ours), lambda: step(peer), repeat=repeat, min_time=min_time)


def _misses(backend, c) -> bool:
    if backend == "numpy":
        return c.median > NUMPY_MEDIAN_TARGET or c.worst > NUMPY_WORST_TARGET
    return c.median > TORCH_MEDIAN_TARGET


def add_arguments(parser):
    parser.add_argument("--functions", nargs="+", choices=list(FUNCTIONS), default=list(FUNCTIONS), metavar="NAME",
                        help="functions to measure (default: all)")
    timing.add_common_arguments(parser, "small shapes and 3 pairs (checks that everything runs; the ratios mean little)")


def main(args) -> int:
    with timing.threads(args.threads):
        return _run(args)


def _run(args) -> int:
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeat, min_time = (3, 0.002) if args.quick else (args.repeat, 0.05)
    jobs = [("numpy", name, dtype, shape, "forward") for name in args.functions
            for dtype in NUMPY_DTYPES for shape in shapes]
    jobs += [("torch", name, "float32", shape, mode) for name in args.functions for shape in shapes
             for mode in ("forward", "forward+backward")]
    rows, records, failures, start = [], [], 0, time.perf_counter()
    for k, (backend, name, dtype, shape, mode) in enumerate(jobs, 1):
        print(f"[{k}/{len(jobs)}] {name} {backend} {dtype} {shape} {mode}", file=sys.stderr, flush=True)
        rng = np.random.default_rng(k)
        peer = "scipy.special" if backend == "numpy" else "torch.nn.functional"
        try:
            c = (numpy_case(name, dtype, shape, rng, repeat, min_time) if backend == "numpy" else
                 torch_case(name, shape, rng, mode != "forward", repeat, min_time))
        except Exception as exc:
            failures += 1
            rows.append([name, backend, dtype, "x".join(map(str, shape)), mode, "error", "", "", "", ""])
            records.append({"function": name, "backend": backend, "dtype": dtype, "shape": list(shape),
                            "mode": mode, "error": f"{type(exc).__name__}: {exc}"})
            continue
        q1, q3 = c.iqr
        mark = "!" if _misses(backend, c) else ""
        rows.append([mark + name, f"{backend} vs {peer}", dtype, "x".join(map(str, shape)), mode,
                     f"{np.median(c.ours) * 1e3:.3f}", f"{np.median(c.peer) * 1e3:.3f}", f"{c.median:.2f}",
                     f"{c.best:.2f}-{c.worst:.2f}", f"{q1:.2f}-{q3:.2f}"])
        records.append({"function": name, "backend": backend, "peer": peer, "dtype": dtype, "shape": list(shape),
                        "mode": mode, "missed_target": bool(mark), **c.to_dict()})
    header = ["function", "backend", "dtype", "shape", "mode", "ours ms", "peer ms", "ratio", "min-max", "IQR"]
    print(text_table(header, rows, right_from=5))
    print("\nratio: median of per-pair nnstab/peer times (< 1: nnstab faster); targets: NumPy median <= 1.0 "
          "and max <= 1.5, torch median <= 1.5; ! marks a miss.")
    missed = sum(r.get("missed_target", False) for r in records)
    print(f"\n{len(records) - failures} comparisons, {missed} missing the speed targets, {failures} errors "
          f"({time.perf_counter() - start:.1f} s, torch threads {args.threads})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"schema": "nnstab.bench.numerics/1", "quick": bool(args.quick), "repeat": repeat,
                       "torch_threads": args.threads,
                       "results": records}, fh, indent=1)
    return 1 if failures else 0

