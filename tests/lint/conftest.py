"""Helpers for the lint tests: run code under a Linter, find a marked line, call `nnstab lint` in-process."""
import io
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from nnstab.lint import Linter

SCRIPTS = Path(__file__).parent / "scripts"


def marker_line(path, name) -> int:
    """The number of the one line of `path` that ends with the comment `# <name>`."""
    hits = [i for i, line in enumerate(Path(path).read_text().splitlines(), start=1)
            if line.rstrip().endswith(f"# <{name}>")]
    assert len(hits) == 1, f"marker <{name}> must occur once in {path}, found {len(hits)}"
    return hits[0]


def lint(fn, model=None, steps=1):
    """Run `fn()` `steps` times under a Linter (a step after each); the linter, checked to have had no
    internal failure."""
    linter = Linter(model)
    with linter:
        for _ in range(steps):
            fn()
            linter.step()
    assert linter.errors == []
    return linter


def only(findings, pattern=None):
    """The single finding (of `pattern`, when given)."""
    chosen = [f for f in findings if pattern is None or f.details["pattern"] == pattern]
    assert len(chosen) == 1, [str(f) for f in findings]
    return chosen[0]


@pytest.fixture
def kit():
    """The helpers above, for test modules (conftest is not importable under --import-mode=importlib)."""
    return types.SimpleNamespace(lint=lint, only=only, marker_line=marker_line)


@pytest.fixture
def scripts():
    return SCRIPTS


@pytest.fixture
def nnstab_cli(monkeypatch):
    """Call `nnstab ARGS...` as the shell would, in this process: (exit status, stdout, stderr)."""
    from nnstab.cli import main

    def call(*argv):
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setenv("NO_COLOR", "1")
        with redirect_stdout(out), redirect_stderr(err):
            status = main([str(a) for a in argv])
        return types.SimpleNamespace(status=status, out=out.getvalue(), err=err.getvalue())

    saved_argv = list(sys.argv)
    yield call
    assert sys.argv == saved_argv
