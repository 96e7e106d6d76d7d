"""Training on real data: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), held-out test accuracy."""
import numpy as np
import pytest
from sklearn import datasets, model_selection   # test dependency: pip install -e .[test]

from nnstab import nn


@pytest.fixture(scope="module")
def digits():
    d = datasets.load_digits()
    x = (d.data / 16.0).astype(np.float32)   # pixel intensities 0..16 -> [0, 1]
    return model_selection.train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)


def test_mlp_reaches_95_percent_on_held_out_digits(digits):
    x_train, x_test, y_train, y_test = digits
    model = nn.Sequential(nn.Dense(64, 64, rng=0), nn.ReLU(), nn.Dense(64, 10, rng=1))
    loss_fn = nn.CrossEntropyLoss()
    history = nn.fit(model, loss_fn, nn.optim.Adam(model.parameters(), lr=1e-2), x_train, y_train,
                     epochs=20, batch_size=64, seed=0, validation_split=0.1)
    _, test_accuracy = nn.evaluate(model, loss_fn, x_test, y_test)
    assert history.loss[-1] < history.loss[0] / 10
    assert test_accuracy >= 0.95, f"test accuracy {test_accuracy:.3f}"


def test_small_cnn_learns_the_digits(digits):
    x_train, x_test, y_train, y_test = digits
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Dense(8 * 4 * 4, 10, rng=1))
    loss_fn = nn.CrossEntropyLoss()
    history = nn.fit(model, loss_fn, nn.optim.Adam(model.parameters(), lr=1e-2), x_train.reshape(-1, 1, 8, 8),
                     y_train, epochs=5, batch_size=64, seed=0)
    _, test_accuracy = nn.evaluate(model, loss_fn, x_test.reshape(-1, 1, 8, 8), y_test)
    assert history.loss[-1] < history.loss[0] / 3
    assert test_accuracy >= 0.8, f"test accuracy {test_accuracy:.3f} (chance is 0.1)"


def test_full_batch_gradient_descent_with_batchnorm_and_dropout_learns(digits):
    x_train, x_test, y_train, y_test = digits
    model = nn.Sequential(nn.Dense(64, 32, rng=0), nn.BatchNorm(32), nn.Tanh(), nn.Dropout(0.1, rng=0),
                          nn.Dense(32, 10, rng=1))
    loss_fn = nn.CrossEntropyLoss()
    history = nn.fit(model, loss_fn, nn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), x_train, y_train,
                     epochs=60, batch_size=None)
    _, test_accuracy = nn.evaluate(model, loss_fn, x_test, y_test)
    assert len(history) == 60 and history.loss[-1] < history.loss[0] / 5
    assert test_accuracy >= 0.9, f"test accuracy {test_accuracy:.3f}"
