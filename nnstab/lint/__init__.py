"""nnstab.lint: run-time detection of the unstable formulas people write by hand in torch.

    with nnstab.lint.Linter(model) as linter:      # opt-in: a torch function mode plus module hooks
        ...one or more training steps, calling linter.step() after each...
    for f in linter.findings:                      # Finding(kind="unstable_formula", layer, step, phase, ...)
        print(f.message)                           # formula, module, source line, share, replacement

Patterns (PATTERNS): log(softmax(x)), log(sigmoid(x)), log(1 - sigmoid(x)), log(1 + exp(x)),
log1p(exp(x)), exp(x) / exp(x).sum(), log(exp(x).sum()), BCELoss on a sigmoid output, log(p + eps)
or log(clamp(p, eps)) on probabilities, division by a standard deviation without an epsilon.
`nnstab lint SCRIPT` runs one step of an unedited script under a Linter (nnstab.lint.script).

Layout: patterns.py (each pattern, its losing range and replacement), provenance.py (weak tag map),
rules.py (which torch functions tag, pass on or consume), where.py (module and source line),
linter.py (the mode, the counts, the findings), script.py (one step of a script).
"""
from nnstab.lint.linter import KIND, Linter
from nnstab.lint.patterns import PATTERNS, Pattern

__all__ = ["Linter", "PATTERNS", "Pattern", "KIND"]
