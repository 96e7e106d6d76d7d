"""Monitor and watch(): attach probes to a model, collect each step's statistics, run the checks, keep findings.

    monitor = nnstab.watch(model)                  # torch.nn.Module or nnstab.nn.Module
    for x, y in batches:
        ...forward, loss, backward, optimiser step...
        monitor.step(loss=loss)                    # once per optimiser step, after it
    monitor.findings; monitor.report(); monitor.close()

or `with nnstab.watch(model, log_dir="runs/nnstab") as monitor: ...`, which closes the monitor on exit,
writes an "end" record and the reports into log_dir, also when training raises (the exception goes on).

Measuring is separate from reporting: hooks record small device arrays into a Tape (adapters/), one
transfer per step turns them into a StepView (summary.py), the scheduled checks (checks/) turn that
into findings, and every step's statistics and findings become records (log.py) that a Report is built
from. The hooks never change a tensor: training with or without the monitor is bit-for-bit the same.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import sys
import time
import traceback
import weakref
from pathlib import Path

from nnstab.watch import options
from nnstab.watch.adapters import adapter_for
from nnstab.watch.amp import AmpWatch, check_scaler
from nnstab.watch.finding import Finding
from nnstab.watch.distributed import log_name, report_stem
from nnstab.watch.log import SCHEMA_VERSION, JsonlLog
from nnstab.watch.summary import summarize

_WATCHED = weakref.WeakValueDictionary()   # id(model) -> its open Monitor
EVERY_IN_MEMORY = 50    # without a log, steps are read and checked 50 at a time: per-step host work costs
                        # most when it runs between training steps (cold caches), least in one batch, and a
                        # read has a fixed part (~0.4 ms for a small model) that 50 steps share better than 10
REPORT_FORMATS = ("md", "html", "json")    # written into log_dir when a context-managed monitor closes


class Plan:
    """What the hooks measure during one step: the union of its scheduled checks' needs."""

    __slots__ = ("range", "grads", "layers", "params", "pgrads", "units", "sat", "under")

    def __init__(self, needs):
        for name in self.__slots__:
            setattr(self, name, name in needs)

    def copy(self) -> "Plan":
        return Plan({name for name in self.__slots__ if getattr(self, name)})


class Context:
    """What checks may know about the run besides the step: layer types and parameter counts, framework."""

    def __init__(self, framework, layers, accelerated=False):
        self.framework = framework
        self.accelerated = accelerated   # parameters live on a GPU (or another device than the CPU)
        self.types = {info.name: info.type for info in layers}
        self.params = {info.name: info.params for info in layers}


