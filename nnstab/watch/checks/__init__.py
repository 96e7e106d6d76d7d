"""The checks, one kind per file, and the table the monitor picks them from (kind -> check class).

Adding a kind: write checks/<kind>.py with a Check subclass (kind, OPTIONS with documented defaults,
NEEDS, observe) and add one line to CHECKS.
"""
from nnstab.watch.checks.base import Check
from nnstab.watch.checks.dead_relu import DeadReluCheck
from nnstab.watch.checks.exploding_gradient import ExplodingGradientCheck
from nnstab.watch.checks.loss_divergence import LossDivergenceCheck
from nnstab.watch.checks.nonfinite import NonfiniteCheck
from nnstab.watch.checks.overflow import OverflowCheck
from nnstab.watch.checks.saturation import SaturationCheck
from nnstab.watch.checks.underflow import UnderflowCheck
from nnstab.watch.checks.vanishing_gradient import VanishingGradientCheck

CHECKS = {
    "nonfinite": NonfiniteCheck,
    "overflow": OverflowCheck,
    "underflow": UnderflowCheck,
    "vanishing_gradient": VanishingGradientCheck,
    "exploding_gradient": ExplodingGradientCheck,
    "saturation": SaturationCheck,
    "dead_relu": DeadReluCheck,
    "loss_divergence": LossDivergenceCheck,
}

__all__ = ["CHECKS", "Check"] + [cls.__name__ for cls in CHECKS.values()]
