"""Side-by-side timing: ours and a peer measured in alternation, reported as the spread of per-pair ratios.

A machine's speed drifts (frequency scaling, other processes, caches), so timing ours for a while
and then the peer for a while measures the drift as much as the code. `compare` runs them in
interleaved pairs, alternating which goes first (ours, peer, peer, ours, ...), and keeps the ratio
ours / peer of each pair: drift slower than one pair cancels out of every ratio. A sample calls the
function `number` times (calibrated so a sample lasts at least `min_time`), with the garbage
collector paused as timeit does. The report is the median ratio and its spread (min, max and the
interquartile range); a ratio below 1 means ours is faster.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass


def calibrate(fn, min_time: float) -> int:
    """Calls per sample so that one sample lasts at least min_time seconds (after one warm-up call)."""
    fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or number >= 1 << 20:
            return number
        number *= 2 if elapsed == 0 else max(2, min(10, int(min_time / elapsed * 1.2) + 1))


def _sample(fn, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


@dataclass
class Comparison:
    """Per-call seconds of each interleaved sample, ours[i] paired with peer[i]."""

    ours: list
    peer: list

    @property
    def ratios(self) -> list:
        return [a / b for a, b in zip(self.ours, self.peer)]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def worst(self) -> float:
        return max(self.ratios)

    @property
    def best(self) -> float:
        return min(self.ratios)

    @property
    def iqr(self) -> tuple:
        """(first quartile, third quartile) of the ratios."""
        r = sorted(self.ratios)
        if len(r) < 2:
            return (r[0], r[0])
        q = statistics.quantiles(r, n=4, method="inclusive")
        return (q[0], q[2])

    def to_dict(self) -> dict:
        return {"ours_s": statistics.median(self.ours), "peer_s": statistics.median(self.peer),
                "ratio_median": self.median, "ratio_min": self.best, "ratio_max": self.worst,
                "ratio_q1": self.iqr[0], "ratio_q3": self.iqr[1], "pairs": len(self.ours)}


def compare(ours, peer, *, repeat: int = 15, min_time: float = 0.05, cycle: int = 1) -> Comparison:
    """Time ours() against peer() in `repeat` interleaved pairs (see the module doc).

    `cycle`: calls per sample are rounded up to a multiple of it, for work that repeats with a period
    (a monitor measures more on some steps than on others): every sample then holds whole periods, and
    the ratio is that of the mean cost, not of whichever steps a short sample happened to catch."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if cycle < 1:
        raise ValueError(f"cycle must be >= 1, got {cycle}")
    n_ours, n_peer = (-(-calibrate(fn, min_time) // cycle) * cycle for fn in (ours, peer))
    a, b = [], []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(repeat):
            if i % 2 == 0:
                a.append(_sample(ours, n_ours))
                b.append(_sample(peer, n_peer))
            else:
                b.append(_sample(peer, n_peer))
                a.append(_sample(ours, n_ours))
    finally:
        if was_enabled:
            gc.enable()
    return Comparison(a, b)


def text_table(header, rows, right_from: int = 0) -> str:
    """A plain-text table with | separators; columns from index right_from on are right-aligned."""
    table = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(r):
        cells = [v.rjust(w) if i >= right_from else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(table[0]), rule] + [line(r) for r in table[1:]])


@contextlib.contextmanager
def threads(n: int):
    """Run torch and NumPy's BLAS on n threads (BLAS through threadpoolctl when it is installed).

    Every benchmark pins both sides to the same thread count: on a shared machine, spinning
    BLAS/OpenMP threads distort a ratio more than anything measured.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limiter = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=n, user_api="blas")
    try:
        with limiter:
            yield
    finally:
        torch.set_num_threads(before)


def add_common_arguments(parser, quick_help: str, repeat: int = 15):
    """The options every benchmark table shares: --repeat, --quick, --threads, --json."""
    parser.add_argument("--repeat", type=int, default=repeat, help=f"interleaved pairs per comparison (default {repeat})")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and NumPy's BLAS (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
