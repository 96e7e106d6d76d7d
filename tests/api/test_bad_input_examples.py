"""Bad input that once crashed or misled: each case as its own small test, so a regression names itself.

The fuzz tests next to this file state the laws; these are the concrete inputs that broke them.
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

import nnstab
from nnstab import nn
from nnstab.numerics.elementwise import binary_cross_entropy_with_logits_backward

lse_module = importlib.import_module("nnstab.numerics.softmax_family")
ROW_FUNCTIONS = ("softmax", "log_softmax", "logsumexp")


# ---------------------------------------------------------------- numerics: devices, kinds, layouts

@pytest.mark.parametrize("name", ("softmax", "log_softmax", "logsumexp", "sigmoid", "log_sigmoid", "softplus"))
def test_a_meta_tensor_is_refused_by_name_instead_of_crashing_or_passing_unchecked(name):
    with pytest.raises(ValueError, match=r"x is a tensor on the 'meta' device.*x\.to\('cpu'\)"):
        getattr(nnstab, name)(torch.zeros(2, 3, device="meta"))


@pytest.mark.parametrize("name, args", [
    ("cross_entropy", (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))),
    ("binary_cross_entropy", (torch.full((2,), 0.5), torch.full((2,), 0.5))),
    ("binary_cross_entropy_with_logits", (torch.zeros(2), torch.full((2,), 0.5))),
    ("mse", (torch.zeros(2), torch.zeros(2))),
    ("kl_div", (torch.full((2, 2), 0.5), torch.full((2, 2), 0.5))),
])
def test_a_loss_of_meta_tensors_names_the_meta_argument(name, args):
    first = {"cross_entropy": "logits", "binary_cross_entropy": "probs", "kl_div": "p"}.get(name, "logits")
    first = "pred" if name == "mse" else first
    with pytest.raises(ValueError, match=rf"{first} is a tensor on the 'meta' device"):
        getattr(nnstab, name)(*(a.to("meta") for a in args))
    second = "q" if name == "kl_div" else "target"
    expected = "logits is on cpu but target is on meta" if name == "cross_entropy" else \
        f"{second} is a tensor on the 'meta' device"
    with pytest.raises(ValueError, match=expected):
        getattr(nnstab, name)(args[0], args[1].to("meta"))


def test_a_masked_array_is_refused_since_its_mask_would_be_ignored():
    x = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])
    with pytest.raises(TypeError, match=r"x is a masked array.*x\.filled"):
        nnstab.softmax(x)


def test_big_endian_floats_are_read_as_the_same_values():
    x = np.array([0.5, -3.0, 40.0], dtype=">f8")
    np.testing.assert_array_equal(nnstab.softmax(x), nnstab.softmax(x.astype(np.float64)))
    assert nnstab.mse(x, x) == 0.0


def test_torch_views_give_the_bits_of_their_contiguous_copies():
    """torch's strided (scalar) and contiguous (vectorised) log1p/sigmoid kernels differ by a float64 ULP
    on about one value in ten; a view must still give what its copy gives."""
    values = torch.linspace(-5, 5, 101, dtype=torch.float64)
    wide = torch.zeros(202, dtype=torch.float64)
    wide[::2] = values
    views = (wide[::2], values.reshape(1, 101).expand(3, 101), values.reshape(101, 1).t())
    for view in views:
        for fn in (nnstab.softplus, nnstab.log_sigmoid, nnstab.sigmoid):
            assert torch.equal(fn(view), fn(view.contiguous())), fn.__name__
        t = torch.full(view.shape, 0.25, dtype=torch.float64)
        for fn, x in ((nnstab.binary_cross_entropy_with_logits, view), (nnstab.binary_cross_entropy, view.sigmoid())):
            assert torch.equal(fn(x, t, reduction="none"), fn(x.contiguous(), t, reduction="none")), fn.__name__


def test_bce_with_logits_backward_of_a_0d_array():
    """A 0-d NumPy logit crashed the blockwise kernel ('non-broadcastable output operand')."""
    dx = binary_cross_entropy_with_logits_backward(np.float32(0.25), np.float32(0.5), np.float32(1.0), "mean")
    assert dx.dtype == np.float32 and dx.shape == () and abs(float(dx) - (1 / (1 + np.exp(-0.25)) - 0.5)) < 1e-7
    assert nn.BCEWithLogitsLoss()(np.array(0.0, np.float32), np.array(1.0)) > 0


def test_mse_of_infinities_is_nan_without_a_runtime_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(nnstab.mse(np.array([np.inf, 1.0]), np.array([np.inf, 1.0])))


def test_a_reduced_loss_beyond_float16_is_inf_without_a_runtime_warning():
    """The float64 sum rounded to float16 warned 'overflow encountered in cast'."""
    x = np.full(4, 60000.0, np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nnstab.binary_cross_entropy_with_logits(x, np.zeros(4, np.float16), reduction="sum") == np.inf
        assert nnstab.mse(x, -x, reduction="sum") == np.inf


def test_messages_name_the_argument_and_a_fix_that_exists():
    with pytest.raises(ValueError, match=r"axis=-1 needs an input with at least 1 dimension.*0-d input"):
        nnstab.logsumexp(np.float64(1.0))
    with pytest.raises(ValueError, match=r"q must hold probabilities in \[0, 1\].*clip q") as info:
        nnstab.kl_div(np.full(3, 1 / 3), np.array([0.5, 0.7, -0.2]))
    assert "with_logits" not in str(info.value)    # kl_div has no *_with_logits variant


# ---------------------------------------------------------------- numerics: softmax family and cross-entropy

@pytest.mark.parametrize("name", ROW_FUNCTIONS)
@pytest.mark.parametrize("shape, axis", [((0,), -1), ((2, 0), -1), ((0, 3), 0)])
def test_an_empty_axis_on_the_torch_path_gives_the_empty_axis_conventions(name, shape, axis, monkeypatch):
    """The torch ops (the path of CUDA tensors) raised IndexError from torch.amax on an empty axis."""
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", False)
    x = torch.zeros(shape)
    result = getattr(nnstab, name)(x, axis=axis)
    expected = getattr(nnstab, name)(x.numpy(), axis=axis)
    np.testing.assert_array_equal(result.numpy(), expected)


def test_cross_entropy_with_soft_targets_on_an_empty_batch_on_the_torch_path(monkeypatch):
    monkeypatch.setattr(lse_module, "NUMPY_ON_CPU", False)
    loss = nnstab.cross_entropy(torch.zeros(0, 0), torch.zeros(0, 0), reduction="none")
    assert loss.shape == (0,)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_softmax_of_a_row_holding_only_nan_is_nan(dtype, kind):
    """A one-entry NaN row gave softmax 1: the NaN was the row's 'max' and its own term was set to 1."""
    x = np.array([[np.nan], [0.0]], dtype=dtype)
    y = nnstab.softmax(x if kind == "numpy" else torch.from_numpy(x))
    y = np.asarray(y, dtype=np.float64)
    assert np.isnan(y[0, 0]) and y[1, 0] == 1.0


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_cross_entropy_mean_of_one_row_whose_loss_overflows(kind):
    """1-d float64 logits with an infinite loss: IndexError (tuple index out of range) in the mean."""
    wrap = np.asarray if kind == "numpy" else torch.tensor
    loss = nnstab.cross_entropy(wrap(np.array([1e308, -1e308])), wrap(np.array(1)), reduction="mean")
    assert float(loss) == np.inf
    loss = nnstab.cross_entropy(wrap(np.array([np.inf, 0.0])), wrap(np.array([0.5, 0.5])), reduction="mean")
    assert float(loss) == np.inf


