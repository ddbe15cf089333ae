"""The one validation layer for arguments a user passes (private).

Policy: a value of the wrong kind (a bool, a string, an array where a number goes) is a
`TypeError`; a value of the right kind outside its range is a `ValueError`; both name the
argument and the bad value. Concrete values are checked now, before any compilation. Values
that are traced (under `jit`/`vmap`) cannot be inspected here: they are returned as arrays
and checked inside the compiled solve (per batch member, with a status and a message).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value) -> bool:
    """True when `value` is a JAX tracer (inside `jit`/`vmap`), so it cannot be inspected."""
    return isinstance(value, jax.core.Tracer)


def _is_scalar_like(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) or is_traced(value):
        return np.ndim(value) == 0 and jnp.issubdtype(jnp.result_type(value), jnp.floating) or (
            np.ndim(value) == 0 and jnp.issubdtype(jnp.result_type(value), jnp.integer)
        )
    return False


def as_real_scalar(name: str, value, *, finite: bool = True) -> jax.Array:
    """A real number (or a 0-d real array, possibly traced) as a float64 0-d array."""
    if not _is_scalar_like(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if is_traced(value):
        return jnp.asarray(value, dtype=jnp.float64)
    number = float(value)
    if finite and not math.isfinite(number):
        raise ValueError(f"{name} must be a finite real number, got {number}")
    return jnp.asarray(number, dtype=jnp.float64)


def as_positive_scalar(name: str, value) -> jax.Array:
    """A positive finite real number (or a traced 0-d array) as a float64 0-d array."""
    array = as_real_scalar(name, value)
    if not is_traced(array) and not float(array) > 0:
        raise ValueError(f"{name} must be positive and finite, got {float(array)}")
    return array


def as_positive_float(name: str, value) -> float:
    """A positive finite real number that must be concrete (it fixes a shape or a grid)."""
    if is_traced(value):
        raise TypeError(f"{name} must be a concrete number, not a traced value")
    return float(as_positive_scalar(name, value))


def as_int(name: str, value, minimum: int = 1) -> int:
    """An integer ≥ `minimum` (booleans refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value}")
    return int(value)


def as_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def as_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(choices)}")
    return value


# Data arrays of a Problem (concrete or traced).


def as_data_array(name: str, value) -> jax.Array:
    """Real data (`X` or `y` of a `Problem`) as a float64 array; concrete or traced.

    Booleans and integers are cast exactly; complex values are refused (casting would drop the
    imaginary part), and so are strings, objects and ragged nested lists, each naming `name`.
    """
    if not (is_traced(value) or isinstance(value, jax.Array)):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as error:  # ragged nested lists: numpy refuses an inhomogeneous shape
            raise ValueError(f"{name} cannot be read as an array (are its rows of unequal length?): {error}") from error
    dtype = np.dtype(value.dtype)
    if dtype.kind == "c":
        raise TypeError(f"{name} must be real-valued, got dtype {dtype}: its imaginary part would be dropped; pass "
                        f"the real and imaginary parts as separate features if both matter")
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array (float, int or bool), got dtype {dtype}")
    return jnp.asarray(value, dtype=jnp.float64)


# Arrays and the analysis references' arguments (concrete values: the references run outside jit).


def _as_numeric_array(name: str, value) -> np.ndarray:
    if is_traced(value):
        raise TypeError(f"{name} must be a concrete array, not a traced value")
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged nested lists and the like
        raise TypeError(f"{name} cannot be read as an array: {error}") from error
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return array


def as_real_matrix(name: str, value) -> np.ndarray:
    """A finite real 2-d array of shape (n, d) with n, d ≥ 1, as float64."""
    array = _as_numeric_array(name, value)
    if np.iscomplexobj(array):
        raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array of shape (n, d), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        where = np.argwhere(~np.isfinite(array))[:3].tolist()
        raise ValueError(f"{name} contains non-finite values (nan or inf) at {where}")
    return array


def as_vector(name: str, value, length: int, *, complex_ok: bool = False) -> np.ndarray:
    """A finite vector of shape (length,), float64 (complex128 when `complex_ok` and complex)."""
    array = _as_numeric_array(name, value)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got shape {array.shape}")
    if np.iscomplexobj(array):
        if not complex_ok:
            raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}")
        array = array.astype(np.complex128)
    else:
        array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return array


def as_labels(name: str, value, n: int) -> np.ndarray:
    """Binary labels: shape (n,), every entry exactly +1 or -1."""
    labels = as_vector(name, value, n)
    bad = ~np.isin(labels, (-1.0, 1.0))
    if np.any(bad):
        raise ValueError(
            f"{name} must contain labels +1 or -1 only, got {labels[bad][:3].tolist()} at indices "
            f"{np.flatnonzero(bad)[:3].tolist()}"
        )
    return labels


def as_transform(name: str, value, d: int) -> np.ndarray:
    """An input transform S of shape (m, d), real or complex (the identity when None)."""
    if value is None:
        return np.eye(d)
    S = _as_numeric_array(name, value)
    if S.ndim != 2 or S.shape[1] != d:
        raise ValueError(f"{name} must have shape (m, d) with d = X.shape[1] = {d}, got shape {S.shape}")
    S = S.astype(np.complex128) if np.iscomplexobj(S) else S.astype(np.float64)
    if not np.all(np.isfinite(S)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    if np.iscomplexobj(S) and np.max(np.abs(S.imag)) == 0.0:
        S = S.real.copy()
    return S


def as_norm_order(name: str, value, supported=None) -> float:
    """A norm order p: one of `supported` when given, else any p > 0 (p < 1: a quasi-norm) or inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    p = float(value)
    if supported is not None:
        if p not in supported:
            valid = ", ".join("inf" if math.isinf(s) else repr(s) for s in supported)
            raise ValueError(f"{name} = {value!r} is not supported here; valid values: {valid}")
        return p
    if math.isnan(p) or p <= 0:
        raise ValueError(f"{name} must be > 0 (or inf), got {value!r}")
    return p


def as_sign(name: str, value, m: int, complex_rows=None) -> np.ndarray | None:
    """Sign constraints per coordinate: None, "nonnegative", "nonpositive", or an array of +1/-1/0.

    Returns None or a float64 array (m,) of +1 (ρ_j ≥ 0), −1 (ρ_j ≤ 0), 0 (free). `complex_rows`, a
    boolean mask (m,) of coordinates that are complex, refuses constraints on those.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("nonnegative", "nonpositive"):
            raise ValueError(
                f"{name} = {value!r} is unknown; valid: None, 'nonnegative', 'nonpositive', or an array of +1/-1/0"
            )
        signs = np.full(m, 1.0 if value == "nonnegative" else -1.0)
    else:
        array = _as_numeric_array(f"{name} array", value)
        if array.shape != (m,):
            raise ValueError(f"{name} array must have shape ({m},) (one entry per coordinate), got shape {array.shape}")
        if not np.all(np.isin(array, (-1, 0, 1))):
            raise ValueError(f"{name} array entries must be +1 (ρ_j ≥ 0), -1 (ρ_j ≤ 0) or 0 (free), got {array!r}")
        signs = array.astype(np.float64)
    if complex_rows is not None and np.any((signs != 0) & complex_rows):
        raise ValueError(f"{name} constraints need real coordinates; this transform makes some of them complex")
    return signs
