"""Raw, unscaled features drive every tanh unit to +-1, where its derivative is 0 (nnstab.nn).

Setting: a tanh MLP in nnstab.nn (Xavier initialisation) predicting whether a house sells above
the median from raw features: floor area in square metres (~50-250), year built (~1900-2020),
distance to the centre in metres (~100-20000), and five more on scales of tens to thousands.

What goes wrong: Xavier keeps the variance of well-scaled (unit-variance) inputs; with features in
the thousands, the first layer's pre-activations are in the hundreds or thousands, and tanh(z) is
+-1 to machine precision for |z| > 9 (float32). Its derivative 1 - tanh(z)^2 is then 0, or 1e-8 at
best: the first layer's units are saturated for every input, carry one bit each (the sign), and no
gradient reaches the first layer's weights to pull them back. The network learns only what the sign
pattern of the first layer happens to encode. The monitor sees both sides of it: saturation in the
first layer from the first step, and, once the later layers have learned what they can, the first
layer's gradient vanishing next to the last layer's (vanishing_gradient).

The fix (--fixed): standardise the features (subtract each one's mean, divide by its standard
deviation, both from the training set): the pre-activations are O(1), on tanh's sensitive range, and
every layer learns. (A BatchNorm before the first tanh also rescales the pre-activations, but its
running statistics then have to track means in the thousands that shift with every weight update:
evaluation-mode outputs lag behind. Scale the inputs.)
"""
EXPECTED = {"kinds": ["saturation", "vanishing_gradient"], "framework": "nnstab.nn"}

import numpy as np

import nnstab
import nnstab.nn as nn
from _probekit import finish, minibatches, parse_args, watch_options

# (mean, spread) of each raw feature, in its natural unit
FEATURES = {
    "area_m2": (120.0, 50.0), "year_built": (1965.0, 30.0), "distance_m": (6000.0, 4000.0),
    "rooms": (4.0, 1.5), "lot_m2": (600.0, 400.0), "income_k": (60.0, 25.0),
    "noise_db": (55.0, 10.0), "school_m": (900.0, 600.0),
}


def houses(n: int = 4096, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(FEATURES)))                       # the standardised features
    means, spreads = (np.array(v) for v in zip(*FEATURES.values()))
    score = z[:, 0] + 0.5 * z[:, 1] - z[:, 2] + 0.5 * z[:, 5] - 0.3 * z[:, 6] + 0.5 * rng.normal(size=n)
    return (means + spreads * z).astype(np.float32), (score > np.median(score)).astype(np.int64)


def mlp(in_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Dense(in_features, 64, init="xavier"), nn.Tanh(),
                         nn.Dense(64, 64, init="xavier"), nn.Tanh(),
                         nn.Dense(64, 2, init="xavier"))


def main(argv=None) -> dict:
    args = parse_args(__doc__, argv, default_steps=200, quick_steps=200)   # ~3 s: quick runs it whole
    nn.manual_seed(0)
    x, y = houses()
    if args.fixed:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    model = mlp(x.shape[1])
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with nnstab.watch(model, **watch_options(args)) as monitor:
        for idx in minibatches(len(y), 128, args.steps):
            loss = loss_fn(model(x[idx]), y[idx])
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            monitor.step(loss=loss)
    accuracy = float(np.mean(model(x).argmax(1) == y))
    return finish(monitor, args, final_loss=loss, accuracy=accuracy)


if __name__ == "__main__":
    main()
