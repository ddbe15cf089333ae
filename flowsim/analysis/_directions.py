"""Directions over a trajectory: the network's coordinates at every save, unit vectors, and the save grid that
resolves logarithmic directional convergence."""

from __future__ import annotations

import equinox as eqx
import numpy as np
from jaxtyping import Float, Shaped

from .._checks import as_int, as_positive_float
from .._trajectory import Trajectory
from ..networks import AbstractLinearTensorNetwork


def coordinates(source) -> Shaped[np.ndarray, "*save m"]:
    """The coordinates ρ of a linear tensor network's max-margin geometry (`margin_geometry().rho`: ρ for
    orthogonally decomposable networks, complex for full-length convolutions; β otherwise).

    **Arguments:** `source`, a network from `fs.networks` or a `Trajectory` of one (one run).

    **Returns:** ρ, shape (m,) for a network, (n_save, m) for a trajectory.
    """
    if isinstance(source, Trajectory):
        if isinstance(source.final, AbstractLinearTensorNetwork):
            return np.asarray(eqx.filter_vmap(lambda net: net.margin_geometry().rho)(source.params))
        kind = f"a Trajectory of {type(source.final).__name__}"
    elif isinstance(source, AbstractLinearTensorNetwork):
        return np.asarray(source.margin_geometry().rho)
    else:
        kind = type(source).__name__
    raise TypeError(f"coordinates needs a network from fs.networks or a Trajectory of one; got {kind}")


def unit(v: Shaped[np.ndarray, "*batch m"]) -> Shaped[np.ndarray, "*batch m"]:
    """v/‖v‖₂ along the last axis (nan where v = 0)."""
    v = np.asarray(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)


def log_log_grid(first_log_t: float, log_t1: float, n: int) -> Float[np.ndarray, " n"]:
    """n save times (log t) from `first_log_t` to `log_t1`, evenly spaced in log(log t).

    Directional convergence on separable data is logarithmic in t (1/log t for linear models, Soudry et al.
    2018), so its trends are straight lines against log(log t); pass the result as `fs.simulate(...,
    save_log_t=...)`.

    **Arguments:** `first_log_t` > 0, `log_t1` > `first_log_t`, `n` ≥ 2.
    """
    first = as_positive_float("first_log_t", first_log_t)
    last = as_positive_float("log_t1", log_t1)
    n = as_int("n", n, 2)
    if not last > first:
        raise ValueError(f"log_t1 must exceed first_log_t, got first_log_t={first}, log_t1={last}")
    return np.geomspace(first, last, n)
