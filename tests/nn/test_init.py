"""Initialisations draw from the distributions they name, with torch's fan conventions, reproducibly."""
import math

import numpy as np
import pytest
import torch

from nnstab import nn
from nnstab.nn import init

SHAPE = (256, 300)       # 76,800 draws: sample std within ~1% of the true one
FAN_IN, FAN_OUT = 300, 256


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 2, 2), (3, 2, 5)])
def test_fans_are_torchs(shape):
    assert init.fans(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("fill,std", [
    (lambda w: init.normal_(w, rng=0), 1.0),
    (lambda w: init.normal_(w, std=0.3, rng=0), 0.3),
    (lambda w: init.scaled_(w, rng=0), 1 / math.sqrt(FAN_IN)),
    (lambda w: init.xavier_normal_(w, rng=0), math.sqrt(2 / (FAN_IN + FAN_OUT))),
    (lambda w: init.he_normal_(w, rng=0), math.sqrt(2 / FAN_IN)),
    (lambda w: init.he_normal_(w, mode="fan_out", rng=0), math.sqrt(2 / FAN_OUT)),
])
def test_normal_initialisations_have_their_standard_deviation(fill, std):
    w = fill(np.empty(SHAPE))
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)
    assert abs(w.std() / std - 1) < 0.02


@pytest.mark.parametrize("fill,bound", [
    (lambda w: init.uniform_(w, -0.5, 0.5, rng=0), 0.5),
    (lambda w: init.xavier_uniform_(w, rng=0), math.sqrt(6 / (FAN_IN + FAN_OUT))),
    (lambda w: init.he_uniform_(w, rng=0), math.sqrt(6 / FAN_IN)),
    (lambda w: init.default_uniform_(w, rng=0), 1 / math.sqrt(FAN_IN)),
])
def test_uniform_initialisations_fill_their_interval(fill, bound):
    w = fill(np.empty(SHAPE))
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.02


def test_initialisers_fill_parameters_in_place():
    p = nn.Parameter(np.zeros((3, 4), dtype=np.float32))
    assert init.he_normal_(p, rng=0) is p
    assert p.data.dtype == np.float32 and np.all(p.data != 0)


def test_seeds_make_models_reproducible():
    a = nn.Dense(10, 5, init="xavier", rng=3).weight.data
    b = nn.Dense(10, 5, init="xavier", rng=3).weight.data
    np.testing.assert_array_equal(a, b)
    nn.manual_seed(11)
    c = nn.Dense(10, 5).weight.data
    nn.manual_seed(11)
    np.testing.assert_array_equal(c, nn.Dense(10, 5).weight.data)


def test_float32_and_float64_layers_from_one_seed_hold_the_same_weights():
    w32 = nn.Dense(6, 4, dtype=np.float32, rng=5).weight.data
    w64 = nn.Dense(6, 4, dtype=np.float64, rng=5).weight.data
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_unknown_scheme_lists_the_choices():
    with pytest.raises(ValueError, match="'he', 'xavier'"):
        nn.Dense(2, 2, init="glorot")
