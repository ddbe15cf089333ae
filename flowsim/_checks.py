"""The one validation layer for arguments a user passes (private).

Policy: a value of the wrong kind (a bool, a string, an array where a number goes) is a
``TypeError``; a value of the right kind outside its range is a ``ValueError``; both name the
argument and the bad value. Concrete values are checked now, before any compilation. Values
that are traced (under ``jit``/``vmap``) cannot be inspected here: they are returned as arrays
and checked inside the compiled solve (per batch member, with a status and a message).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value) -> bool:
    """True when ``value`` is a JAX tracer (inside ``jit``/``vmap``), so it cannot be inspected."""
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
    """An integer ≥ ``minimum`` (booleans refused)."""
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
