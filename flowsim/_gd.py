"""Discrete gradient descent θ_{k+1} = θ_k − η ∇L(θ_k), as a compiled loop."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_int, is_traced
from ._flow import make_field
from ._plan import check_common, check_problem, positive_value
from ._problem import Problem, targets_invalid
from ._trajectory import Status, Trajectory, log_t_from_time, run_timed, saved_losses


def gd_save_steps(steps: int, n_save: int) -> np.ndarray:
    """Step indices 0 = k_0 < k_1 < … < k_m = steps, log-spaced, at most `n_save` of them."""
    count = min(n_save, steps + 1)
    raw = np.concatenate([[0.0], np.geomspace(1.0, steps, count - 1)])
    raw[-1] = steps  # geomspace with one point returns its start, not its end
    ks = np.zeros(count, dtype=np.int64)
    # Rounding a geometric grid repeats small integers: push each index one past the last,
    # and pull the tail back under `steps`, so the grid stays strictly increasing.
    for i in range(1, count):
        ks[i] = max(int(round(raw[i])), ks[i - 1] + 1)
    for i in range(count - 1, 0, -1):
        ks[i] = min(ks[i], steps - (count - 1 - i))
    return ks


def _explicit_save_steps(save_steps, steps) -> np.ndarray:
    """`save_steps` checked: 1-d, integers, ≥ 0, strictly increasing, ending at `steps` (if given)."""
    if is_traced(save_steps):
        raise TypeError("save_steps must be concrete step indices (they fix the save grid), not a traced value")
    grid = np.asarray(save_steps)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"save_steps must be a non-empty 1-d array of step indices, got shape {grid.shape}")
    if grid.dtype.kind not in "iu":
        as_float = grid.astype(np.float64) if grid.dtype.kind == "f" else None
        if as_float is None or not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise TypeError(f"save_steps must be integer step indices, got {grid[:6].tolist()} (dtype {grid.dtype})")
    grid = grid.astype(np.int64)
    if grid[0] < 0:
        raise ValueError(f"save_steps must be ≥ 0, got {int(grid[0])}")
    if np.any(np.diff(grid) <= 0):
        bad = int(np.argmax(np.diff(grid) <= 0))
        raise ValueError(
            f"save_steps must be strictly increasing, got {int(grid[bad])} then {int(grid[bad + 1])} at index {bad}"
        )
    if steps is not None and int(grid[-1]) != steps:
        raise ValueError(f"save_steps must end at steps = {steps} (the run's last step), got {int(grid[-1])}")
    if grid[-1] < 1:
        raise ValueError(f"save_steps must reach at least step 1, got {grid.tolist()}")
    return grid


def gradient_descent(problem: Problem, lr, steps: int | None = None, n_save: int | None = None, *,
                     save_steps=None) -> Trajectory:
    """Plain gradient descent θ_{k+1} = θ_k − η ∇L(θ_k) with step η = `lr`; time t = k·η.

    **Arguments:**

    - `problem`: a `fs.Problem`.
    - `lr`: the step η > 0. A number or a 0-d array; it is a traced value, so a new `lr`
      does not recompile and `eqx.filter_vmap` over `lr` runs several steps at once (a
      traced `lr` that is not positive and finite gives that member `fs.Status.INVALID_INPUT`).
    - `steps`: number of steps K (optional when `save_steps` is given: then its last entry).
    - `n_save`: save at most this many log-spaced steps 0 = k_0 < … < k_m = K (default 100;
      small integers are de-duplicated, so fewer than `n_save` may come back).
    - `save_steps`: the step indices to save, exactly (strictly increasing integers ≥ 0,
      ending at K), instead of `n_save`. The trajectory then has exactly
      `len(save_steps)` states, at times t_j = k_j·η — the grid to line GD up with
      gradient flow at the same times (`fs.analysis.gf_vs_gd`).

    **Returns:**

    The same `Trajectory` type as `simulate`. `ok` is False, and `message` says why, when:

    - the loss becomes non-finite (`fs.Status.DIVERGED`): the run stops there, and saves from
      that point on are NaN (never numbers that look like results);
    - the loss at the last step is more than 10× the loss at step 0 (`fs.Status.LOSS_INCREASED`):
      GD with η above the stability bound 2/λ_max(∇²L) grows the loss geometrically, often for
      many steps before it overflows. The iterates are kept as computed;
    - a traced `lr` is not positive and finite, or traced targets break the loss's rules (labels
      not ±1, cross-entropy rows not probabilities) (`fs.Status.INVALID_INPUT`): under `eqx.filter_vmap` only that member is refused, its
      saves NaN. A concrete `lr` is checked at once and raises a `ValueError`.

    Pure: works under `jax.jit` and `eqx.filter_vmap`.
    """
    # The checks fs.simulate makes too come from its plan (`flowsim._plan`): one bad value, one message.
    check_problem(problem, flow=False)
    lr = positive_value("lr", lr)
    if steps is not None:
        steps = as_int("steps", steps, minimum=1)
    if save_steps is not None:
        if n_save is not None:
            raise ValueError(f"give n_save or save_steps, not both (got n_save={n_save!r} and save_steps)")
        grid = _explicit_save_steps(save_steps, steps)
        steps = int(grid[-1])
    else:
        if steps is None:
            raise ValueError("steps must be given (an integer ≥ 1) unless save_steps is")
        n_save = check_common(problem, 100 if n_save is None else n_save, flow=False)
        grid = gd_save_steps(steps, n_save)
    # lr, t1 and log t1 are values (Trajectory.settings: arrays, one per member under vmap); the rest is static.
    metadata = (
        ("solver", "gradient_descent"),
        ("steps", steps),
        ("num_params", int(make_field(problem, False)[0].shape[-1])),
    )
    segment_lengths = np.diff(np.concatenate([[0], grid]))

    def run(*args):
        # The compiled loop sees only arrays (lr, the grid): metadata is attached outside it,
        # so a new lr or a new grid of the same length does not recompile.
        return dataclasses.replace(_run(*args), metadata=metadata)

    return run_timed(run, problem, lr, jnp.asarray(segment_lengths), jnp.asarray(grid))


# A run whose last loss is more than this factor above its first has not trained: GD past its stability bound.
_GROWTH_FACTOR = 10.0


def _invalid_input(problem: Problem, lr) -> jax.Array:
    """Per-member checks of values that may be traced (batched): the step, and the targets the loss needs."""
    return ~(jnp.isfinite(lr) & (lr > 0)) | targets_invalid(problem)


def _loss_increased(log_loss_start, log_loss_end) -> jax.Array:
    """log L_K > log L_0 + log `_GROWTH_FACTOR`. Round-off near a minimiser moves L by a few ulps of the
    residual (a factor of a few in L), not by the factor: no floor is needed."""
    return log_loss_end > log_loss_start + jnp.log(_GROWTH_FACTOR)


def _gd_loop(problem, lr, segment_lengths, save_steps) -> Trajectory:
    invalid = _invalid_input(problem, lr)
    theta0, field = make_field(problem, log_time=False)

    def loss_is_finite(predictions):
        return jnp.isfinite(problem.loss.value(predictions, problem.y))

    def step(state):
        theta, k, stopped_at = state
        grad, predictions = field.scaled_gradient(theta, 0.0)
        new_theta = theta - lr * grad
        # The loss at θ_k comes free with the gradient; a non-finite value, or a
        # non-finite update, ends the run at step k.
        diverged = ~(loss_is_finite(predictions) & jnp.all(jnp.isfinite(new_theta)))
        theta = jnp.where(diverged, theta, new_theta)
        stopped_at = jnp.where(diverged, k, stopped_at)
        return theta, k + jnp.where(diverged, 0, 1), stopped_at

    def segment(state, length):
        theta, k, stopped_at = state
        end = k + length

        def cond(inner):
            return (inner[1] < end) & (inner[2] < 0) & ~invalid

        state = jax.lax.while_loop(cond, step, (theta, k, stopped_at))
        return state, state

    init = (theta0, jnp.asarray(0, dtype=jnp.int64), jnp.asarray(-1, dtype=jnp.int64))
    (_, _, stopped_at), (thetas, _, stops) = jax.lax.scan(segment, init, segment_lengths)
    diverged = stopped_at >= 0
    # Saves at or after the divergence are NaN: a diverged run returns no numbers that look like results.
    # A member refused before running has no states either.
    no_state = (stops >= 0) | invalid
    thetas = jnp.where(no_state[:, None], jnp.nan, thetas)
    models = eqx.filter_vmap(field.model)(thetas)
    loss, log_loss = saved_losses(problem, models)
    log_t = log_t_from_time(save_steps * lr)
    increased = _loss_increased(field.log_loss(theta0), log_loss[-1])
    status = jnp.where(increased, Status.LOSS_INCREASED, Status.HORIZON_REACHED)
    status = jnp.where(diverged, Status.DIVERGED, status)
    status = jnp.where(invalid, Status.INVALID_INPUT, status).astype(jnp.int32)
    num_steps = jnp.where(invalid, 0, jnp.where(diverged, stopped_at, save_steps[-1]))
    stats = {
        "num_steps": num_steps,
        "num_accepted_steps": num_steps,
        "num_rejected_steps": jnp.asarray(0),
        "wall_time_s": jnp.asarray(jnp.nan),
    }
    return Trajectory(
        log_t=log_t,
        params=models,
        final=field.model(thetas[-1]),
        loss=loss,
        log_loss=log_loss,
        stats=stats,
        status=status,
        log_t_reached=log_t_from_time(num_steps * lr),
        metadata=(),
        settings={"lr": lr, "t1": lr * save_steps[-1], "log_t1": jnp.log(lr * save_steps[-1])},
    )


_run = eqx.filter_jit(_gd_loop)


def gradient_descent_batch(problem: Problem, lrs, save_steps) -> Trajectory:
    """GD for several steps η_i, member i saved at its own step indices `save_steps[i]`.

    Private: `fs.analysis.gf_vs_gd` lines GD up with the flow through it. `lrs`: shape (r,);
    `save_steps`: integer array (r, m), each row as `gradient_descent`'s `save_steps`.
    Returns a Trajectory with a leading axis of length r. The members run one after the other
    through the same compiled loop (`lr` and the grid are traced: one compilation); a vmapped
    loop would run every member for as many steps as the longest (η_0/η_i times more work).
    """
    check_problem(problem, flow=False)
    lrs = np.asarray(lrs, dtype=np.float64)
    grid = np.asarray(save_steps)
    if lrs.ndim != 1 or grid.ndim != 2 or grid.shape[0] != lrs.shape[0]:
        raise ValueError(f"lrs must have shape (r,) and save_steps (r, m); got {lrs.shape} and {grid.shape}")
    runs = [gradient_descent(problem, float(lr), save_steps=row) for lr, row in zip(lrs, grid)]
    metadata = (
        ("solver", "gradient_descent"),
        ("steps", tuple(int(k) for k in grid[:, -1])),
        ("num_params", runs[0].info["num_params"]),
    )
    batch = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[dataclasses.replace(run, metadata=())
                                                                      for run in runs])
    return dataclasses.replace(batch, metadata=metadata)
