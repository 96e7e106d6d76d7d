"""Bad input raises an error that names the layer (as named_modules names it), what it expected and what it got."""
from collections import OrderedDict

import numpy as np
import pytest

from nnstab import nn


def model():
    return nn.Sequential(OrderedDict([
        ("features", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))),
        ("flat", nn.Flatten()),
        ("head", nn.Sequential(nn.Dense(64, 10), nn.Softmax())),
    ]))


def test_wrong_feature_count_names_the_layer_and_both_shapes():
    with pytest.raises(nn.LayerInputError) as info:
        nn.Dense(64, 10)(np.zeros((5, 65), np.float32))
    assert str(info.value) == ("Dense(in_features=64, out_features=10, bias=True): "
                               "expected input of shape (N, 64), got (5, 65)")


def test_error_deep_in_a_model_carries_the_qualified_name():
    with pytest.raises(nn.LayerInputError) as info:
        model()(np.zeros((2, 1, 10, 10), np.float32))    # 10x10 images: 4*5*5 = 100 features, not 64
    assert info.value.layer == "head.0"
    assert "at 'head.0': expected input of shape (N, 64), got (2, 100)" in str(info.value)


def test_wrong_channel_count_names_the_convolution():
    expected = r"at 'features\.0': expected input of shape \(N, 1, H, W\), got \(2, 3, 8, 8\)"
    with pytest.raises(ValueError, match=expected):
        model()(np.zeros((2, 3, 8, 8), np.float32))


def test_kernel_larger_than_the_input_is_explained():
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.Conv2d(1, 1, 5)(np.zeros((1, 1, 3, 3), np.float32))


def test_dtype_mismatch_names_both_dtypes_and_the_fix():
    with pytest.raises(TypeError, match=r"input dtype float64 does not match the layer's parameters \(float32\); "
                                        r"convert the input with x.astype\(np.float32\)"):
        model()(np.zeros((2, 1, 8, 8)))


def test_integer_and_non_array_inputs_are_refused():
    with pytest.raises(TypeError, match="floating-point input"):
        nn.ReLU()(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="expected a NumPy array, got list"):
        nn.Dense(2, 2)([[1.0, 2.0]])


def test_backward_before_forward_is_refused_with_the_layer_name():
    m = model()
    expected = r"Softmax\(axis=-1\) at 'head.1': backward\(\) was called before forward\(\)"
    with pytest.raises(RuntimeError, match=expected):
        m.backward(np.ones((2, 10), np.float32))


def test_grad_output_of_the_wrong_shape_is_refused():
    layer = nn.Dense(3, 2)
    layer(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad_output of the output's shape \(4, 2\), got \(4, 3\)"):
        layer.backward(np.zeros((4, 3), np.float32))


def test_unsupported_dtype_is_refused_at_construction():
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        nn.Dense(2, 2, dtype=np.int32)
