"""The monitor's records and their JSONL stream: one JSON object per line, appended and flushed every step.

Record types (every record is a dict with "type"; schema_version 1):
  header   schema_version, nnstab_version, framework ("torch" | "nnstab.nn"), model, layers [{name, type,
           dtype, params}], options, started (ISO-8601), rank, world_size, command
  step     step, loss, time (seconds since start), layers {name: {stat: float}}, rank;
           under AMP also amp_scale (the loss scale the step's gradients carried) and amp_skipped (bool)
  finding  Finding.to_dict() plus "type" and "id" (0, 1, ... in the order findings were made), written once
  finding_update  id, count, last_step: later repeats folded into finding `id` (in a log on disk, whenever
           the count moved, so a killed run's log has every repeat; in memory, when it reaches 2, 4, 8, ...;
           and once more when the monitor closes); the last update of an id holds its totals
  note     step, message: something the monitor cannot see in this run (e.g. the modules inside a
           torch.compile(fullgraph=True) graph), written once when first known
  end      status ("ok" | "exception" | "interrupted" | "killed"), error, steps, time

Per-layer statistics of a step record (each optional; absent when not measured that step). On the CPU,
every layer is measured every 10th step (and at once on any step where something went non-finite);
other steps record the loss and the sentinels (the model's outputs, the gradients nearest its inputs).
On an accelerator every layer is measured every step. Underflow shares come every 10th step, ranges every
20th, ReLU units every 5th, parameter gradient norms every 10th, parameter norms every 20th on the CPU and
every step on an accelerator (see the checks' options).
  act_min, act_max, act_absmax       range of the layer's outputs (over every call in the step)
  act_dtype_overflow_frac            share of output values that are +-inf in the output's own dtype
  act_dtype_underflow_frac           share of non-zero outputs that are subnormal in their own dtype
  act_fp16_overflow_frac, act_bf16_overflow_frac     share that would overflow in float16 / bfloat16
  act_fp16_underflow_frac, act_bf16_underflow_frac   share of non-zero outputs that would flush to zero there
  act_nonfinite, grad_nonfinite      1.0 when some output / output-gradient value was NaN or +-inf, else 0.0
  grad_out_norm, grad_out_rms, grad_out_absmax   2-norm, RMS and largest magnitude of dL/d(output)
                                     (unscaled under AMP)
  grad_dtype_underflow_frac, grad_fp16_overflow_frac, grad_fp16_underflow_frac, grad_bf16_underflow_frac
  param_norm, param_grad_norm        2-norms over the layer's own trainable parameters and their gradients
  dead_frac                          share of ReLU units that were zero on the whole batch
  saturated_frac                     share of sigmoid/tanh units in the flat region (softmax: rows near one-hot)
NaN and infinities are written as the strings "nan", "inf", "-inf" (strict JSON); read_log turns them back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nnstab.watch.finding import _decode_tree, _encode_tree

SCHEMA_VERSION = 1
LOG_NAME = "log.jsonl"   # the file inside log_dir


def to_json_line(record: dict) -> str:
    """One record as one line of strict JSON."""
    return json.dumps(_encode_tree(record), allow_nan=False, separators=(",", ":"))


class JsonlLog:
    """Appends records to `path`, one line each, handed to the OS at every `flush()` (the monitor flushes every step).

    The file is opened in append mode, so a crash or a kill leaves every record written before it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)   # line-buffered

    def write(self, record: dict):
        if self._file is not None:
            self._file.write(to_json_line(record) + "\n")

    def flush(self):
        # Handing the lines to the OS is enough for a killed process to lose nothing;
        # fsync (a machine crash) waits until close(), since it can cost milliseconds per call.
        if self._file is not None:
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.flush()
            try:
                os.fsync(self._file.fileno())
            except OSError:   # pipes and some file systems cannot fsync; the flush already happened
                pass
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None


def read_log(path) -> list[dict]:
    """The records of a JSONL log, with "nan"/"inf" strings turned back into floats.

    `path` is the file or the log_dir holding it. A truncated last line (a kill mid-write) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(_decode_tree(json.loads(line)))
            except json.JSONDecodeError:
                continue
    return records
