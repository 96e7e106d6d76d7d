"""fit(): full-batch or mini-batch gradient descent around the explicit training step, with a per-epoch history.

Each epoch runs, for every batch of the (seeded) shuffled training rows, the step of the API:

    out = model(xb); loss = loss_fn(out, yb); optimizer.zero_grad()
    model.backward(loss_fn.backward()); optimizer.step()

`batch_size=None` is full-batch gradient descent (one step per epoch on all rows); an int is
mini-batch descent (the last batch may be smaller). `validation_split` holds out a seeded random
fraction of the rows (or pass `validation_data=(x_val, y_val)`), evaluated in eval mode after each
epoch. The returned History has one record per epoch: the mean training loss over the epoch's
batches, the training accuracy of those batches, and the validation loss and accuracy.

Accuracy ("auto") is measured for classification losses: CrossEntropyLoss (argmax of the output
against class indices or the argmax of probability targets), BCEWithLogitsLoss (output > 0) and
BCELoss (output > 0.5); for other losses it is None unless a function acc(out, y) -> fraction is given.

Progress: `progress=True` always shows it, False never, "auto" shows it once the run has lasted
LONG_RUN_SECONDS. It uses tqdm when installed (not a dependency), else plain lines on stderr: one
every epochs // PLAIN_LINES epochs and one at the end, with the epoch's metrics and the time left.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from nnstab.nn import _args
from nnstab.nn.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss
from nnstab.nn.module import Module

LONG_RUN_SECONDS = 5.0   # a run that has lasted this long gets a progress bar; shorter ones stay quiet
PLAIN_LINES = 20         # without tqdm: about this many lines per run, one every epochs // 20 epochs


@dataclass
class History:
    """One dict per epoch: epoch, loss, accuracy, val_loss, val_accuracy (None where not measured)."""

    records: list[dict] = field(default_factory=list)

    def __getitem__(self, key: str) -> list:
        """The per-epoch values of one metric, e.g. history["val_accuracy"]."""
        return [r[key] for r in self.records]

    def __len__(self):
        return len(self.records)

    @property
    def loss(self):
        return self["loss"]

    @property
    def accuracy(self):
        return self["accuracy"]

    @property
    def val_loss(self):
        return self["val_loss"]

    @property
    def val_accuracy(self):
        return self["val_accuracy"]


def accuracy_for(loss_fn):
    """The accuracy function fit(accuracy="auto") uses with this loss, or None for a regression loss."""
    if isinstance(loss_fn, CrossEntropyLoss):
        def categorical(out, y):
            axis = loss_fn.class_axis(out)
            truth = y if np.issubdtype(np.asarray(y).dtype, np.integer) else np.argmax(y, axis=axis)
            return float(np.mean(np.argmax(out, axis=axis) == truth))
        return categorical
    if isinstance(loss_fn, BCEWithLogitsLoss):
        return lambda out, y: float(np.mean((out > 0) == (np.asarray(y) > 0.5)))
    if isinstance(loss_fn, BCELoss):
        return lambda out, y: float(np.mean((out > 0.5) == (np.asarray(y) > 0.5)))
    return None


def _batches(n: int, batch_size, order):
    size = n if batch_size is None else int(batch_size)
    for start in range(0, n, size):
        yield order[start:start + size]


def evaluate(model, loss_fn, x, y, *, batch_size=None, accuracy="auto"):
    """(mean loss, accuracy or None) of the model on (x, y) in eval mode; the model's mode is restored."""
    x, y, batch_size, acc_fn = _check_data("evaluate", model, loss_fn, x, y, batch_size, accuracy)
    if not len(x):
        raise ValueError("evaluate needs at least one example, got x with 0 rows")
    was_training = model.training
    model.eval()
    total_loss = correct = 0.0
    try:
        for idx in _batches(len(x), batch_size, np.arange(len(x))):
            out = model(x[idx])
            total_loss += float(loss_fn(out, y[idx])) * len(idx)
            if acc_fn is not None:
                correct += acc_fn(out, y[idx]) * len(idx)
    finally:
        model.train(was_training)
    return total_loss / len(x), (correct / len(x) if acc_fn is not None else None)


