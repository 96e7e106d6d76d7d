"""Running the `nnstab` command in-process, on the unedited training scripts in scripts/."""
import io
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"


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
    assert sys.argv == saved_argv  # `nnstab run` gives the script its argv and takes it back
