"""Argument checks shared by the numeric functions: what they refuse, and that refusing has no side effects."""
import warnings

import numpy as np
import pytest
import torch

from nnstab.numerics import validate


@pytest.fixture
def every_torch_warning():
    """torch gives some warnings once per process; here each one is given, so a test sees it whatever ran before."""
    saved = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(saved)


@pytest.mark.parametrize("kind", ["numpy", "tensor", "tensor requiring grad"])
def test_values_outside_the_unit_interval_are_named_with_their_range_and_nan_ignored(kind, every_torch_warning):
    values = np.array([0.25, np.nan, 1.5, -0.5])
    p = values if kind == "numpy" else torch.tensor(values, requires_grad=kind.endswith("grad"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tensor requiring grad must be detached before it becomes a float
        with pytest.raises(ValueError, match=r"p must hold probabilities in \[0, 1\], got values in \[-0\.5, 1\.5\]"):
            validate.check_in_unit_interval(p, "p")


def test_probabilities_and_nan_pass_the_unit_interval_check():
    for p in (np.array([0.0, 0.5, 1.0, np.nan]), torch.tensor([0.0, 1.0, float("nan")], requires_grad=True)):
        validate.check_in_unit_interval(p, "p")