class Monitor:
    """Probes on a model; see `watch` for the options."""

    def __init__(self, model, *, checks=None, every=None, log_dir=None, scaler=None, report=True, command=None,
                 lint=False, replay=False):
        self._checks = options.make_checks(checks)
        self._lint = options.lint(lint, model)
        self._replay_mode = options.replay(replay)
        self._replay = None
        self._linter = None
        self.log_dir = None if log_dir is None else Path(options.path("log_dir", log_dir))
        if every is None:   # a log on disk is written every step; in memory, steps are processed in batches
            every = 1 if self.log_dir is not None else EVERY_IN_MEMORY
        self.every = options.positive_int("every", every)
        self.write_report = options.boolean("report", report)
        self.command = options.command(command)
        self._amp = AmpWatch(check_scaler(scaler), auto=scaler is None)
        if id(model) in _WATCHED:
            raise RuntimeError(f"this {type(model).__name__} is already watched by another monitor; call "
                               f"monitor.close() on it first (one monitor per model keeps the hooks unambiguous)")
        self.model = model
        self.adapter = adapter_for(model)(model)
        self.adapter.attach()
        _WATCHED[id(model)] = self
        self._closed = False
        self._t0 = time.perf_counter()
        self._step = 0
        self._pending = []
        self._disabled = set()
        self._plans = {}          # step % period -> Plan (schedules repeat with the period)
        sat = self._checks.get("saturation")   # what a saturated unit is, for summarize
        self._sat_options = (sat.slope, sat.softmax_top) if sat else (0.1, 0.99)
        self._errors_seen = 0
        self._open = {}           # fold key -> index into self._findings
        self._findings: list[Finding] = []
        self._written_count = {}  # finding index -> count last written to the records
        self._last_seen = {}      # finding index -> last step it was seen
        self._records: list[dict] = []
        self._notes_written = set()   # adapter notes already in the records
        self._log = None
        layers = self.adapter.layers()
        self._ctx = Context(self.adapter.framework, layers, self.adapter.accelerated())
        for check in self._checks.values():
            check.bind(self._ctx)
        self._period = options.period(self._checks.values())
        if self.adapter.framework == "torch":
            self._amp.find()
        rank, world = options.distributed()
        self.rank, self.world_size = rank, world   # ranks sharing a log_dir write their own files
        try:
            if self.log_dir is not None:
                self._log = JsonlLog(self.log_dir / log_name(rank, world))
            self._record({
                "type": "header", "schema_version": SCHEMA_VERSION, "nnstab_version": options.version(),
                "framework": self.adapter.framework, "model": type(model).__name__,
                "layers": [info._asdict() for info in layers], "options": self.options(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "rank": rank, "world_size": world, "command": self.command,
            })
            self._flush_log()
        except BaseException:
            self._detach()
            raise
        if self._replay_mode:   # the first non-finite step is replayed to its operation (nnstab.watch.replay)
            from nnstab.watch import replay as replay_package

            try:
                self._replay = replay_package.make(model, self.adapter.framework, self._replay_mode)
                self._replay.replayer.suspect = self._step_suspect
                self.adapter.read_loss_now = True   # its per-step scan reads the loss at once
            except BaseException:
                self._detach()
                raise
        if self._lint:   # imported only when asked: the lint's torch function mode sees every torch call
            from nnstab.lint import Linter

            self._linter = Linter(model, step=self._step).start()
        self.adapter.begin(0, self._plan(0))

    # -- public ------------------------------------------------------------------------------------
    def step(self, loss=None):
        """Close the current training step (call once per optimiser step, after it).

        `loss`: the step's loss — a one-element tensor (read with the step's other statistics, no extra
        synchronisation), a float, or None. Statistics are read every `every` steps.
        """
        if self._closed:
            raise RuntimeError("monitor.step() after monitor.close(); create a new monitor with nnstab.watch(model)")
        self.adapter.check_loss(loss)
        if self._step == 0 and self.adapter.framework == "torch":
            self._amp.find(fresh=True)      # a GradScaler made after watch(): it scaled only this step
        tape = self.adapter.end(loss, self._amp.state())
        if tape is not None:
            tape.time = time.perf_counter() - self._t0
            self._pending.append(tape)
        if self._linter is not None:
            self._linter.step(read=False)   # its counts stay on the device until the next flush
        if self._replay is not None and self._replay.nonfinite(tape, loss):
            self._flush()                   # checked now, while this step's snapshot is the latest
        self._step += 1
        if self._replay is not None:
            self._replay.stepped(self._step)
        self.adapter.begin(self._step, self._plan(self._step))
        if len(self._pending) >= self.every:
            self._flush()

    def _step_suspect(self) -> bool:
        """Whether the step recorded so far (its forward and backward) holds a NaN/inf: asked by a lazy
        replay snapshot just before the optimiser updates the parameters (the CPU only: no device read)."""
        tape = self.adapter.tape
        if tape is None:
            return False
        self.adapter.flush_grads()      # backward is over: the held gradients' sentinels are looked at now
        return self._replay.nonfinite(tape, None, note_loss=False)

    @property
    def findings(self) -> list[Finding]:
        """Every finding so far, in the order they were first seen (repeats folded into count/last_step)."""
        self._flush()
        return list(self._findings)

    @property
    def records(self) -> list[dict]:
        """The run's records so far (header, step, finding, finding_update, end), as the JSONL log holds
        them; see nnstab.watch.log. A Report is built from these alone."""
        self._flush()
        return self._records

    @property
    def steps(self) -> int:
        """How many times step() was called."""
        return self._step

    def report(self):
        """The Report of the records so far (nnstab.report.Report): to_markdown(), to_html(), to_json(), save()."""
        self._flush()
        from nnstab.report import Report

        return Report(self._records, running=not self._closed)

    def close(self, *, status: str = "ok", error: str | None = None):
        """Remove every hook (the model is as it was), read what is pending and write the "end" record.

        Safe to call twice. `status` ("ok", "exception", "interrupted", "killed") and `error` go into the
        end record; the context manager fills them in.
        """
        if self._closed:
            return
        try:
            partial = None
            tape = self.adapter.tape
            if status != "ok" and tape is not None and tape.calls and not tape.broken:
                tape.plan = tape.plan.copy()
                tape.plan.params = tape.plan.pgrads = False   # the optimiser step never happened
                partial = self.adapter.end()  # what the interrupted step recorded, as far as it got
                partial.time = time.perf_counter() - self._t0
            lint_tail = self._linter.close() if self._linter is not None else []   # a step left open too
            self._detach()
            if partial is not None:
                self._pending.append(partial)
            self._flush(partial_last=partial is not None)
            self._add_lint(lint_tail)
            self._write_notes()
            self._write_updates(final=True)
            self._record({"type": "end", "status": status, "error": error, "steps": self._step,
                          "time": time.perf_counter() - self._t0})
            self._flush_log()
        finally:
            self._closed = True
            if self._log is not None:
                self._log.close()

    def options(self) -> dict:
        """The monitor's options as given (checks with their effective thresholds)."""
        return {"every": self.every, "log_dir": None if self.log_dir is None else str(self.log_dir),
                "report": self.write_report, "scaler": "auto" if self._amp.auto else self._amp.scaler is not None,
                "lint": self._lint, "replay": self._replay_mode,
                "checks": {kind: c.options() for kind, c in self._checks.items()}}

    def __enter__(self):
        return self

    def __del__(self):
        # a monitor dropped without close(): take its hooks off the model, so the model is not left
        # recording into a tape nobody reads (the log, if any, keeps what was flushed)
        try:
            if not self._closed:
                self._detach()
                if self._log is not None:
                    self._log.close()
        except Exception:
            pass

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            status, error = "ok", None
        elif issubclass(exc_type, KeyboardInterrupt):
            status, error = "interrupted", "KeyboardInterrupt"
        else:
            status, error = "exception", "".join(traceback.format_exception_only(exc_type, exc)).strip()
        try:
            self.close(status=status, error=error)
            if self.write_report and self.log_dir is not None:
                self._save_reports()
        except Exception as inner:   # never hide the training's own exception behind ours
            if exc_type is None:
                raise
            print(f"nnstab.watch: could not finish the log after {error}: {inner!r}", file=sys.stderr)
        return False

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return (f"<nnstab.watch Monitor {state}: {type(self.model).__name__} ({self.adapter.framework}), "
                f"{self._step} steps, {len(self._findings)} findings>")

    # -- the step pipeline ---------------------------------------------------------------------------
    def _plan(self, step) -> Plan:
        key = step % self._period if self._period else None
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            needs = set()
            for kind, check in self._checks.items():
                if kind not in self._disabled:
                    needs |= check.needs(step)
            plan = Plan(needs)
            if key is not None:
                self._plans[key] = plan
        return plan

    def _flush(self, partial_last=False):
        if not self._pending:
            self._report_adapter_errors()
            return
        tapes, self._pending = self._pending, []
        try:
            self.adapter.read(tapes)
        except Exception as exc:
            self._internal("nonfinite", "reading the step statistics", exc)
            self._report_adapter_errors()
            return
        for k, tape in enumerate(tapes):
            self._process(tape, partial=partial_last and k == len(tapes) - 1)
        if self._linter is not None:
            self._add_lint(self._linter.read())   # the same steps' formulas: one transfer for all
        self._report_adapter_errors()
        self._write_notes()
        self._write_updates()
        self._flush_log()

    def _process(self, tape, partial=False):
        tape.amp = self._amp.verdict(tape.s(tape.scale)) if tape.scale is not None else None
        view = summarize(tape, self.adapter.names, *self._sat_options)
        if view.origins and tape.step > 0 and self.adapter.framework == "torch":
            self._amp.find()   # a late GradScaler: judged from the next step on
        record = {"type": "step", "step": tape.step, "loss": view.loss, "time": tape.time,
                  "layers": {name: st for name, st in view.stats.items() if st}, "rank": self.rank}
        if view.amp_scale is not None:
            record["amp_scale"] = view.amp_scale
            record["amp_skipped"] = view.amp_skipped
        if partial:
            record["partial"] = True
        self._record(record)
        step = tape.step
        for kind, check in self._checks.items():
            if step % check.every or kind in self._disabled:
                continue
            try:
                found = check.observe(view)
            except Exception as exc:
                self._disabled.add(kind)
                self._plans.clear()
                self._internal(kind, f"the {kind} check", exc, tape.step)
                continue
            for f in found:
                if self._replay is not None and kind == "nonfinite":
                    f = self._replay.explain(f)
                self._add(f, tape.step)

    def _add(self, f: Finding, step: int):
        """A new finding, or one more repeat of an open one (same kind, layer, phase and severity)."""
        if self.rank is not None and f.rank is None:
            f = dataclasses.replace(f, rank=self.rank)
        key = (f.kind, f.layer, f.phase, f.severity)
        if f.kind == "unstable_formula":   # two formulas in one layer are two findings
            key += (f.details.get("pattern"), f.details.get("location"))
        k = self._open.get(key)
        if k is None:
            k = self._open[key] = len(self._findings)
            self._written_count[k] = 1
            self._last_seen[k] = step
            self._findings.append(f)
            self._record({"type": "finding", "id": k, **f.to_dict()})
        elif step > self._last_seen[k]:       # one count per step
            self._last_seen[k] = step
            self._findings[k] = self._findings[k].folded(step)

    def _add_lint(self, found):
        """The lint's findings, one per formula and step; the monitor counts steps, so each starts at count 1
        (the step's calls stay in details["observed"] and the message)."""
        for f in found:
            self._add(dataclasses.replace(f, count=1, last_step=None), f.step)

    def _write_notes(self):
        """A "note" record for each new thing the adapter says it cannot see (e.g. inside a fullgraph compile)."""
        for text in sorted((set(self.adapter.notes) | self._amp.notes) - self._notes_written):
            self._notes_written.add(text)
            self._record({"type": "note", "step": self._step, "message": text})

    def _write_updates(self, final=False):
        """finding_update records for folded findings. With a log on disk, whenever a count moved (a kill
        then loses no repeat: the log is flushed with them); in memory, at counts 2, 4, 8, ... (a finding
        repeated every step stays a few records) and, at close, the totals."""
        on_disk = self._log is not None
        for k, f in enumerate(self._findings):
            last = self._written_count.get(k, 1)
            if f.count != last and (final or on_disk or f.count >= 2 * last):
                self._written_count[k] = f.count
                self._record({"type": "finding_update", "id": k, "count": f.count, "last_step": f.last_step})

    def _internal(self, kind, what, exc, step=None):
        detail = f"{type(exc).__name__}: {exc}"
        self._add(Finding(kind, "", self._step if step is None else step, "update", "info", math.nan, math.nan,
                          f"internal error in nnstab.watch ({what}): {detail}; it is switched off for the rest of "
                          f"the run, training is unaffected", details={"internal_error": True, "error": detail}),
                  self._step if step is None else step)

    def _report_adapter_errors(self):
        errors = self.adapter.errors
        while self._errors_seen < len(errors):
            where, exc = errors[self._errors_seen]
            self._errors_seen += 1
            self._internal("nonfinite", where, exc)

    # -- records and files ------------------------------------------------------------------------------
    def _record(self, record):
        self._records.append(record)
        if self._log is not None:
            self._log.write(record)

    def _flush_log(self):
        if self._log is not None:
            self._log.flush()

    def _save_reports(self):
        try:
            from nnstab.report import Report
        except ImportError:
            return
        report = Report(self._records)
        for fmt in REPORT_FORMATS:
            report.save(self.log_dir / f"{report_stem(self.rank, self.world_size)}.{fmt}")

    def _detach(self):
        if self._replay is not None:
            self._replay.close()
        if self._linter is not None:
            self._linter.close()   # its mode off the thread's stack (a no-op once closed)
        self.adapter.detach()
        if _WATCHED.get(id(self.model)) is self:
            del _WATCHED[id(self.model)]


def watch(model, *, checks=None, every=None, log_dir=None, scaler=None, report=True, command=None,
          lint=False, replay=False) -> Monitor:
    """Watch a model's training for numerical failures; returns a Monitor (also a context manager).

    model     a torch.nn.Module or an nnstab.nn.Module. Watching a model that an open monitor already
              watches is a RuntimeError (close the first one).
    checks    which checks run, and their options: None (all), a list of kinds, or a dict
              {kind: True | False | {option: value}}, e.g. {"dead_relu": {"share": 0.5}, "underflow": False}.
              Kinds: nonfinite, overflow, underflow, vanishing_gradient, exploding_gradient, saturation,
              dead_relu, loss_divergence. Every check takes `every` (run on every n-th step) besides its
              own thresholds, documented (with their reasons) in nnstab/watch/checks/<kind>.py.
    every     read and check the statistics every n steps (default: 1 with log_dir, so the log on disk is
              complete up to the last step; 50 without, a third of the host-side cost of every step). Every step is
              still measured and findings keep their own step; `findings`, `records`, `report()` and
              `close()` first process whatever is pending.
    log_dir   a directory: every step's statistics and findings are appended to log_dir/log.jsonl and
              flushed every step; as a context manager the monitor also writes report.md/.html/.json there.
              Under torch.distributed with several ranks, each rank writes log.rank<r>.jsonl and
              report.rank<r>.*, so ranks may share log_dir (merge: nnstab.watch.distributed.merge_logs).
    scaler    the torch.amp.GradScaler in use; None finds one automatically (the only enabled one alive),
              False means none. Steps the scaler skips are "info", and the gradients measured in backward
              are divided by the scale (parameter gradients are read at monitor.step(), which comes after
              scaler.step() has unscaled them).
    report    write the reports into log_dir when the context manager exits (default True).
    command   the command line of the run, recorded in the log header (`nnstab run` fills it in).
    lint      also run nnstab.lint's Linter (torch models only; a TypeError for an nnstab.nn model): the
              hand-written unstable formulas the training calls (log(softmax(x)), log(1 + exp(x)), ...)
              become "unstable_formula" findings, "warning" in steps whose inputs reached the formula's
              losing range, else "info"; one per formula and source line. It installs a torch function
              mode in the calling thread until close(), which slows every torch call; values are unchanged.
    replay    False, True (= "device") or "host": re-run the run's first non-finite step from a snapshot
              of the latest step (parameters, buffers, inputs by reference, RNG state; kept on the
              parameters' device, or in host memory with "host") and name the operation that made the
              NaN/inf: details["replay"] of that nonfinite finding (op, module, phase, source line, input
              statistics), and a clause in its message. Costs a parameter copy per step, and on an
              accelerator one small device-to-host read per step; the run itself is unchanged. See
              nnstab/watch/replay/__init__.py. `nnstab run` turns it on (--no-replay turns it off).

    Only training passes count: forward passes under torch.no_grad()/inference_mode are not measured,
    and passes that no backward went through (an evaluation with gradients on, in either mode) are
    dropped from the step's statistics when another pass of the step had a backward. A model left in
    eval() mode by mistake is still watched.
    """
    return Monitor(model, checks=checks, every=every, log_dir=log_dir, scaler=scaler, report=report,
                   command=command, lint=lint, replay=replay)
