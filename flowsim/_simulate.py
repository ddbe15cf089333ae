"""``simulate``: gradient flow θ' = −∇L(θ) solved with Diffrax, in linear or log time."""

import math
import numbers
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from ._flow import ModifiedFlow, base_problem, make_field, time_from_log_t
from ._problem import Problem, is_concrete
from ._progress import LogTimeProgressMeter
from ._solvers import (
    LINEAR_SOLVER_NAMES,
    SOLVER_NAMES,
    make_solver,
    make_terms,
    resolve_linear_solver,
    resolve_solver_name,
)
from ._trajectory import Status, Trajectory, log_t_from_log_time, log_t_from_time, run_timed, saved_losses

# exp(709.78) is the largest float64; beyond it t is not representable and only log time works.
_MAX_LINEAR_LOG_T = 700.0


class _Config(NamedTuple):
    solver: str
    linear_solver: str
    log_time: bool
    rtol: float
    atol: float
    max_steps: int
    progress: bool
    has_target: bool
    time1: float


def _is_real_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_finite(name: str, value) -> float:
    if not _is_real_number(value) and not (isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not is_concrete(value):
        raise TypeError(f"{name} must be a concrete number (it fixes the save grid), not a traced value")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value}")
    return int(value)


def _save_grid(log_t1: float, n_save: int, save_log_t) -> np.ndarray:
    """log t of the save points before the final state: t = 0, then log-spaced in t."""
    if save_log_t is not None:
        grid = np.asarray(save_log_t, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError(f"save_log_t must be a non-empty 1-d array of log times, got shape {grid.shape}")
        if np.any(np.isnan(grid)) or np.any(grid == np.inf):
            raise ValueError("save_log_t must not contain NaN or +inf (use -inf for t = 0)")
        if np.any(np.diff(grid) <= 0):
            raise ValueError("save_log_t must be strictly increasing")
        if grid[-1] > log_t1:
            raise ValueError(f"save_log_t goes to {grid[-1]}, beyond the horizon log t1 = {log_t1}")
        return grid
    # Three decades below min(1, t1), up to the horizon: uniform in log t.
    log_t_lo = min(0.0, log_t1) - 3.0 * math.log(10.0)
    interior = np.linspace(log_t_lo, log_t1, n_save - 1)[:-1]
    return np.concatenate([[-np.inf], interior])


def simulate(
    problem: Problem,
    t1: float | None = None,
    *,
    log_t1: float | None = None,
    solver: str = "auto",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    n_save: int = 100,
    save_log_t=None,
    max_steps: int = 100_000,
    progress: bool = False,
    target_log_loss: float | None = None,
    time: str = "auto",
    linear_solver: str = "auto",
) -> Trajectory:
    """Solve the gradient flow θ'(t) = −∇L(θ(t)) from the problem's model to a horizon.

    Give exactly one horizon: ``t1`` (physical time; integrated in linear time) or
    ``log_t1`` (t1 = e^{log_t1}; integrated in log time s = log(1 + t), where
    dθ/ds = −e^s ∇L(θ) — science.md §1 — so log_t1 = 1e6 works and t is never formed).
    ``time="linear" | "log"`` overrides the choice.

    **Keyword options:**

    - ``solver``: ``"auto"`` (Kvaerno5 in log time, where the flow is stiff; Tsit5 in linear
      time), ``"tsit5" | "dopri5" | "dopri8"`` (explicit) or ``"kvaerno3" | "kvaerno4" |
      "kvaerno5" | "kencarp4" | "kencarp5"`` (implicit: full Newton on the exact Jacobian of
      the field; dense below 512 parameters, GMRES on Hessian–vector products above, or
      as ``linear_solver="dense" | "krylov"`` says).
    - ``rtol``, ``atol``: step-size controller tolerances, also used by Newton.
    - ``n_save``: number of saved states: t = 0, log-spaced times, and the final state.
      ``save_log_t`` gives the save times (log t, increasing) explicitly instead.
    - ``max_steps``: solver steps allowed before giving up (``traj.ok`` is then False).
    - ``target_log_loss``: stop as soon as log L(θ) falls to this value (the crossing time is
      located by a root find on the dense solution). Training to accuracy ε is
      ``target_log_loss=log ε``.
    - ``progress``: show a progress bar in log t (works under jit and vmap).

    Pure: works under ``jax.jit`` and ``eqx.filter_vmap`` (one compiled solve for a batch;
    each member keeps its own step sizes and its own ``ok``).
    """
    if not isinstance(problem, (Problem, ModifiedFlow)):
        raise TypeError(f"problem must be a flowsim.Problem (or fs.modified_flow(...)), got {type(problem).__name__}")
    if (t1 is None) == (log_t1 is None):
        raise ValueError("give exactly one horizon: t1 (physical time) or log_t1 (t1 = e^log_t1), "
                         f"got t1={t1!r}, log_t1={log_t1!r}")
    if t1 is not None:
        t1 = _positive_finite("t1", t1)
        log_horizon = math.log(t1)
    else:
        if not _is_real_number(log_t1) or not math.isfinite(float(log_t1)):
            raise ValueError(f"log_t1 must be a finite real number, got {log_t1!r}")
        log_horizon = float(log_t1)
    if time not in ("auto", "linear", "log"):
        raise ValueError(f"time must be 'auto', 'linear' or 'log', got {time!r}")
    log_time = (log_t1 is not None) if time == "auto" else (time == "log")
    if not log_time and log_horizon > _MAX_LINEAR_LOG_T:
        raise ValueError(
            f"log_t1 = {log_horizon} is beyond what linear time can represent (t = e^{log_horizon} overflows "
            f"past log t ≈ {_MAX_LINEAR_LOG_T:g}); integrate in log time (time='log' or the default)"
        )
    if solver not in SOLVER_NAMES:
        raise ValueError(f"unknown solver {solver!r}; valid solvers are {list(SOLVER_NAMES)}")
    if linear_solver not in LINEAR_SOLVER_NAMES:
        raise ValueError(f"unknown linear_solver {linear_solver!r}; valid: {list(LINEAR_SOLVER_NAMES)}")
    rtol = _positive_finite("rtol", rtol)
    atol = _positive_finite("atol", atol)
    n_save = _positive_int("n_save", n_save, minimum=2)
    max_steps = _positive_int("max_steps", max_steps)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if target_log_loss is not None and (
        not _is_real_number(target_log_loss) or not math.isfinite(float(target_log_loss))
    ):
        raise ValueError(f"target_log_loss must be a finite real number (log ε), got {target_log_loss!r}")
    grid_log_t = _save_grid(log_horizon, n_save, save_log_t)

    theta0, _ = make_field(problem, log_time)
    solver_name = resolve_solver_name(solver, log_time)
    config = _Config(
        solver=solver_name,
        linear_solver=resolve_linear_solver(linear_solver, theta0.shape[-1]),
        log_time=log_time,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        progress=progress,
        has_target=target_log_loss is not None,
        time1=float(time_from_log_t(log_horizon, log_time)),
    )
    metadata = (
        ("solver", solver_name),
        ("linear_solver", config.linear_solver if solver_name not in ("tsit5", "dopri5", "dopri8") else None),
        ("time", "log" if log_time else "linear"),
        ("rtol", rtol),
        ("atol", atol),
        ("t1", t1),
        ("log_t1", log_horizon),
        ("max_steps", max_steps),
        ("target_log_loss", None if target_log_loss is None else float(target_log_loss)),
        ("num_params", int(theta0.shape[-1])),
    )
    save_times = time_from_log_t(grid_log_t, log_time)
    target = jnp.asarray(0.0 if target_log_loss is None else float(target_log_loss))

    return run_timed(_solve, problem, save_times, target, config, metadata)


class _TimeBisection(optx.Bisection):
    """Bisection that stops when the time interval is below atol + rtol·|t| (optimistix's also
    asks |f| < atol, which fails where log L is steep in s although the crossing is located)."""

    def terminate(self, fn, y, args, options, state, tags):
        del fn, args, options, tags
        return jnp.abs(state.lower - state.upper) < self.atol + self.rtol * jnp.abs(y), optx.RESULTS.successful


@eqx.filter_jit
def _solve(problem: Problem, save_times, target, config: _Config, metadata) -> Trajectory:
    theta0, field = make_field(problem, config.log_time)
    problem = base_problem(problem)
    solver = make_solver(config.solver, config.rtol, config.atol, config.linear_solver)
    terms = make_terms(config.solver, field)
    time1 = jnp.asarray(config.time1)

    event = None
    if config.has_target:
        # An already-trained start (log L ≤ target at t = 0) has no crossing to find:
        # then the horizon is collapsed to t = 0.
        already = field.log_loss(theta0) <= target
        time1 = jnp.where(already, 0.0, time1)
        event = diffrax.Event(
            lambda t, y, args, **kwargs: field.log_loss(y) - target,
            # Bisection on the step's time interval: Newton's test |log L − target| < atol cannot pass
            # where log L falls steeply in s (its resolution there is slope × eps·s), and the root
            # find then failed although the target was crossed.
            root_finder=_TimeBisection(rtol=config.rtol, atol=config.atol),
            direction=False,
        )

    meter = (
        LogTimeProgressMeter(log_time=config.log_time, time0=0.0, time1=config.time1)
        if config.progress
        else diffrax.NoProgressMeter()
    )
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0=0.0,
        t1=time1,
        dt0=None,
        y0=theta0,
        saveat=diffrax.SaveAt(ts=jnp.minimum(save_times, time1), t1=True),
        stepsize_controller=diffrax.PIDController(rtol=config.rtol, atol=config.atol),
        max_steps=config.max_steps,
        event=event,
        throw=False,
        progress_meter=meter,
    )

    ts, ys = solution.ts, solution.ys
    # Diffrax writes the final (t1 or event) state into the next free save slot and leaves
    # the slots it did not reach at inf, so the final state is the last finite slot.
    reached = jnp.isfinite(ts)
    last = jnp.maximum(jnp.sum(reached) - 1, 0)
    final_time, final_theta = ts[last], ys[last]
    # Save points beyond where the run stopped hold the last reached state at its time.
    ts = jnp.where(reached, ts, final_time)
    ys = jnp.where(reached[:, None], ys, final_theta[None, :])

    result = solution.result
    status = jnp.select(
        [
            result == diffrax.RESULTS.successful,
            result == diffrax.RESULTS.event_occurred,
            result == diffrax.RESULTS.max_steps_reached,
            result == diffrax.RESULTS.dt_min_reached,
        ],
        [Status.HORIZON_REACHED, Status.TARGET_REACHED, Status.MAX_STEPS, Status.STEP_SIZE_UNDERFLOW],
        Status.SOLVER_FAILURE,
    )
    if config.has_target:
        status = jnp.where(already, Status.TARGET_REACHED, status)
    status = jnp.where(jnp.all(jnp.isfinite(final_theta)), status, Status.NON_FINITE)

    log_t = log_t_from_log_time(ts) if config.log_time else log_t_from_time(ts)
    models = eqx.filter_vmap(field.model)(ys)
    loss, log_loss = saved_losses(problem, models)
    stats = {
        "num_steps": solution.stats["num_steps"],
        "num_accepted_steps": solution.stats["num_accepted_steps"],
        "num_rejected_steps": solution.stats["num_rejected_steps"],
        "wall_time_s": jnp.asarray(jnp.nan),
    }
    return Trajectory(
        log_t=log_t,
        params=models,
        final=field.model(final_theta),
        loss=loss,
        log_loss=log_loss,
        stats=stats,
        status=status.astype(jnp.int32),
        log_t_reached=log_t[-1],
        metadata=metadata,
    )
