"""The stable numeric functions of nnstab, one family per file; each accepts NumPy arrays or torch tensors."""
from nnstab.numerics.categorical import cross_entropy, kl_div
from nnstab.numerics.elementwise import binary_cross_entropy, binary_cross_entropy_with_logits, mse
from nnstab.numerics.softmax_family import log_softmax, logsumexp, softmax
from nnstab.numerics.sigmoid_family import log_sigmoid, sigmoid, softplus

__all__ = [
    "softmax", "log_softmax", "logsumexp", "sigmoid", "log_sigmoid", "softplus",
    "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "mse",
]
