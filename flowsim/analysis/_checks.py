"""Transitional aliases for modules not yet switched to ``flowsim._checks`` (private; to be removed).

The one validation layer is ``flowsim._checks``; these keep the old argument order of the analysis checks
for ``_scale_accuracy`` until it imports from there directly.
"""

from __future__ import annotations

from .. import _checks


def as_real_matrix(X, name: str = "X"):
    return _checks.as_real_matrix(name, X)


def as_labels(y, n: int):
    return _checks.as_labels("y", y, n)


def as_depth(depth) -> int:
    return _checks.as_int("depth", depth, 2)


def as_positive(value, name: str) -> float:
    return _checks.as_positive_float(name, value)
