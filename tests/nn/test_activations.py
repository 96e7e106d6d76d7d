"""Every activation against torch autograd (value and input gradient) and finite differences."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnstab import nn, oracle

F = torch.nn.functional


class TorchFn(torch.nn.Module):
    """A torch function as a module, so the activation comparison uses the same harness as layers."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


PAIRS = {
    "ReLU": (nn.ReLU, torch.relu),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1)),
    "Sigmoid": (nn.Sigmoid, torch.sigmoid),
    "Tanh": (nn.Tanh, torch.tanh),
    "Softmax": (nn.Softmax, lambda x: torch.softmax(x, -1)),
    "Softmax(axis=0)": (lambda: nn.Softmax(axis=0), lambda x: torch.softmax(x, 0)),
    "LogSoftmax": (nn.LogSoftmax, lambda x: torch.log_softmax(x, -1)),
    "ELU": (nn.ELU, F.elu),
    "ELU(alpha=0.5)": (lambda: nn.ELU(0.5), lambda x: F.elu(x, 0.5)),
    "SELU": (nn.SELU, F.selu),
    # torch's default threshold=20 returns x itself above 20 (off by log1p(exp(-x)), ~1e-10 relative
    # near 20); its exact branch log1p(exp(x)) is the reference for nnstab's exact softplus
    "Softplus": (nn.Softplus, lambda x: F.softplus(x, threshold=500.0)),
    "Softsign": (nn.Softsign, F.softsign),
    "Identity": (nn.Identity, lambda x: x * 1),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_activation_matches_torch(torch_check, dtype, name):
    ours, theirs = PAIRS[name]
    x = np.random.default_rng(0).standard_normal((6, 7)) * 4
    torch_check(ours(), TorchFn(theirs), x, dtype)


@settings(max_examples=20)
@given(name=st.sampled_from(sorted(PAIRS)), rows=st.integers(1, 5), cols=st.integers(1, 6),
       scale=st.sampled_from([1e-3, 1.0, 3.0]))
def test_activations_match_torch_for_any_shape_and_scale(torch_check, name, rows, cols, scale):
    ours, theirs = PAIRS[name]
    x = np.random.default_rng(rows * cols).standard_normal((rows, cols)) * scale
    torch_check(ours(), TorchFn(theirs), x, np.float64)


# Where one logit dominates, torch's softmax backward y * (g - sum(g * y)) cancels (2e-7 relative
# error at logits ~ 15 * N(0, 1)); there the reference is the exact gradient from mpmath.
EXACT = {"Sigmoid": (nn.Sigmoid, oracle.grad_sigmoid), "Softplus": (nn.Softplus, oracle.grad_softplus),
         "Softmax": (nn.Softmax, oracle.grad_softmax), "LogSoftmax": (nn.LogSoftmax, oracle.grad_log_softmax)}


@settings(max_examples=12)
@given(name=st.sampled_from(sorted(EXACT)), rows=st.integers(1, 3), cols=st.integers(2, 5),
       scale=st.sampled_from([15.0, 40.0]))
def test_stable_activation_gradients_equal_the_exact_ones_at_large_scales(name, rows, cols, scale):
    ours, exact_grad = EXACT[name]
    rng = np.random.default_rng(rows * cols)
    x = rng.standard_normal((rows, cols)) * scale
    g = rng.standard_normal((rows, cols))
    layer = ours()
    layer(x)
    exact = np.array(exact_grad(x, grad_output=g), dtype=np.float64)
    dx = layer.backward(g)
    assert np.max(np.abs(dx - exact)) <= 1e-14 * np.max(np.abs(exact))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_activation_gradients_equal_finite_differences(fd_check, name):
    x = np.random.default_rng(1).standard_normal((4, 5)) * 2
    x[np.abs(x) < 1e-3] = 0.5            # keep central differences away from the kinks at 0
    fd_check(PAIRS[name][0](), x)


@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU", "ELU"])
def test_kink_derivatives_at_zero_are_torchs(name):
    ours, theirs = PAIRS[name]
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    theirs(x).sum().backward()
    layer = ours()
    layer(np.zeros(3))
    np.testing.assert_array_equal(layer.backward(np.ones(3)), x.grad.numpy())


def test_step_is_heaviside_with_zero_gradient():
    x = np.array([-2.0, 0.0, 1e-30, 3.0])
    layer = nn.Step()
    heaviside = torch.heaviside(torch.from_numpy(x), torch.tensor(0.0, dtype=torch.float64))
    np.testing.assert_array_equal(layer(x), heaviside.numpy())
    np.testing.assert_array_equal(layer.backward(np.ones(4)), np.zeros(4))


def test_sigmoid_gradient_does_not_cancel_for_large_inputs():
    # 1 - sigmoid(40) rounds to 0 in float64; sigmoid(x) * sigmoid(-x) keeps exp(-40)
    layer = nn.Sigmoid()
    layer(np.array([40.0]))
    np.testing.assert_allclose(layer.backward(np.array([1.0])), np.exp(-40.0), rtol=1e-14)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_activations_keep_float16(name):
    layer = PAIRS[name][0]()
    out = layer(np.linspace(-3, 3, 12, dtype=np.float16).reshape(3, 4))
    assert out.dtype == np.float16
    assert layer.backward(np.ones_like(out)).dtype == np.float16
