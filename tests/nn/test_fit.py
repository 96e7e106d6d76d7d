"""fit(): batching, seeded shuffling, validation split, per-epoch history and progress output."""
import importlib
import sys

import numpy as np
import pytest

from nnstab import nn

fit_module = importlib.import_module("nnstab.nn.fit")   # the module; nnstab.nn.fit is the function


def blobs(n=120, seed=0):
    """Two Gaussian blobs in 2-d: linearly separable, so any working trainer reaches high accuracy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2)) + 3 * y[:, None]
    return x.astype(np.float32), y


class CountingSGD(nn.optim.SGD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self):
        self.steps += 1
        super().step()


def classifier(seed=0):
    return nn.Sequential(nn.Dense(2, 8, rng=seed), nn.ReLU(), nn.Dense(8, 2, rng=seed + 1))


@pytest.mark.parametrize("batch_size,steps_per_epoch", [(None, 1), (32, 4), (120, 1), (50, 3)])
def test_one_step_per_batch(batch_size, steps_per_epoch):
    x, y = blobs()
    model = classifier()
    opt = CountingSGD(model.parameters(), lr=0.1)
    nn.fit(model, nn.CrossEntropyLoss(), opt, x, y, epochs=3, batch_size=batch_size)
    assert opt.steps == 3 * steps_per_epoch


def test_history_has_one_record_per_epoch_and_the_loss_falls():
    x, y = blobs()
    model = classifier()
    history = nn.fit(model, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters(), lr=0.05), x, y,
                     epochs=15, batch_size=16, validation_split=0.25)
    assert len(history) == 15 and history["epoch"] == list(range(1, 16))
    assert history.loss[-1] < history.loss[0] / 2
    assert history.accuracy[-1] > 0.9 and history.val_accuracy[-1] > 0.9
    assert all(v is not None for v in history.val_loss)


def test_same_seed_same_history_other_seed_other_history():
    x, y = blobs()

    def run(seed):
        model = classifier()
        return nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y,
                      epochs=3, batch_size=10, seed=seed, validation_split=0.2).loss

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_validation_split_holds_out_rows_and_validation_data_is_used_as_given():
    x, y = blobs(100)
    model = classifier()
    seen = []
    model.register_forward_hook(lambda m, inputs, out: seen.append((m.training, len(inputs[0]))))
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=1,
           validation_split=0.3)
    assert seen == [(True, 70), (False, 30)]    # one full-batch training step, then evaluation in eval mode
    assert model.training
    seen.clear()
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=1,
           validation_data=(x[:7], y[:7]))
    assert seen == [(True, 100), (False, 7)]


def test_regression_loss_records_no_accuracy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32))
    model = nn.Dense(3, 1, rng=0)
    history = nn.fit(model, nn.MSELoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=30)
    assert history.accuracy == [None] * 30
    assert history.loss[-1] < 1e-2


def test_binary_accuracy_for_logits_and_probabilities():
    x, y = blobs()
    yf = y.reshape(-1, 1).astype(np.float32)
    for loss_fn, head in [(nn.BCEWithLogitsLoss(), []), (nn.BCELoss(), [nn.Sigmoid()])]:
        model = nn.Sequential(nn.Dense(2, 1, rng=0), *head)
        history = nn.fit(model, loss_fn, nn.optim.Adam(model.parameters(), lr=0.1), x, yf, epochs=30)
        assert history.accuracy[-1] > 0.9


def test_progress_true_prints_one_line_per_epoch(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)   # the plain-text bar, whether or not tqdm is installed
    x, y = blobs()
    model = classifier()
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=3, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch 3/3") and "loss" in lines[-1]


def test_plain_progress_prints_about_twenty_lines_on_long_runs(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    x, y = blobs(20)
    model = classifier()
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=100, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 20 and lines[0].startswith("epoch 5/100") and lines[-1].startswith("epoch 100/100")


def test_auto_progress_appears_once_a_run_is_long(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(fit_module, "LONG_RUN_SECONDS", 0.0)   # every run counts as long
    x, y = blobs()
    model = classifier()
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=3)
    assert len(capsys.readouterr().err.strip().splitlines()) == 3


def test_short_runs_are_silent_by_default(capsys):
    x, y = blobs()
    model = classifier()
    nn.fit(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2)
    assert capsys.readouterr().err == ""


def test_bad_arguments_are_refused():
    x, y = blobs()
    model = classifier()
    opt = nn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="120 rows but y has 119"):
        nn.fit(model, nn.CrossEntropyLoss(), opt, x, y[:-1])
    with pytest.raises(ValueError, match="validation_split"):
        nn.fit(model, nn.CrossEntropyLoss(), opt, x, y, validation_split=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        nn.fit(model, nn.CrossEntropyLoss(), opt, x, y, batch_size=0)
