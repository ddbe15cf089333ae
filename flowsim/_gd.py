"""Discrete gradient descent θ_{k+1} = θ_k − η ∇L(θ_k), as a compiled loop."""

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._flow import make_field
from ._problem import Problem
from ._trajectory import Status, Trajectory, log_t_from_time, run_timed, saved_losses


def gd_save_steps(steps: int, n_save: int) -> np.ndarray:
    """Step indices 0 = k_0 < k_1 < … < k_m = steps, log-spaced, at most ``n_save`` of them."""
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


def gradient_descent(problem: Problem, lr: float, steps: int, n_save: int = 100) -> Trajectory:
    """Plain gradient descent with step ``lr`` for ``steps`` steps; t = k·lr.

    Returns the same ``Trajectory`` type as ``simulate``, saved at log-spaced steps
    (k = 0, …, steps). If the loss becomes non-finite the run stops there: ``ok`` is False,
    ``message`` gives the step, and saves from that point on are NaN (never numbers that
    look like results). Pure: works under ``jax.jit`` and ``eqx.filter_vmap``.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a flowsim.Problem, got {type(problem).__name__}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a positive real number, got {lr!r}")
    if not math.isfinite(float(lr)) or lr <= 0:
        raise ValueError(f"lr must be positive and finite, got {lr}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if isinstance(n_save, bool) or not isinstance(n_save, numbers.Integral) or n_save < 2:
        raise ValueError(f"n_save must be an integer ≥ 2, got {n_save!r}")
    save_steps = gd_save_steps(int(steps), int(n_save))
    metadata = (
        ("solver", "gradient_descent"),
        ("lr", float(lr)),
        ("steps", int(steps)),
        ("t1", float(lr) * int(steps)),
        ("log_t1", math.log(float(lr) * int(steps))),
        ("num_params", int(make_field(problem, False)[0].shape[-1])),
    )
    return run_timed(_run, problem, jnp.asarray(float(lr)), jnp.asarray(np.diff(save_steps)),
                     jnp.asarray(save_steps), metadata)


@eqx.filter_jit
def _run(problem, lr, segment_lengths, save_steps, metadata) -> Trajectory:
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
            return (inner[1] < end) & (inner[2] < 0)

        state = jax.lax.while_loop(cond, step, (theta, k, stopped_at))
        return state, state

    init = (theta0, jnp.asarray(0, dtype=jnp.int64), jnp.asarray(-1, dtype=jnp.int64))
    (theta_end, _, stopped_at), (thetas, _, stops) = jax.lax.scan(segment, init, segment_lengths)
    thetas = jnp.concatenate([theta0[None], thetas])
    stops = jnp.concatenate([jnp.asarray([-1]), stops])
    diverged = stopped_at >= 0
    # Saves at or after the divergence are NaN: a diverged run returns no numbers that look like results.
    invalid = stops >= 0
    thetas = jnp.where(invalid[:, None], jnp.nan, thetas)
    models = eqx.filter_vmap(field.model)(thetas)
    loss, log_loss = saved_losses(problem, models)
    log_t = log_t_from_time(save_steps * lr)
    status = jnp.where(diverged, Status.DIVERGED, Status.HORIZON_REACHED).astype(jnp.int32)
    num_steps = jnp.where(diverged, stopped_at, save_steps[-1])
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
        metadata=metadata,
    )