# ---------------------------------------------------------------- nnstab.nn: constructors

@pytest.mark.parametrize("make, message", [
    (lambda: nn.Dense("3", 4), r"Dense: in_features must be an int, got '3' \(str\); pass in_features=3"),
    (lambda: nn.Dense(3.5, 4), r"Dense: in_features must be an int, got 3\.5"),
    (lambda: nn.Dense(True, 4), r"Dense: in_features must be an int, got True"),
    (lambda: nn.Dense(3, -4), r"Dense: out_features must be >= 0, got -4"),
    (lambda: nn.Perceptron("3"), r"Perceptron: in_features must be an int"),
    (lambda: nn.Conv2d("1", 2, 3), r"Conv2d: in_channels must be an int"),
    (lambda: nn.Conv2d(1, 2, 3.0), r"Conv2d: kernel_size must be an int or a pair of ints, got 3\.0"),
    (lambda: nn.Conv2d(1, 2, True), r"Conv2d: kernel_size must be an int or a pair of ints, got True"),
    (lambda: nn.MaxPool2d(2, stride=1.5), r"MaxPool2d: stride must be an int or a pair of ints"),
    (lambda: nn.Flatten("1"), r"Flatten: start_dim must be an int, got '1'"),
    (lambda: nn.Dropout("0.5"), r"Dropout: p must be a real number, got '0\.5'"),
    (lambda: nn.Dropout(None), r"Dropout: p must be a real number, got None"),
    (lambda: nn.LeakyReLU("a"), r"LeakyReLU: negative_slope must be a real number"),
    (lambda: nn.ELU("a"), r"ELU: alpha must be a real number"),
    (lambda: nn.Softmax(axis="1"), r"Softmax: axis must be an int"),
    (lambda: nn.BatchNorm(0), r"BatchNorm: num_features must be >= 1, got 0"),
    (lambda: nn.BatchNorm(3, eps=-1.0), r"BatchNorm: eps must be >= 0"),
    (lambda: nn.BatchNorm(3, momentum=2.0), r"BatchNorm: momentum must be in \[0, 1\], got 2\.0"),
])
def test_a_constructor_names_the_bad_argument(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_layers_without_inputs_or_outputs_build_and_run_as_in_torch():
    """Initialising a zero-element weight divided by fan_in = 0 (ZeroDivisionError); backward reshaped with -1."""
    dense = nn.Dense(0, 2)
    y = dense(np.ones((3, 0), np.float32))
    np.testing.assert_array_equal(y, np.zeros((3, 2), np.float32))
    assert dense.backward(np.ones((3, 2), np.float32)).shape == (3, 0)
    assert nn.Conv2d(0, 2, 3)(np.ones((1, 0, 4, 4), np.float32)).shape == (1, 2, 2, 2)
    assert nn.Conv2d(1, 0, 3)(np.ones((1, 1, 4, 4), np.float32)).shape == (1, 0, 2, 2)


# ---------------------------------------------------------------- nnstab.nn: forward and backward

def test_empty_batches_pass_through_conv_flatten_and_batchnorm():
    """Conv2d and Flatten reshaped with -1 (fails on size 0); BatchNorm refused the batch (torch returns it)."""
    conv = nn.Conv2d(1, 2, 3)
    assert conv(np.ones((0, 1, 5, 5), np.float32)).shape == (0, 2, 3, 3)
    assert conv.backward(np.ones((0, 2, 3, 3), np.float32)).shape == (0, 1, 5, 5)
    flat = nn.Flatten()
    assert flat(np.ones((0, 3, 4), np.float32)).shape == (0, 12)
    norm = nn.BatchNorm(3)
    assert norm(np.ones((0, 3), np.float32)).shape == (0, 3)
    assert norm.backward(np.ones((0, 3), np.float32)).shape == (0, 3)
    np.testing.assert_array_equal(norm.running_mean, 0)      # nothing learnt from no rows


def test_a_0d_input_flows_through_activations_as_an_array():
    model = nn.Sequential(nn.ReLU(), nn.Dropout(0.0), nn.Sigmoid(), nn.Tanh())
    y = model(np.array(1.0, np.float32))
    assert isinstance(y, np.ndarray) and y.shape == () and y.dtype == np.float32
    g = model.backward(np.array(1.0, np.float32))
    assert isinstance(g, np.ndarray) and g.shape == ()


def test_softmax_layer_on_a_0d_input_names_the_layer():
    with pytest.raises(nn.LayerInputError, match=r"^Softmax\(axis=-1\): expected an input with axis -1"):
        nn.Softmax()(np.array(1.0, np.float32))


def test_dropout_and_flatten_check_grad_output():
    cases = ((nn.Dropout(0.5, rng=0), np.ones((2, 3), np.float32)), (nn.Flatten(), np.ones((2, 3, 2), np.float32)))
    for layer, x in cases:
        layer(x)
        with pytest.raises(nn.LayerInputError, match="grad_output of the output's shape"):
            layer.backward([[1.0]])


def test_losses_keep_0d_outputs_as_arrays_and_name_a_bad_grad_output():
    loss = nn.MSELoss(reduction="none")
    value = loss(np.array(0.5, np.float32), np.array(1.0))
    assert isinstance(value, np.ndarray) and value.shape == ()
    assert isinstance(loss.backward(), np.ndarray)
    with pytest.raises(TypeError, match=r"MSELoss.backward: grad_output must be a number"):
        loss.backward("x")


# ---------------------------------------------------------------- nnstab.nn: init, optimisers, fit

@pytest.mark.parametrize("call, error, message", [
    (lambda: nn.init.he_normal_(np.ones((2, 3), np.int64)), TypeError, r"w must be a Parameter or a floating-point"),
    (lambda: nn.init.xavier_uniform_([[1.0, 2.0]]), TypeError, r"w must be a Parameter .* got list"),
    (lambda: nn.init.uniform_(np.ones(3), 1.0, 0.0), ValueError, r"uniform_: the range \[a, b\) needs a <= b"),
    (lambda: nn.init.normal_(np.ones(3), std=-1.0), ValueError, r"normal_: std must be >= 0"),
])
def test_initialisers_name_the_bad_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_initialising_an_empty_weight_is_a_no_op():
    assert nn.init.he_normal_(np.ones((3, 0))).shape == (3, 0)
    assert nn.init.scaled_(np.ones((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: nn.optim.SGD(m, lr=0.1), TypeError, r"SGD: params must be an iterable of Parameters.*got Dense"),
    (lambda m: nn.optim.SGD([np.ones(2)], lr=0.1), TypeError, r"SGD: params must hold nnstab.nn.Parameter"),
    (lambda m: nn.optim.SGD(m.parameters(), lr="0.1"), TypeError, r"SGD: lr must be a real number"),
    (lambda m: nn.optim.SGD(m.parameters(), lr=float("nan")), ValueError, r"SGD: lr must be >= 0, got nan"),
    (lambda m: nn.optim.SGD(m.parameters(), lr=0.1, momentum="a"), TypeError, r"SGD: momentum must be a real"),
    (lambda m: nn.optim.SGD([{"params": m.parameters(), "lr": -1.0}], lr=0.1), ValueError, r"SGD: lr must be >= 0"),
    (lambda m: nn.optim.Adam(m.parameters(), betas=(0.9,)), TypeError, r"Adam: betas must be a pair"),
    (lambda m: nn.optim.Adam(m.parameters(), betas=(0.9, "x")), TypeError, r"Adam: betas\[1\] must be a real"),
])
def test_optimisers_name_the_bad_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(nn.Dense(2, 1))


def _setup():
    model = nn.Dense(2, 1, rng=0)
    return model, nn.MSELoss(), nn.optim.SGD(model.parameters(), lr=0.1)


X, Y = np.ones((4, 2), np.float32), np.ones((4, 1), np.float32)


@pytest.mark.parametrize("kwargs, data, error, message", [
    ({}, (X[:0], Y[:0]), ValueError, r"fit needs at least one training example, got 0 rows"),
    ({"validation_split": 0.9}, (X, Y), ValueError, r"validation_split=0\.9 holds out 4"),
    ({"batch_size": 2.5}, (X, Y), TypeError, r"fit: batch_size must be an int"),
    ({"epochs": 1.5}, (X, Y), TypeError, r"fit: epochs must be an int"),
    ({"epochs": -1}, (X, Y), ValueError, r"fit: epochs must be >= 0"),
    ({"accuracy": "yes"}, (X, Y), TypeError, r"fit: accuracy must be 'auto', None or a function"),
    ({"progress": "x"}, (X, Y), ValueError, r"fit: progress must be True, False or 'auto'"),
    ({}, (np.float32(1.0), Y), ValueError, r"fit: x and y must hold one example per row"),
])
def test_fit_names_the_bad_argument(kwargs, data, error, message):
    with pytest.raises(error, match=message):
        nn.fit(*_setup(), *data, **kwargs)


def test_fit_and_evaluate_refuse_what_is_not_a_model_or_has_no_rows():
    with pytest.raises(TypeError, match=r"fit: model must be an nnstab.nn.Module, got str"):
        nn.fit("model", nn.MSELoss(), None, X, Y)
    with pytest.raises(ValueError, match=r"evaluate needs at least one example"):
        nn.evaluate(_setup()[0], nn.MSELoss(), X[:0], Y[:0])


def test_perceptron_fit_needs_at_least_one_epoch():
    with pytest.raises(ValueError, match=r"Perceptron.fit: epochs must be >= 1, got 0"):
        nn.Perceptron(2).fit(np.ones((2, 2), np.float32), [0, 1], epochs=0)
