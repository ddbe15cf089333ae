"""Gradient descent against gradient flow and the modified flow, at exactly the GD times."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._checks import as_bool, as_int, as_positive_float
from .._flow import flatten_model, modified_flow
from .._gd import gd_save_steps, gradient_descent_batch
from .._problem import Problem
from .._simulate import simulate
from .._trajectory import Trajectory


class GDFlowComparison(eqx.Module):
    """GD runs with several steps η_i, lined up with gradient flow (and the modified flow) at the same times.

    Member i is saved at step indices k_ij (`steps[i]`), i.e. at times t_ij = k_ij·η_i
    (`log_t[i]`); the flows are evaluated at exactly those times.

    - `lrs`: (r,) the steps η_i.
    - `steps`: (r, m) the saved GD step indices; `log_t`: (r, m) log t_ij (−inf at t = 0).
    - `theta_gd`, `theta_flow`, `theta_modified`: (r, m, p) flattened trainable parameters of
      GD, of gradient flow θ' = −∇L and of the modified flow θ' = −∇(L + (η_i/4)‖∇L‖²) at t_ij
      (`theta_modified` is None when not asked for; rows of steps left out by a `modified`
      mask are NaN).
    - `distance_to_flow`: (r, m) ‖θ_GD(k_ij) − θ_GF(k_ij η_i)‖₂; `distance_to_modified` likewise.
      NaN after a GD run diverged.
    - `gd`: the GD trajectories (leading axis r); `flow`: the gradient-flow trajectory
      (saved at the union of all t_ij, plus its final state).
    - `flow_ok`: every flow solve reached its horizon (otherwise the distances are not to be used).
    """

    lrs: Float[Array, " r"]
    steps: Int[Array, "r m"]
    log_t: Float[Array, "r m"]
    theta_gd: Float[Array, "r m p"]
    theta_flow: Float[Array, "r m p"]
    theta_modified: Float[Array, "r m p"] | None
    distance_to_flow: Float[Array, "r m"]
    distance_to_modified: Float[Array, "r m"] | None
    gd: Trajectory
    flow: Trajectory
    flow_ok: Bool[Array, ""]

    def order(self, which: str = "flow", index: int = -1) -> float:
        """The fitted order q in distance ≈ C·η^q at save index `index` (default: the last time),
        over the members whose GD run did not diverge (`fitted_order`)."""
        if which not in ("flow", "modified"):
            raise ValueError(f"which must be 'flow' or 'modified', got {which!r}")
        distances = self.distance_to_flow if which == "flow" else self.distance_to_modified
        if distances is None:
            raise ValueError("this comparison was made with modified=False: no distances to the modified flow")
        return fitted_order(self.lrs, np.asarray(distances)[:, index])


def fitted_order(lrs, errors) -> float:
    """The slope q of the least-squares line log e = q·log η + c through (η_i, e_i): the order of
    convergence of e in η (q = 1 for GD against gradient flow, q = 2 against the modified flow,
    Barrett & Dherin, ICLR 2021). Needs at least two distinct positive η_i and positive finite e_i."""
    lrs = np.asarray(lrs, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if lrs.ndim != 1 or errors.shape != lrs.shape:
        raise ValueError(f"lrs and errors must be 1-d of the same length, got shapes {lrs.shape} and {errors.shape}")
    if lrs.size < 2 or np.unique(lrs).size < 2:
        raise ValueError(f"a fitted order needs at least two distinct steps, got lrs = {lrs.tolist()}")
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"lrs must be positive and finite, got {lrs.tolist()}")
    if not np.all(np.isfinite(errors) & (errors > 0)):
        raise ValueError(f"errors must be positive and finite (a diverged run has none), got {errors.tolist()}")
    return float(np.polyfit(np.log(lrs), np.log(errors), 1)[0])


def lined_up_steps(lrs, t1: float, n_save: int) -> np.ndarray:
    """Step indices (r, m) that put every η_i at (nearly) the same times: the log-spaced grid
    k_j of the largest step η_0 up to t1, and k_ij = round(k_j·η_0/η_i) for the others — exact
    when η_0/η_i is an integer. Strictly increasing in j for every i."""
    lrs = np.asarray(lrs, dtype=np.float64)
    reference = float(lrs.max())
    base = gd_save_steps(max(int(round(t1 / reference)), 1), n_save)
    return np.rint(base[None, :] * (reference / lrs[:, None])).astype(np.int64)


def _check_lrs(lrs) -> np.ndarray:
    array = np.asarray(lrs)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf":
        raise ValueError(f"lrs must be a non-empty 1-d sequence of steps, got {lrs!r}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError(f"lrs must be positive and finite, got {array.tolist()}")
    if np.unique(array).size != array.size:
        raise ValueError(f"lrs must be distinct, got {array.tolist()}")
    return array


def gf_vs_gd(problem: Problem, lrs, t1: float, *, n_save: int = 50, modified=True, solver: str = "tsit5",
             rtol: float = 1e-10, atol: float = 1e-12, max_steps: int = 100_000) -> GDFlowComparison:
    """Gradient descent with several steps against gradient flow (and the modified flow), at exactly the GD times.

    Elkabetz & Cohen (NeurIPS 2021) measure ‖θ_GD(k) − θ_GF(kη)‖ along training: GD tracks the
    flow to O(η) while η·λ_max(∇²L) < 2 along the path. Against the modified flow
    θ' = −∇(L + (η/4)‖∇L‖²) of Barrett & Dherin (ICLR 2021) the distance is O(η²) over a fixed time.

    The save points are lined up (`lined_up_steps`): GD with step η_i is saved at its steps
    k_ij, and each flow is evaluated at exactly t_ij = k_ij·η_i, by `fs.simulate`'s explicit
    save grid (one gradient-flow solve for all η_i; one modified-flow solve per η_i, same
    compiled program). All GD runs share one compiled loop (lr is traced).

    Non-smooth (ReLU) models: the flow is the minimum-norm Clarke subgradient flow, and the
    modified flow's Hessian–vector product is that of the current linear piece (the activation
    pattern held fixed). GD crosses each kink at a fraction of a step and zigzags across kinks
    the flow slides along, an O(η) error the modified flow does not model: there GD is O(η) from
    both flows (measured on a one-hidden-layer ReLU net on digits: fitted orders 1.01 to GF and
    1.02 to the modified flow), and the O(η²) statement holds for smooth models only.

    **Arguments:**

    - `problem`: a `fs.Problem`.
    - `lrs`: the steps η_i (distinct, positive); choose η_0/η_i integer for identical times.
    - `t1`: the time horizon; each run takes about t1/η_i steps.
    - `n_save`: at most this many save times (log-spaced in the steps of the largest η).
    - `modified`: also solve the modified flow for each η_i (True), for none (False), or for
      the η_i where a boolean sequence of the length of `lrs` is True (one call then serves
      an order study and a sweep of large steps with a single gradient-flow solve).
    - `solver`, `rtol`, `atol`, `max_steps`: for the flow solves (`fs.simulate`);
      keep the tolerances well below the smallest distance measured.

    **Returns:**

    A `GDFlowComparison`.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a flowsim.Problem, got {type(problem).__name__}")
    lrs = _check_lrs(lrs)
    t1 = as_positive_float("t1", t1)
    if t1 < lrs.max():
        raise ValueError(f"t1 = {t1} is shorter than one step of the largest lr = {lrs.max()}: no GD step to compare")
    n_save = as_int("n_save", n_save, minimum=2)
    modified = _check_modified(modified, lrs.size)
    steps = lined_up_steps(lrs, t1, n_save)
    times = steps * lrs[:, None]
    horizon = float(times.max())
    gd = gradient_descent_batch(problem, lrs, steps)

    unique, inverse = _merged_times(times)
    options = dict(solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)
    # simulate saves at save_log_t and then appends the final state (len + 1 states): drop it.
    flow = simulate(problem, t1=horizon, save_log_t=_log(unique), **options)
    theta_flow = _flat(problem, flow.params)[:-1][inverse]
    flow_ok = flow.ok
    theta_modified = None
    if modified.any():
        rows = []
        for lr, row, wanted in zip(lrs, times, modified):
            if not wanted:
                rows.append(jnp.full(theta_flow.shape[1:], jnp.nan))
                continue
            traj = simulate(modified_flow(problem, float(lr)), t1=horizon, save_log_t=_log(row), **options)
            flow_ok = flow_ok & traj.ok
            rows.append(_flat(problem, traj.params)[:-1])
        theta_modified = jnp.stack(rows)
    theta_gd = eqx.filter_vmap(lambda params: _flat(problem, params))(gd.params)
    distance = lambda other: jnp.linalg.norm(theta_gd - other, axis=-1)  # noqa: E731
    return GDFlowComparison(
        lrs=jnp.asarray(lrs),
        steps=jnp.asarray(steps),
        log_t=jnp.asarray(_log(times)),
        theta_gd=theta_gd,
        theta_flow=theta_flow,
        theta_modified=theta_modified,
        distance_to_flow=distance(theta_flow),
        distance_to_modified=None if theta_modified is None else distance(theta_modified),
        gd=gd,
        flow=flow,
        flow_ok=jnp.asarray(flow_ok),
    )


def _check_modified(modified, count: int) -> np.ndarray:
    """`modified` as a boolean mask over the `count` steps (a bool applies to every step)."""
    if isinstance(modified, (bool, np.bool_)):
        return np.full(count, as_bool("modified", modified))
    mask = np.asarray(modified)
    if mask.dtype != np.bool_ or mask.shape != (count,):
        raise ValueError(f"modified must be True, False or {count} booleans (one per lr), got {modified!r}")
    return mask


def _merged_times(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct times of `times` and, for each entry, its index among them. Times equal to
    round-off (k·η_i and k'·η_j with kη_i = k'η_j mathematically) count as one, so that their
    logs stay strictly increasing for `simulate`'s save grid."""
    unique, inverse = np.unique(times, return_inverse=True)
    new_group = np.concatenate([[True], np.diff(unique) > 1e-12 * unique[1:]])
    group = np.cumsum(new_group) - 1
    return unique[new_group], group[inverse.reshape(times.shape)]


def _log(times: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(times)


def _flat(problem: Problem, params) -> Array:
    """θ (trainable leaves flattened) for models with a leading save axis."""
    return eqx.filter_vmap(lambda model: flatten_model(model, problem)[0])(params)
