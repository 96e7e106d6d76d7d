"""Loss values and dL/dout against torch.nn.functional with autograd, plus finite differences and bad targets."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnstab import nn, oracle

F = torch.nn.functional
REDUCTIONS = ["mean", "sum", "none"]


def compare_loss(agrees, loss_fn, torch_fn, out, y, dtype, seed=0):
    """Value and gradient of loss_fn(out, y) equal torch_fn(out_t, y_t)'s (a random grad_output for "none")."""
    out = out.astype(dtype)
    y_np = y.astype(dtype) if y.dtype.kind == "f" else y
    value = loss_fn(out, y_np)
    out_t = torch.from_numpy(out.copy()).requires_grad_(True)
    value_t = torch_fn(out_t, torch.from_numpy(np.ascontiguousarray(y_np)))
    agrees(np.asarray(value), value_t, dtype, "loss")
    if loss_fn.reduction == "none":
        g = np.random.default_rng(seed).standard_normal(value.shape).astype(dtype)
        grad = loss_fn.backward(g)
        value_t.backward(torch.from_numpy(g))
    else:
        grad = loss_fn.backward()
        value_t.backward()
    assert grad.shape == out.shape and grad.dtype == out.dtype
    return agrees(grad, out_t.grad, dtype, "dL/dout")


