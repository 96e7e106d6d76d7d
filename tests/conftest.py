"""Hypothesis profiles: `ci` (default; derandomized, fixed example counts) and `thorough` (long runs).

Choose with NNSTAB_HYPOTHESIS_PROFILE=thorough python -m pytest.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=3000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("NNSTAB_HYPOTHESIS_PROFILE", "ci"))
