"""Shared checks for nnstab.nn: agreement with torch autograd and with central finite differences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)   # small shapes: threads cost more than they save

# float64 agrees with torch to rounding; float32 within what its 24 bits allow through a layer
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
FD_STEP = 1e-6        # central differences in float64: truncation ~ h^2, rounding ~ eps/h, both ~1e-10
FD_TOLERANCE = 1e-6   # relative to the gradient's largest entry


def rel_err(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| (normwise: entries near zero do not blow it up)."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = theirs.detach().double().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != torch's {theirs.shape}"
    scale = np.max(np.abs(theirs)) if theirs.size else 0.0
    diff = np.max(np.abs(ours - theirs)) if theirs.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


WORST = {}   # dtype name -> (worst relative error, comparisons): printed at the end of the session


def assert_agrees(ours, theirs, dtype, what=""):
    err = rel_err(ours, theirs)
    tol = TOLERANCE[np.dtype(dtype).type]
    worst, count = WORST.get(np.dtype(dtype).name, (0.0, 0))
    WORST[np.dtype(dtype).name] = (max(worst, err), count + 1)
    assert err <= tol, f"{what}: relative error {err:.3g} against torch exceeds {tol:g}"
    return err


def compare_with_torch(ours, theirs, x, dtype, params=None, grad_output=None, seed=0):
    """Forward, input gradient and parameter gradients of module `ours` equal torch module `theirs`'.

    `params` maps our parameter names to torch's (default: the same names); torch's weights are
    copied from ours first. The output gradient is random (so every entry of the Jacobian counts).
    Returns the largest relative error seen.
    """
    rng = np.random.default_rng(seed)
    x = x.astype(dtype)
    ours_named = dict(ours.named_parameters())
    theirs_named = dict(theirs.named_parameters())
    params = params or {n: n for n in ours_named}
    with torch.no_grad():
        for ours_name, theirs_name in params.items():
            theirs_named[theirs_name].copy_(torch.from_numpy(ours_named[ours_name].data))
    ours.zero_grad()
    out = ours(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out_t = theirs(xt)
    errs = [assert_agrees(out, out_t, dtype, "output")]
    g = rng.standard_normal(out.shape).astype(dtype) if grad_output is None else grad_output
    dx = ours.backward(g)
    out_t.backward(torch.from_numpy(np.ascontiguousarray(g)))
    errs.append(assert_agrees(dx, xt.grad, dtype, "input gradient"))
    for ours_name, theirs_name in params.items():
        errs.append(assert_agrees(ours_named[ours_name].grad, theirs_named[theirs_name].grad, dtype,
                                  f"gradient of {ours_name}"))
    return max(errs)


def finite_difference_check(module, x, seed=0, entries=12):
    """float64 module: backward's input and parameter gradients equal central differences of sum(out * r)."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)   # a private copy: entries are perturbed in place below
    out = module(x)
    r = rng.standard_normal(out.shape)
    module.zero_grad()
    dx = module.backward(r)
    loss_size = float(np.sum(np.abs(out * r)))

    def loss():
        return float(np.sum(module(x) * r))

    def check(array, grad, what):
        flat = array.reshape(-1)
        picks = rng.choice(flat.size, size=min(entries, flat.size), replace=False)
        # relative to the gradient, plus the rounding of the loss itself divided by the step
        tol = FD_TOLERANCE * np.max(np.abs(grad)) + 10 * np.finfo(np.float64).eps * loss_size / FD_STEP
        for i in picks:
            keep = flat[i]
            flat[i] = keep + FD_STEP
            up = loss()
            flat[i] = keep - FD_STEP
            down = loss()
            flat[i] = keep
            numeric = (up - down) / (2 * FD_STEP)
            assert abs(numeric - grad.reshape(-1)[i]) <= tol, (
                f"{what}[{i}]: backward {grad.reshape(-1)[i]:.12g} vs finite difference {numeric:.12g}")

    check(x, dx, "input")
    for name, p in module.named_parameters():
        check(p.data, p.grad, name)


@pytest.fixture(scope="session")
def torch_check():
    return compare_with_torch


@pytest.fixture(scope="session")
def fd_check():
    return finite_difference_check


@pytest.fixture(scope="session")
def agrees():
    return assert_agrees


def pytest_terminal_summary(terminalreporter):
    for dtype, (worst, count) in sorted(WORST.items()):
        terminalreporter.write_line(f"nnstab.nn vs torch autograd, {dtype}: worst relative error {worst:.2e} "
                                    f"over {count} comparisons (bound {TOLERANCE[np.dtype(dtype).type]:g})")
