"""`nnstab bench numerics --quick` runs every kind of comparison and reports ratios; the dispatcher finds its tables."""
import importlib
import json

import numpy as np

from nnstab.bench import cli as bench_cli
from nnstab.bench import numerics
from nnstab.cli import main


def test_every_registered_table_is_a_module_with_the_command_interface():
    for module_name, _ in bench_cli.TABLES.values():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.main)


def test_inputs_fit_each_function():
    rng = np.random.default_rng(0)
    p, q = numerics.make_inputs("kl_div", (3, 5), rng)
    assert np.allclose(p.sum(-1), 1) and np.allclose(q.sum(-1), 1)
    x, t = numerics.make_inputs("cross_entropy", (3, 5), rng)
    assert t.shape == (3,) and t.dtype.kind == "i" and ((0 <= t) & (t < 5)).all()
    probs, labels = numerics.make_inputs("binary_cross_entropy", (3, 5), rng)
    assert ((probs > 0) & (probs < 1)).all() and set(np.unique(labels)) <= {0.0, 1.0}


def test_quick_run_reports_ratios_for_numpy_and_torch(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "numerics", "--quick", "--functions", "logsumexp", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "numpy vs scipy.special" in out and "torch vs torch.nn.functional" in out and "forward+backward" in out
    data = json.loads(path.read_text())
    results = data["results"]
    assert data["schema"] == "nnstab.bench.numerics/1" and data["torch_threads"] == 1
    kinds = {(r["backend"], r["dtype"], r["mode"]) for r in results}
    assert kinds == {("numpy", "float32", "forward"), ("numpy", "float64", "forward"),
                     ("torch", "float32", "forward"), ("torch", "float32", "forward+backward")}
    for r in results:
        assert r["pairs"] == 3 and r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
        assert r["ours_s"] > 0 and r["peer_s"] > 0


def test_bare_bench_runs_every_table_with_its_defaults(monkeypatch, capsys):
    import sys
    import types

    seen = []
    fake = types.ModuleType("fake_table")
    fake.add_arguments = lambda parser: parser.add_argument("--size", type=int, default=7)
    fake.main = lambda args: seen.append(args.size) or 0
    monkeypatch.setitem(sys.modules, "fake_table", fake)
    monkeypatch.setattr(bench_cli, "TABLES", {"fake": ("fake_table", "a stand-in table")})
    assert main(["bench"]) == 0 and seen == [7]
    assert main(["bench", "fake", "--size", "3"]) == 0 and seen == [7, 3]
    assert "== fake ==" in capsys.readouterr().out
