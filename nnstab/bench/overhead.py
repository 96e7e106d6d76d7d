"""`nnstab bench overhead`: the cost of watching a training step, as ratios to the plain step, side by side.

Per model, four copies of the same network (same weights, same batch, SGD) are trained:
  plain     the training step alone (forward, loss, backward, optimiser step, zero_grad);
  watch     the same step under nnstab.watch with its default options, monitor.step(loss=loss) included;
  replay    the same under nnstab.watch(model, replay=True) (as `nnstab run` watches): on top of watch, the
            snapshot a replay of the first non-finite step needs (a copy of the parameters each step);
  anomaly   the same step under torch.autograd.set_detect_anomaly(True), torch's own NaN hunter;
  item      a hand-written probe: a forward hook and a full backward hook on every module, each checking
            its tensors with isfinite(...).all().item() and abs().max().item() (a host sync per hook).
Each of watch, anomaly and item is timed against plain with nnstab.bench.timing.compare (interleaved
pairs, median and spread of the per-pair ratios). Models, on the CPU:
  mlp  a 4-layer MLP 784-512-512-512-10 (ReLU), batch 128 (an MNIST-sized classifier);
  cnn  a small CNN for 32x32x3 images, conv(32)-pool-conv(64)-pool-fc(128)-fc(10), ReLU, batch 64.
Target (never asserted; "!" marks a miss): watch and replay <= 1.05x plain. torch runs on --threads intra-op
threads (default 1: on a shared machine spinning threads distort small steps).

The monitor does more on some steps than on others (ReLU units every 5th step, every layer and the
parameters' gradients every 10th, ranges and parameters every 20th, a read of the pending statistics
every 50th): every sample runs whole periods of that schedule (100 steps with the defaults), on both
sides alike, so a ratio is that of the mean step, not of whichever steps a short sample caught.

Each comparison runs in a fresh process: the CNN's steps allocate megabytes, and a comparison run after
others inherited their heap (the same replay-vs-plain comparison measured 1.07 first and 1.24 third).
"""
from __future__ import annotations

import copy
import json
import math
import multiprocessing
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

from nnstab.bench import timing
from nnstab.bench.timing import compare, text_table

TARGET = 1.05
MODELS = ("mlp", "cnn")
VARIANTS = ("watch", "replay", "anomaly", "item")


def make_model(name: str):
    """(model, inputs, labels) for `name`, seeded."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                              nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        return model, torch.randn(128, 784), torch.randint(0, 10, (128,))
    if name == "cnn":
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))
        return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def item_probe(model):
    """The naive probe: every hook reads its tensors back to the host at once. Returns the handles."""
    import torch

    def check(tensors):
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                bool(torch.isfinite(t).all().item())
                float(t.detach().abs().max().item())

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_hook(lambda mod, inp, out: check((out,))))
        if not list(m.children()):   # full backward hooks on containers would wrap their children twice
            handles.append(m.register_full_backward_hook(lambda mod, gin, gout: check(gout)))
    return handles


def training_step(name: str, variant: str):
    """A zero-argument function running one training step of `variant` on its own copy of the model."""
    import torch
    from torch import nn

    from nnstab.watch import watch

    model, x, y = make_model(name)
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = watch(model) if variant == "watch" else watch(model, replay=True) if variant == "replay" else None
    if variant == "item":
        item_probe(model)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(loss=loss)

    if variant == "anomaly":
        def anomalous():
            with torch.autograd.set_detect_anomaly(True):
                step()
        return anomalous, monitor
    if variant == "item":
        def probed():
            with warnings.catch_warnings():   # torch notes that the first layer's input needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                step()
        return probed, monitor
    return step, monitor


def compare_in_process(name, variant, repeat, min_time, quick, threads):
    """(ours, peer) per-call seconds of `variant` against plain on model `name` (run in a fresh process)."""
    with timing.threads(threads):
        plain, _ = training_step(name, "plain")
        ours, monitor = training_step(name, variant)
        cycle = 1 if quick or monitor is None else schedule_period(monitor)
        c = compare(ours, plain, repeat=repeat, min_time=min_time, cycle=cycle)
        if monitor is not None:
            monitor.close()
    return c.ours, c.peer


def schedule_period(monitor) -> int:
    """Steps after which the monitor's work repeats: its checks' schedules and its reads (`every`)."""
    from nnstab.watch import options

    checks = options.period(monitor._checks.values()) or 1
    return checks * monitor.every // math.gcd(checks, monitor.every)


def add_arguments(parser):
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models (default: both)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="what to compare with the plain step (default: all)")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed sample (default 0.2)")
    # a sample spans a whole period of the monitor's schedule (100 steps): fewer pairs suffice
    timing.add_common_arguments(parser, "3 short pairs (checks that everything runs; the ratios mean little)", repeat=7)


def main(args) -> int:
    return _run(args)      # each comparison sets its threads in its own process (compare_in_process)


def _run(args) -> int:
    repeat, min_time = (3, 0.02) if args.quick else (args.repeat, args.min_time)
    rows, records, misses = [], [], 0
    for name in args.models:
        row = [name]
        for variant in args.variants:
            print(f"{name}: {variant} vs plain", file=sys.stderr, flush=True)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                ours_s, peer_s = fresh.submit(compare_in_process, name, variant, repeat, min_time, args.quick,
                                              args.threads).result()
            c = timing.Comparison(ours_s, peer_s)
            miss = variant in ("watch", "replay") and c.median > TARGET
            misses += miss
            q1, q3 = c.iqr
            row.append(f"{c.median:.3f} [{q1:.3f}, {q3:.3f}]{' !' if miss else ''}")
            records.append({"model": name, "variant": variant, **c.to_dict()})
        plain_ms = min(r["peer_s"] for r in records if r["model"] == name) * 1e3
        rows.append([name, f"{plain_ms:.2f}"] + row[1:])
    header = ["model", "plain ms"] + [f"{v} / plain (median [IQR])" for v in args.variants]
    print(text_table(header, rows, right_from=1))
    print(f"target: watch, replay <= {TARGET}x plain; torch threads: {args.threads}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"target": TARGET, "threads": args.threads, "results": records}, f, indent=2)
    return 0
