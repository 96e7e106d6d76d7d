"""A healthy baseline: a small convolutional network in nnstab.nn learning to tell strokes apart.

Setting: 12x12 grey images of one of four strokes (horizontal, vertical, diagonal, anti-diagonal bar)
at random positions, with pixel noise; two 3x3 convolutions (He initialisation) with ReLU and 2x2 max
pooling, then a dense layer, trained with Adam on standardised pixels, all in nnstab.nn.

What goes wrong: nothing. Convolution channels stay alive (the pooled maxima keep every filter
active somewhere in the image), He initialisation keeps activations and gradients O(1) through the
stack, and the loss falls to near zero. The monitor should report nothing at warning or above.

The fix (--fixed): nothing to fix; --fixed runs the same recipe, so both reports are clean.
"""
EXPECTED = {"kinds": [], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import finish, minibatches, parse_args, watch_options

SIZE, CLASSES = 12, 4


def strokes(n: int = 1024, seed: int = 0):
    """Images (n, 1, SIZE, SIZE) of a 6-pixel stroke of class y in {0: -, 1: |, 2: \\, 3: /} plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    img = 0.3 * rng.normal(size=(n, 1, SIZE, SIZE))
    steps = {0: (0, 1), 1: (1, 0), 2: (1, 1), 3: (1, -1)}
    for k in range(n):
        dr, dc = steps[int(y[k])]
        r, c = rng.integers(0, SIZE - 6), rng.integers(6 if dc < 0 else 0, SIZE - (0 if dc < 0 else 6))
        for t in range(6):
            img[k, 0, r + dr * t, c + dc * t] += 1.0
    img = (img - img.mean()) / img.std()
    return img.astype(np.float32), y


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=150, quick_steps=40)
    nn.manual_seed(0)
    x, y = strokes()
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dense(16 * 3 * 3, CLASSES),
    )
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.Adam(model.parameters(), lr=3e-3)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 64, args.steps):
            loss = loss_fn(model(x[idx]), y[idx])
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            monitor.step(loss=loss)
    accuracy = float(np.mean(model(x).argmax(1) == y))
    return finish(monitor, args, final_loss=loss, accuracy=accuracy)


if __name__ == "__main__":
    main()
