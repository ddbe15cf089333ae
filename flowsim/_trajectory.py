"""The result of a gradient-flow solve or a discrete GD run."""

import enum
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree


class Status(enum.IntEnum):
    """Why a run stopped. Stored per batch member as an integer array."""

    HORIZON_REACHED = 0
    TARGET_REACHED = 1
    MAX_STEPS = 2
    NON_FINITE = 3
    STEP_SIZE_UNDERFLOW = 4
    SOLVER_FAILURE = 5
    DIVERGED = 6


_SUCCESS = (Status.HORIZON_REACHED, Status.TARGET_REACHED)


class Trajectory(eqx.Module):
    """A trajectory θ(t) saved at increasing times, as returned by ``fs.simulate`` and
    ``fs.gradient_descent``.

    - ``log_t``: natural log of physical time at each save (−inf at t = 0); finite for any
      horizon, including t = e^(10^6), where t itself is not representable.
    - ``params``: the model with a leading time axis on every array leaf.
    - ``final``: the model at the last saved time.
    - ``loss``, ``log_loss``: L and log L at each save (L may underflow to 0; log L does not).
    - ``stats``: ``num_steps``, ``num_accepted_steps``, ``num_rejected_steps``, ``wall_time_s``.
    - ``ok``: the horizon (or ``target_log_loss``) was reached; otherwise ``message`` says
      why, how far the run got, and what to try.
    - ``metadata``: solver, tolerances, horizon, time variable: what the numbers depend on.

    Save points a run did not reach (it stopped at a target or failed) hold the last
    reached state and its time; non-finite states are kept non-finite.
    """

    log_t: Float[Array, " n_save"]
    params: PyTree
    final: PyTree
    loss: Float[Array, " n_save"]
    log_loss: Float[Array, " n_save"]
    stats: dict
    status: Int[Array, ""]
    log_t_reached: Float[Array, ""]
    metadata: tuple = eqx.field(static=True)

    @property
    def ok(self) -> Bool[Array, ""]:
        return (self.status == Status.HORIZON_REACHED) | (self.status == Status.TARGET_REACHED)

    @property
    def info(self) -> dict:
        """``metadata`` as a dict."""
        return dict(self.metadata)

    @property
    def message(self) -> str:
        """Why the run stopped, in words ('' for a run that reached its horizon).

        For a batch (from ``eqx.filter_vmap``), one line per member that did not succeed.
        """
        status = np.atleast_1d(np.asarray(self.status))
        reached = np.atleast_1d(np.asarray(self.log_t_reached))
        batched = np.ndim(self.status) > 0
        lines = []
        for index, (code, log_t) in enumerate(zip(status.ravel(), reached.ravel())):
            text = _describe(Status(int(code)), float(log_t), self.info)
            if text and batched:
                text = f"member {index}: {text}"
            if text:
                lines.append(text)
        return "\n".join(lines)

    def __len__(self) -> int:
        return self.log_t.shape[-1]


def _describe(status: Status, log_t: float, info: dict) -> str:
    where = f"stopped at log t = {log_t:.6g}"
    horizon = info.get("log_t1")
    if horizon is not None:
        where += f" of log t1 = {horizon:.6g}"
    if status == Status.HORIZON_REACHED:
        return ""
    if status == Status.TARGET_REACHED:
        return f"target log loss {info.get('target_log_loss')} reached at log t = {log_t:.6g}"
    if status == Status.MAX_STEPS:
        return (
            f"max_steps = {info.get('max_steps')} reached: {where}. Increase max_steps, "
            "loosen rtol/atol, or (for long classification horizons) use log time and a stiff solver "
            "(solver='kvaerno5'). If most steps were rejected (traj.stats), the gradient is probably "
            "non-finite just past this state (a singular model or overflow)."
        )
    if status == Status.NON_FINITE:
        return (
            f"the state became non-finite (NaN/Inf): {where}. Check the model and data for overflow; "
            "tighter tolerances or a stiff solver may help."
        )
    if status == Status.STEP_SIZE_UNDERFLOW:
        return (
            f"the step size underflowed: {where}. The flow may blow up in finite time, or the problem is stiff "
            "for this solver: try solver='kvaerno5'."
        )
    if status == Status.DIVERGED:
        return (
            f"gradient descent diverged (non-finite loss): {where}. The step lr = {info.get('lr')} likely exceeds "
            "2/λ_max(∇²L) along the path: try a smaller lr."
        )
    return f"the solver failed ({info.get('solver_message', 'unknown reason')}): {where}."


def run_timed(compiled_run, *args) -> Trajectory:
    """Call a compiled run and record its wall time (compilation included) in ``stats``.

    Under an outer jit or vmap the result is traced and no time can be measured: it stays NaN."""
    start = time.perf_counter()
    trajectory = compiled_run(*args)
    if not isinstance(trajectory.log_t, jax.core.Tracer):
        jax.block_until_ready(trajectory)
        wall_time = jnp.asarray(time.perf_counter() - start)
        trajectory = eqx.tree_at(lambda tr: tr.stats["wall_time_s"], trajectory, wall_time)
    return trajectory


def saved_losses(problem, models) -> tuple[Array, Array]:
    """L and log L for a model with a leading save axis."""
    loss = eqx.filter_vmap(problem.loss_value)(models)
    log_loss = eqx.filter_vmap(problem.log_loss_value)(models)
    return loss, log_loss


def log_t_from_log_time(s: Array) -> Array:
    """log t for s = log(1 + t): log(e^s − 1) = s + log(−expm1(−s)), −inf at s = 0."""
    s = jnp.asarray(s)
    safe = jnp.where(s > 0, s, 1.0)
    return jnp.where(s > 0, safe + jnp.log(-jnp.expm1(-safe)), -jnp.inf)


def log_t_from_time(t: Array) -> Array:
    t = jnp.asarray(t)
    safe = jnp.where(t > 0, t, 1.0)
    return jnp.where(t > 0, jnp.log(safe), -jnp.inf)
