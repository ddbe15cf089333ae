"""Richardson extrapolation of a quantity computed at several values of a small parameter h → 0.

Used for the width ε of a smoothed ReLU (`fs.smoothed_limit`) and usable for GD's step size
(Elkabetz & Cohen 2021: GD → gradient flow with error O(η)).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree


class Extrapolation(eqx.Module):
    """The limit h → 0 of values computed at steps h_1 > h_2 > … (`richardson`).

    - `value`: the extrapolated value (the values' structure);
    - `error`: an estimate of its error, max over entries of |value − the same extrapolation
      without the largest step| (for two steps: |value − value at the smallest step|);
    - `steps`, `order`, `logarithmic`: what was extrapolated from (steps sorted decreasing).
    """

    value: PyTree
    error: Float[Array, ""]
    steps: tuple[float, ...] = eqx.field(static=True)
    order: float = eqx.field(static=True)
    logarithmic: bool = eqx.field(static=True)


def _terms(steps: np.ndarray, count: int, order: float, logarithmic: bool) -> list[np.ndarray]:
    """The first `count` terms of the error expansion at `steps`: h^p, h^{2p}, … or, with
    `logarithmic`, h^p log h, h^p, h^{2p} log h, h^{2p}, …"""
    terms, power = [], 1
    while len(terms) < count:
        x = steps ** (power * order)
        terms.extend([x * np.log(steps), x] if logarithmic else [x])
        power += 1
    return terms[:count]


def _weights(steps: np.ndarray, order: float, logarithmic: bool) -> np.ndarray:
    """w with Σ_i w_i v_i = v(0) when v(h) = v(0) + Σ_k c_k term_k(h) exactly (first m − 1 terms)."""
    basis = np.stack([np.ones_like(steps), *_terms(steps, steps.size - 1, order, logarithmic)])
    return np.linalg.solve(basis, np.eye(steps.size)[0])


def richardson(steps, values, order: float = 1.0, *, logarithmic: bool = False) -> Extrapolation:
    """Extrapolate `values` (one per step, each an array or a pytree of arrays with one
    structure) to step 0, assuming v(h) = v(0) + c_1 h^p + c_2 h^{2p} + … with p = `order`
    (Richardson 1911): the polynomial in h^p through all points, evaluated at 0. With
    `logarithmic` the expansion is v(0) + c_1 h^p log h + c_2 h^p + c_3 h^{2p} log h + …, the
    form a smoothed kink gives (entering a sliding mode through a layer of width ε shifts the
    trajectory by O(ε log ε); benchmarks/relu.py).

    m steps remove the first m − 1 terms. Steps a factor 10 apart keep the weights small
    (h, h/10 with p = 1: weights −1/9, 10/9).
    """
    try:
        steps = np.asarray(steps, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"steps must be a sequence of positive numbers, got {steps!r}") from error
    if steps.ndim != 1 or steps.size < 2:
        raise ValueError(f"richardson needs at least 2 steps (a sequence), got {steps.tolist()!r}")
    if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        raise ValueError(f"steps must be positive and finite, got {steps.tolist()}")
    if np.unique(steps).size != steps.size:
        raise ValueError(f"steps must be distinct, got {steps.tolist()}")
    values = list(values)
    if len(values) != steps.size:
        raise ValueError(f"got {len(values)} values for {steps.size} steps: one value per step")
    if not isinstance(logarithmic, (bool, np.bool_)):
        raise TypeError(f"logarithmic must be True or False, got {logarithmic!r}")
    if isinstance(order, (bool, np.bool_)) or np.ndim(order) != 0 or not np.isfinite(float(order)) \
            or float(order) <= 0:
        raise ValueError(f"order must be a positive number (the error's leading power of h), got {order!r}")
    order = float(order)
    structure = jax.tree_util.tree_structure(values[0])
    for value in values[1:]:
        if jax.tree_util.tree_structure(value) != structure:
            raise ValueError("every value must have the same structure (one pytree per step)")
    sort = np.argsort(-steps)
    steps = steps[sort]
    values = [values[i] for i in sort]

    def combine(weights, members):
        return jax.tree_util.tree_map(
            lambda *leaves: sum(w * jnp.asarray(leaf, dtype=jnp.float64) for w, leaf in zip(weights, leaves)),
            *members,
        )

    value = combine(_weights(steps, order, logarithmic), values)
    if steps.size == 2:
        previous = values[-1]
    else:
        previous = combine(_weights(steps[1:], order, logarithmic), values[1:])
    gaps = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), value, previous))
    error = jnp.max(jnp.stack(gaps)) if gaps else jnp.asarray(0.0)
    return Extrapolation(value, error, tuple(float(h) for h in steps), order, bool(logarithmic))
