"""Where a model stands against its kinks: `kink_statistics` for any model `fs.Problem` found kinks in."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from .._checks import as_positive_float
from .._kinks import rewrap, unwrap
from .._nonsmooth import AbstractNonsmoothModel, kink_band_of
from .._nonsmooth import kink_statistics as _model_kink_statistics
from ._homogeneous import batch_axis, require_problem


def kink_statistics(problem, params: PyTree | None = None, *, rtol: float | None = None,
                    atol: float | None = None) -> dict[str, Array]:
    """Where `params` stands against the kinks of `problem`'s model on its data: the pairs (unit,
    sample) within the band of their kink, |z_iu| ≤ the half-width of `kink_widths` (the pairs the
    minimum-norm Clarke field treats as free; `flowsim._nonsmooth`).

    Works for every model with kinks: the library's ReLU networks and a user's own model, which
    `fs.Problem` wrapped in `fs.Kinked`; `params` may be that user's model as the trajectory gives it
    back (`traj.final`, or `traj.params` with a leading time axis), and is wrapped again on the fly.

    **Arguments:** `problem` (an `fs.Problem` whose model has kinks), `params` (default the
    problem's model; one model or a stack with one leading axis), `rtol`, `atol` (the solve's
    tolerances, turned into the band by the rule the solve uses, `flowsim._nonsmooth.kink_band_of`: the
    model's `kink_rtol`/`kink_atol` where it fixes them; default the solve's defaults).

    **Returns:** a dict of arrays (one value per index of the leading axis of a stacked `params`):
    `pairs_at_kink`, `units_at_kink`, `band_overflow` (more pairs in band than the model's `max_kinks`),
    `min_band_ratio` (min |z|/half-width), `active_pairs` (pairs with z > 0).
    """
    problem = require_problem(problem)
    if not isinstance(problem.model, AbstractNonsmoothModel):
        raise TypeError(f"kink_statistics needs a problem whose model has kinks; fs.find_kinks found none in "
                        f"{type(unwrap(problem.model)).__name__}")
    rtol = None if rtol is None else as_positive_float("rtol", rtol)
    atol = None if atol is None else as_positive_float("atol", atol)
    band = kink_band_of(problem.model, rtol, atol)
    params = problem.model if params is None else rewrap(problem.model, params)
    X = jnp.asarray(problem.X, dtype=jnp.float64)

    def single(model):
        return _model_kink_statistics(model, X, band)

    return eqx.filter_vmap(single)(params) if batch_axis(problem, params) else single(params)