def _check_data(owner, model, loss_fn, x, y, batch_size, accuracy):
    """(x, y) as arrays with one row per example, batch_size as an int or None, and the accuracy function."""
    if not isinstance(model, Module):
        raise TypeError(f"{owner}: model must be an nnstab.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"{owner}: loss_fn must be a loss such as nnstab.nn.MSELoss(), got {type(loss_fn).__name__}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{owner}: x and y must hold one example per row, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}; pass one target per example")
    if batch_size is not None:
        batch_size = _args.size(batch_size, "batch_size", owner, minimum=1)
    if accuracy is not None and accuracy != "auto" and not callable(accuracy):
        raise TypeError(f"{owner}: accuracy must be 'auto', None or a function acc(out, y), got {accuracy!r}")
    return x, y, batch_size, (accuracy_for(loss_fn) if accuracy == "auto" else accuracy)


def _split(n: int, validation_split: float, rng):
    validation_split = _args.real(validation_split, "validation_split", "fit")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    perm = rng.permutation(n)
    n_val = int(round(n * validation_split))
    return perm[n_val:], perm[:n_val]


def fit(model, loss_fn, optimizer, x, y, *, epochs: int = 10, batch_size: int | None = None, shuffle: bool = True,
        seed: int = 0, validation_split: float = 0.0, validation_data=None, accuracy="auto",
        progress="auto") -> History:
    """Train `model` on (x, y) for `epochs` passes; returns the History (see the module docstring)."""
    x, y, batch_size, acc_fn = _check_data("fit", model, loss_fn, x, y, batch_size, accuracy)
    epochs = _args.size(epochs, "epochs", "fit")
    if progress not in (True, False, "auto"):
        raise ValueError(f"fit: progress must be True, False or 'auto', got {progress!r}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split(len(x), validation_split, rng)
    if validation_data is not None:
        x_val, y_val = (np.asarray(a) for a in validation_data)
    elif len(val_idx):
        x_val, y_val = x[val_idx], y[val_idx]
    else:
        x_val = y_val = None
    x_train, y_train = x[train_idx], y[train_idx]
    if not len(x_train):
        raise ValueError(f"fit needs at least one training example, got {len(x)} rows of which "
                         f"validation_split={validation_split} holds out {len(val_idx)}")
    n_batches = -(-len(x_train) // (batch_size or len(x_train)))
    bar = _Progress(epochs, n_batches, progress)
    history = History()
    model.train()
    try:
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(x_train)) if shuffle else np.arange(len(x_train))
            total_loss = correct = 0.0
            for idx in _batches(len(x_train), batch_size, order):
                xb, yb = x_train[idx], y_train[idx]
                out = model(xb)
                loss = float(loss_fn(out, yb))
                optimizer.zero_grad()
                model.backward(loss_fn.backward())
                optimizer.step()
                total_loss += loss * len(idx)
                if acc_fn is not None:
                    correct += acc_fn(out, yb) * len(idx)
                bar.batch_done()
            record = {"epoch": epoch, "loss": total_loss / len(x_train),
                      "accuracy": correct / len(x_train) if acc_fn is not None else None,
                      "val_loss": None, "val_accuracy": None}
            if x_val is not None:
                record["val_loss"], record["val_accuracy"] = evaluate(model, loss_fn, x_val, y_val,
                                                                      batch_size=batch_size, accuracy=acc_fn)
            history.records.append(record)
            bar.epoch_done(record)
    finally:
        bar.close()
    return history


class _Progress:
    """tqdm when installed, else a line on stderr every ~5% of the epochs; under "auto", only once a run is long."""

    def __init__(self, epochs: int, n_batches: int, mode):
        self.epochs, self.n_batches, self.mode = epochs, n_batches, mode
        self.start = time.perf_counter()
        self.every = max(1, epochs // PLAIN_LINES)
        self.shown = mode is True
        self.tqdm = None
        if self.shown:
            self._open(0)

    def _open(self, done_batches: int):
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.tqdm = tqdm(total=self.epochs * self.n_batches, initial=done_batches, unit="batch", file=sys.stderr)

    def batch_done(self):
        if self.tqdm is not None:
            self.tqdm.update(1)

    def epoch_done(self, record):
        epoch, elapsed = record["epoch"], time.perf_counter() - self.start
        if self.mode == "auto" and not self.shown and elapsed > LONG_RUN_SECONDS and epoch < self.epochs:
            self.shown = True
            self._open(epoch * self.n_batches)
        if not self.shown:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and v is not None)
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(text)
        elif epoch % self.every == 0 or epoch == self.epochs:
            eta = elapsed / epoch * (self.epochs - epoch)
            width = 20
            done = width * epoch // self.epochs
            print(f"epoch {epoch}/{self.epochs} [{'=' * done}{' ' * (width - done)}] {text} "
                  f"({elapsed:.1f}s, eta {eta:.1f}s)", file=sys.stderr, flush=True)

    def close(self):
        if self.tqdm is not None:
            self.tqdm.close()
