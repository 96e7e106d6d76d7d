"""Provenance: which recent tensors came out of a softmax, a sigmoid, an exp, a std... (weakly held).

A Tag says what produced a tensor; the map holds a weak reference to the tensor and the tag, never the
tensor itself, so a tagged activation is freed exactly when the training code lets go of it (the
entry then disappears with it). The lint clears the map at every step boundary as well.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

# tag kinds: what produced the tensor
PROBABILITY = ("softmax", "sigmoid", "complement")   # values in [0, 1]; "complement" is 1 - sigmoid(x)
KINDS = PROBABILITY + (
    "exp",          # exp(x); extra["shifted"]: x was shifted by its max (exp(x - max(x)), the stable form)
    "one_plus_exp", # 1 + exp(x)
    "sum_exp",      # exp(x).sum(...); extra["shifted"] as for exp
    "max",          # max / amax / logsumexp of something: a shift that makes exp safe
    "shifted",      # x - max(x)
    "prob_eps",     # p + eps or clamp(p, min=eps) for a probability p; extra: eps, how, origin
    "std",          # std(x), sqrt(var(x)), var(x) ** 0.5
    "var",          # var(x)
)


@dataclass(frozen=True)
class Tag:
    kind: str
    dtype: torch.dtype                  # narrowest float type the value has passed through
    extra: dict = field(default_factory=dict)
    layer: str | None = None            # the layer whose forward produced the pattern's first value

    def narrowed(self, dtype) -> "Tag":
        """The same tag on a copy of the value in `dtype` (a cast keeps the narrower limits)."""
        if dtype == self.dtype or not dtype.is_floating_point:
            return self
        if torch.finfo(dtype).eps > torch.finfo(self.dtype).eps:
            return Tag(self.kind, dtype, self.extra, self.layer)
        return self


def taggable(t) -> bool:
    """Plain floating-point tensors with real storage (not meta, fake or other subclasses)."""
    return (isinstance(t, torch.Tensor) and (type(t) is torch.Tensor or type(t) is torch.nn.Parameter)
            and t.is_floating_point() and t.device.type != "meta")


class TagMap:
    """id(tensor) -> (weakref, Tag); entries die with their tensors, and on clear()."""

    def __init__(self):
        self._entries = {}

    def __len__(self):
        return len(self._entries)

    def get(self, t):
        entry = self._entries.get(id(t))
        if entry is None or entry[0]() is not t:
            return None
        return entry[1]

    def set(self, t, tag: Tag):
        key = id(t)
        entries = self._entries

        def forget(ref, key=key):
            current = entries.get(key)
            if current is not None and current[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(t, forget), tag)

    def drop(self, t):
        entry = self._entries.get(id(t))
        if entry is not None and entry[0]() is t:
            del self._entries[id(t)]

    def clear(self):
        self._entries.clear()