rng = np.random.default_rng(0)
LOGITS = rng.standard_normal((6, 5)) * 3
LABELS = rng.integers(0, 5, 6)
PROBS = rng.dirichlet(np.ones(5), 6)
Q = rng.dirichlet(np.ones(5), 6)
P01 = rng.uniform(0.02, 0.98, (6, 3))
Y01 = rng.uniform(0, 1, (6, 3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_matches_torch(agrees, dtype, reduction):
    compare_loss(agrees, nn.MSELoss(reduction), lambda o, y: F.mse_loss(o, y, reduction=reduction),
                 LOGITS, LOGITS[::-1].copy(), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_torch(agrees, dtype, reduction):
    compare_loss(agrees, nn.BCELoss(reduction), lambda o, y: F.binary_cross_entropy(o, y, reduction=reduction),
                 P01, Y01, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_torch(agrees, dtype, reduction):
    compare_loss(agrees, nn.BCEWithLogitsLoss(reduction),
                 lambda o, y: F.binary_cross_entropy_with_logits(o, y, reduction=reduction), LOGITS[:, :3], Y01, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_class_indices_matches_torch(agrees, dtype, reduction):
    compare_loss(agrees, nn.CrossEntropyLoss(reduction), lambda o, y: F.cross_entropy(o, y, reduction=reduction),
                 LOGITS, LABELS, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_with_probability_targets_matches_torch(agrees, dtype):
    compare_loss(agrees, nn.CrossEntropyLoss(), F.cross_entropy, LOGITS, PROBS, dtype)


def test_cross_entropy_over_images_uses_class_axis_one_like_torch(agrees):
    logits = np.random.default_rng(1).standard_normal((2, 4, 3, 3))
    labels = np.random.default_rng(2).integers(0, 4, (2, 3, 3))
    compare_loss(agrees, nn.CrossEntropyLoss(), F.cross_entropy, logits, labels, np.float64)


def test_cross_entropy_ignore_index_matches_torch(agrees):
    labels = LABELS.copy()
    labels[[1, 4]] = -100
    compare_loss(agrees, nn.CrossEntropyLoss(ignore_index=-100), F.cross_entropy, LOGITS, labels, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kl_div_matches_torch(agrees, dtype, reduction):
    torch_reduction = "batchmean" if reduction == "mean" else "sum"
    compare_loss(agrees, nn.KLDivLoss(reduction), lambda q, p: F.kl_div(q.log(), p, reduction=torch_reduction),
                 Q, PROBS, dtype)


def test_kl_div_of_log_probabilities_matches_torch_log_target(agrees):
    compare_loss(agrees, nn.KLDivLoss(log_input=True),
                 lambda lq, lp: F.kl_div(lq, lp, reduction="batchmean", log_target=True),
                 np.log(Q), np.log(PROBS), np.float64)


@settings(max_examples=20)
@given(n=st.integers(1, 8), c=st.integers(2, 9), scale=st.sampled_from([0.1, 1.0, 3.0]),
       reduction=st.sampled_from(REDUCTIONS))
def test_cross_entropy_matches_torch_for_any_shape_and_scale(agrees, n, c, scale, reduction):
    r = np.random.default_rng(n * c)
    compare_loss(agrees, nn.CrossEntropyLoss(reduction), lambda o, y: F.cross_entropy(o, y, reduction=reduction),
                 r.standard_normal((n, c)) * scale, r.integers(0, c, n), np.float64)


@settings(max_examples=10)
@given(n=st.integers(1, 4), c=st.integers(2, 6), scale=st.sampled_from([30.0, 100.0]))
def test_cross_entropy_equals_the_exact_value_and_gradient_when_logits_dominate(n, c, scale):
    # torch's log(1 + tiny) and exp(log p) - 1 cancel here; the reference is mpmath
    r = np.random.default_rng(n * c)
    logits, labels = r.standard_normal((n, c)) * scale, r.integers(0, c, n)
    loss_fn = nn.CrossEntropyLoss()
    value = loss_fn(logits, labels)
    exact = float(oracle.cross_entropy(logits, labels))
    assert abs(value - exact) <= 1e-14 * abs(exact)
    grad, exact_grad = loss_fn.backward(), np.array(oracle.grad_cross_entropy(logits, labels), dtype=np.float64)
    assert np.max(np.abs(grad - exact_grad)) <= 1e-14 * np.max(np.abs(exact_grad))


@settings(max_examples=20)
@given(n=st.integers(1, 8), k=st.integers(1, 4), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_bce_with_logits_matches_torch_for_any_shape_and_scale(agrees, n, k, scale):
    r = np.random.default_rng(n * k)
    compare_loss(agrees, nn.BCEWithLogitsLoss(), F.binary_cross_entropy_with_logits,
                 r.standard_normal((n, k)) * scale, r.uniform(0, 1, (n, k)), np.float64)


LOSS_CASES = {
    "MSELoss": (nn.MSELoss, LOGITS, LOGITS[::-1].copy()),
    "BCELoss": (nn.BCELoss, P01, Y01),
    "BCEWithLogitsLoss": (nn.BCEWithLogitsLoss, LOGITS[:, :3], Y01),
    "CrossEntropyLoss": (nn.CrossEntropyLoss, LOGITS, LABELS),
    "KLDivLoss": (nn.KLDivLoss, Q, PROBS),
}


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loss_gradient_equals_finite_differences(name):
    cls, out, y = LOSS_CASES[name]
    loss_fn = cls()
    out = out.copy()
    loss_fn(out, y)
    grad = loss_fn.backward()
    h = 1e-6
    for i in np.random.default_rng(0).choice(out.size, 8, replace=False):
        bump = np.zeros(out.size)
        bump[i] = h
        bump = bump.reshape(out.shape)
        numeric = (loss_fn(out + bump, y) - loss_fn(out - bump, y)) / (2 * h)
        assert abs(numeric - grad.reshape(-1)[i]) <= 1e-6 * np.abs(grad).max() + 1e-9


def test_losses_return_python_floats():
    assert isinstance(nn.MSELoss()(np.ones(3, np.float32), np.zeros(3)), float)


def test_backward_before_forward_is_refused():
    with pytest.raises(RuntimeError, match=r"call loss_fn\(out, y\) first"):
        nn.CrossEntropyLoss().backward()


@pytest.mark.parametrize("cls", [nn.MSELoss, nn.BCELoss, nn.BCEWithLogitsLoss])
def test_target_of_the_wrong_shape_is_refused(cls):
    with pytest.raises(ValueError, match=r"target shape \(4,\) differs from the output's \(4, 1\)"):
        cls()(np.full((4, 1), 0.5), np.ones(4))


def test_cross_entropy_target_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"must have shape \(6,\)"):
        nn.CrossEntropyLoss()(LOGITS, LABELS[:5])


def test_cross_entropy_label_out_of_range_is_refused():
    labels = LABELS.copy()
    labels[2] = 5
    with pytest.raises(ValueError, match="5"):
        nn.CrossEntropyLoss()(LOGITS, labels)


def test_bce_refuses_outputs_and_targets_outside_zero_one():
    with pytest.raises(ValueError, match="Sigmoid"):
        nn.BCELoss()(np.array([0.5, 1.5]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        nn.BCEWithLogitsLoss()(np.array([0.5, 1.5]), np.array([0.0, 2.0]))


def test_float_class_labels_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"y.astype\(np.int64\)"):
        nn.CrossEntropyLoss()(LOGITS, LABELS.astype(np.float64))


def test_kl_div_refuses_values_outside_their_range():
    with pytest.raises(ValueError, match=r"KLDivLoss: the target must lie in \[0, 1\]"):
        nn.KLDivLoss()(Q, PROBS * 2 - 0.5)
    with pytest.raises(ValueError, match="log-probabilities"):
        nn.KLDivLoss(log_input=True)(np.log(Q), PROBS)


def test_nan_in_the_output_propagates():
    out = LOGITS.copy()
    out[0, 0] = np.nan
    assert np.isnan(nn.CrossEntropyLoss()(out, LABELS))
