"""Input validation shared by the analysis references (private).

Every check raises `ValueError` naming the offending value and what would be valid, before any solver runs.
"""

from __future__ import annotations

import math

import jax
import numpy as np


def is_traced(x) -> bool:
    """True when `x` is a JAX tracer (inside `jit`/`vmap`), so values cannot be inspected."""
    return isinstance(x, jax.core.Tracer)


def as_real_matrix(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array of shape (n, d); got shape {X.shape}.")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column; got shape {X.shape}.")
    if np.iscomplexobj(X) or not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be real-valued; got dtype {X.dtype}.")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains non-finite values (nan or inf) at {np.argwhere(~np.isfinite(X))[:3].tolist()}.")
    return X


def as_vector(v, length: int, name: str, *, complex_ok: bool = False) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 1 or v.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},); got shape {v.shape}.")
    if np.iscomplexobj(v):
        if not complex_ok:
            raise ValueError(f"{name} must be real-valued; got dtype {v.dtype}.")
        v = v.astype(np.complex128)
    else:
        if not np.issubdtype(v.dtype, np.number):
            raise ValueError(f"{name} must be numeric; got dtype {v.dtype}.")
        v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains non-finite values (nan or inf).")
    return v


def as_labels(y, n: int) -> np.ndarray:
    """Binary labels: shape (n,), every entry exactly +1 or -1."""
    y = as_vector(y, n, "y")
    bad = ~np.isin(y, (-1.0, 1.0))
    if np.any(bad):
        raise ValueError(
            f"y must contain labels +1 or -1 only; got {y[bad][:3].tolist()} at indices {np.flatnonzero(bad)[:3].tolist()}."
        )
    return y


def as_transform(transform, d: int) -> np.ndarray:
    """The input transform S of shape (m, d) (identity when None); real or complex."""
    if transform is None:
        return np.eye(d)
    S = np.asarray(transform)
    if S.ndim != 2 or S.shape[1] != d:
        raise ValueError(f"transform must have shape (m, d) with d = X.shape[1] = {d}; got shape {S.shape}.")
    if not np.issubdtype(S.dtype, np.number):
        raise ValueError(f"transform must be numeric; got dtype {S.dtype}.")
    S = S.astype(np.complex128) if np.iscomplexobj(S) else S.astype(np.float64)
    if not np.all(np.isfinite(S)):
        raise ValueError("transform contains non-finite values (nan or inf).")
    if np.iscomplexobj(S) and np.max(np.abs(S.imag)) == 0.0:
        S = S.real.copy()
    return S


def as_norm_order(p, supported=None, *, name: str = "p") -> float:
    """A norm order p: one of `supported` when given, else any p > 0 (p < 1 is a quasi-norm) or inf."""
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {p!r}.") from None
    if supported is not None:
        if pf not in supported:
            valid = ", ".join("inf" if math.isinf(s) else repr(s) for s in supported)
            raise ValueError(f"{name} = {p!r} is not supported here; valid values: {valid}.")
        return pf
    if math.isnan(pf) or pf <= 0:
        raise ValueError(f"{name} must be > 0 (or inf); got {p!r}.")
    return pf


def as_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2 (the number of layers L); got {depth!r}.")
    return int(depth)


def as_sign(sign, m: int, complex_transform: bool) -> np.ndarray | None:
    """Sign constraints per coordinate of rho: None, "nonnegative"/"nonpositive", or an array of +1/-1/0."""
    if sign is None:
        return None
    if complex_transform:
        raise ValueError("sign constraints need a real transform; a complex transform has complex coordinates rho_j.")
    if isinstance(sign, str):
        if sign == "nonnegative":
            return np.ones(m)
        if sign == "nonpositive":
            return -np.ones(m)
        raise ValueError(f"sign = {sign!r} is unknown; valid: None, 'nonnegative', 'nonpositive', or an array of +1/-1/0.")
    s = np.asarray(sign)
    if s.shape != (m,):
        raise ValueError(f"sign array must have shape ({m},) (one entry per coordinate of rho); got shape {s.shape}.")
    if not np.issubdtype(s.dtype, np.number) or not np.all(np.isin(s, (-1, 0, 1))):
        raise ValueError(f"sign array entries must be +1 (rho_j >= 0), -1 (rho_j <= 0) or 0 (free); got {s!r}.")
    return s.astype(np.float64)


def as_positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number; got {value!r}.") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}.")
    return v
