"""SGD, AdaGrad, RMSProp and Adam with torch.optim's update rules, defaults and order of operations.

Each optimiser holds `param_groups` (a list of dicts: "params" plus its hyper-parameters, so a
schedule can change `opt.param_groups[0]["lr"]`) and a per-parameter `state` dict. `step()` updates
every parameter with a gradient in place; `zero_grad()` sets the gradients to None, as torch does.
The arithmetic follows torch's single-tensor CPU implementations term by term (e.g. Adam's
`exp_avg.lerp_(grad, 1 - beta1)` and its bias corrections), so float64 trajectories agree with
torch.optim to rounding. With g the gradient (plus weight_decay * p when set), t the step count:

    SGD       b <- momentum b + (1 - dampening) g  (b = g at t = 1);
              g <- g + momentum b if nesterov else b;  p <- p - lr g
    AdaGrad   s <- s + g^2;  p <- p - lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)
    RMSProp   v <- alpha v + (1 - alpha) g^2;  (centered: m <- lerp(m, g, 1 - alpha), v - m^2 under the root)
              a = sqrt(v) + eps;  p <- p - lr g / a  (momentum: b <- momentum b + g / a;  p <- p - lr b)
    Adam      m <- m + (1 - beta1)(g - m);  v <- beta2 v + (1 - beta2) g^2
              p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)   (amsgrad: max of the v's)
"""
from __future__ import annotations

import numpy as np

from nnstab.nn import _args
from nnstab.nn.module import Parameter

FLAGS = ("nesterov", "centered", "amsgrad")   # the hyper-parameters that are switches, not numbers


class Optimizer:
    """Parameter groups, per-parameter state, zero_grad(); subclasses define defaults and `_update`."""

    defaults: dict = {}

    def __init__(self, params, **hyper):
        owner = type(self).__name__
        for name, value in hyper.items():
            if name not in FLAGS and name != "betas":   # rates, decays, eps: real numbers >= 0 (NaN refused)
                hyper[name] = _args.real(value, name, owner, low=0.0)
        self.defaults = dict(hyper)
        if isinstance(params, (Parameter, np.ndarray, str)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{owner}: params must be an iterable of Parameters, e.g. model.parameters(), "
                            f"got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass model.parameters()")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            self.add_param_group(group)
        self.state: dict[int, dict] = {}
        self._buffers: dict[int, tuple] = {}

    def add_param_group(self, group: dict):
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: params must hold nnstab.nn.Parameter objects, got "
                                f"{type(p).__name__}; pass model.parameters()")
        full = {**self.defaults, **group, "params": params}
        for name in group:
            if name in self.defaults and name not in FLAGS and name != "betas":
                full[name] = _args.real(group[name], name, type(self).__name__, low=0.0)
        self.param_groups.append(full)

    def zero_grad(self, set_to_none: bool = True):
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.data.shape:
                    raise ValueError(f"gradient of parameter {p.name!r} has shape {p.grad.shape}, "
                                     f"expected {p.data.shape}")
                self._update(p, p.grad, self.state.setdefault(id(p), {}), group)

    def _update(self, p, grad, state, group):
        raise NotImplementedError

    def _scratch(self, p):
        """Two work arrays shaped like p, kept between steps so that an update allocates nothing."""
        bufs = self._buffers.get(id(p))
        if bufs is None or bufs[0].shape != p.data.shape or bufs[0].dtype != p.data.dtype:
            bufs = self._buffers[id(p)] = (np.empty_like(p.data), np.empty_like(p.data))
        return bufs

    @staticmethod
    def _decayed(p, grad, weight_decay):
        """grad + weight_decay * p (L2 regularisation), as torch's grad.add(param, alpha=weight_decay)."""
        return grad + weight_decay * p.data if weight_decay != 0 else grad


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum, weight decay and dampening (torch.optim.SGD).

    Positional order as nnstab's API fixes it (params, lr, momentum, nesterov, weight_decay);
    dampening is keyword-only. Pass the rest by keyword, as torch code usually does.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, *, dampening: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)
        if nesterov and (self.defaults["momentum"] <= 0 or self.defaults["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening = 0")

    def _update(self, p, grad, state, group):
        grad = self._decayed(p, grad, group["weight_decay"])
        momentum = group["momentum"]
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data += -group["lr"] * grad


class AdaGrad(Optimizer):
    """Per-coordinate steps lr / sqrt(sum of squared gradients) (Duchi et al. 2011; torch.optim.Adagrad)."""

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
            state["sum"] = np.full_like(p.data, group["initial_accumulator_value"])
        state["step"] += 1
        grad = self._decayed(p, grad, group["weight_decay"])
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        state["sum"] += grad * grad
        std = np.sqrt(state["sum"])
        std += group["eps"]
        p.data += (-clr * grad) / std


class RMSProp(Optimizer):
    """Steps scaled by a running root-mean-square of the gradients (Hinton's lecture 6e; torch.optim.RMSprop)."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1
        grad = self._decayed(p, grad, group["weight_decay"])
        alpha = group["alpha"]
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += ((1 - alpha) * grad) * grad
        if group["centered"]:
            grad_avg = state["grad_avg"]
            _lerp_(grad_avg, grad, 1 - alpha)
            avg = np.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = np.sqrt(square_avg)
        avg += group["eps"]
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += grad / avg
            p.data += -group["lr"] * buf
        else:
            p.data += (-group["lr"] * grad) / avg


class Adam(Optimizer):
    """Adaptive moment estimation (Kingma & Ba 2015) with bias correction, as torch.optim.Adam (L2 weight decay)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Adam: betas must be a pair of floats (beta1, beta2), got {betas!r}")
        betas = tuple(_args.real(b, f"betas[{i}]", "Adam", low=0.0) for i, b in enumerate(betas))
        if not (betas[0] < 1.0 and betas[1] < 1.0):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        beta1, beta2 = group["betas"]
        grad = self._decayed(p, grad, group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        a, b = self._scratch(p)                       # reused buffers: no temporaries in the loop below
        _lerp_(exp_avg, grad, 1 - beta1, a)
        exp_avg_sq *= beta2
        np.multiply(grad, 1 - beta2, out=a)
        a *= grad
        exp_avg_sq += a
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = group["lr"] / bias_correction1
        second = exp_avg_sq
        if group["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = np.sqrt(second, out=a)
        denom /= bias_correction2 ** 0.5
        denom += group["eps"]
        np.multiply(exp_avg, -step_size, out=b)
        b /= denom
        p.data += b


def _lerp_(start, end, weight: float, scratch=None):
    """start <- start + weight (end - start) in place, evaluated as torch's lerp (the other form for weight >= 0.5)."""
    diff = np.subtract(end, start, out=scratch)
    if weight < 0.5:
        diff *= weight
        start += diff
    else:
        diff *= 1 - weight
        np.subtract(end, diff, out=start)


Adagrad = AdaGrad     # torch's spelling
RMSprop = RMSProp
