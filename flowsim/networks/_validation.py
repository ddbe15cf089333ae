"""Argument checks specific to the network families (layer lists, init arguments).

Numbers go through `flowsim._checks`, the one validation layer (wrong kind → TypeError, out of
range → ValueError, booleans refused, traced values passed on as arrays).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._checks import as_choice, as_int, as_real_scalar, is_traced

INIT_SHAPES = ("balanced", "last_zero", "random")


def is_concrete(value) -> bool:
    """True when `value` holds numbers now (not a tracer under `jit`/`vmap`)."""
    return not is_traced(value)


def as_layer_list(layers, family: str) -> list:
    """The layers as a Python list; a single array is refused (it is ambiguous)."""
    if isinstance(layers, (np.ndarray, jax.Array)):
        raise TypeError(
            f"{family} takes a list of layers, got a single array of shape {tuple(np.shape(layers))}; "
            "pass list(array) to use its rows as layers"
        )
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        raise TypeError(f"{family} takes a list (or tuple) of layers, got {type(layers).__name__}")
    return list(layers)


def as_real_array(value, name: str, ndim: int) -> Array:
    """`value` as a float64 array with `ndim` dimensions, finite when concrete."""
    if not is_concrete(value):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{name} must be a real floating-point array, got dtype {value.dtype}")
        if value.ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
        return value
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged nested lists and the like
        raise TypeError(f"{name} cannot be read as an array: {error}") from error
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"{name} must be a real numeric array (parameters are real), got dtype {array.dtype}")
    if array.ndim != ndim:
        kind = {1: "a vector", 2: "a matrix"}.get(ndim, f"an array with {ndim} dimensions")
        raise ValueError(f"{name} must be {kind}, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); every dimension must be at least 1")
    if not np.all(np.isfinite(array)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf); all entries must be finite")
    return jnp.asarray(array, dtype=jnp.float64)


def check_input(x, d: int, family: str) -> None:
    if jnp.shape(x) != (d,):
        raise ValueError(
            f"{family} maps ONE input of shape ({d},) to a scalar, got an input of shape {tuple(jnp.shape(x))}; "
            "use jax.vmap over a batch"
        )


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer ≥ `minimum` (`flowsim._checks.as_int`)."""
    return as_int(name, value, minimum)


def check_depth(depth, family: str, minimum: int = 1) -> int:
    """The number of layers L ≥ `minimum` of a `family` network."""
    return as_int(f"{family} depth (number of layers)", depth, minimum)


def check_init_args(shape, scale, key, direction, family: str):
    """Validate the common initialiser arguments; returns the scale as a float64 0-d array (or a tracer)."""
    as_choice(f"{family} init shape", shape, INIT_SHAPES)
    scale = as_real_scalar("scale", scale)
    if shape == "random":
        if key is None:
            raise ValueError(f"{family} init shape 'random' needs a PRNG key: pass key=jax.random.key(seed)")
        if direction is not None:
            raise ValueError("direction is used by the 'balanced' and 'last_zero' shapes only, not by 'random'")
    return scale


def check_direction(direction, length: int, family: str, default) -> Array:
    if direction is None:
        return default
    u = as_real_array(direction, f"{family} init direction", 1)
    if u.shape != (length,):
        raise ValueError(f"{family} init direction must have shape ({length},), got shape {tuple(u.shape)}")
    return u
