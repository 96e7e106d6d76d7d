"""Helpers for testing numerics: ULP errors against exact references, hard-input families and hypothesis strategies.

    from nnstab import oracle
    from nnstab.testing import assert_ulp_close
    assert_ulp_close(nnstab.softmax(x), oracle.softmax(x), x.dtype)

`nnstab.testing.families` (deterministic NumPy generators) and `nnstab.testing.strategies`
(hypothesis strategies) are imported on use.
"""
from nnstab.testing.assertions import assert_ulp_close
from nnstab.testing.ulp import FORMATS, ULP_BOUNDS, dtype_name, ulp_error

__all__ = ["ulp_error", "ULP_BOUNDS", "assert_ulp_close", "FORMATS", "dtype_name"]
