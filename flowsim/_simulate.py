"""``simulate``: gradient flow θ' = −∇L(θ) solved with Diffrax, in linear or log time.

Structure (Diffrax's habit of a pure step over explicit state): ``_segment`` is ONE compiled
``diffeqsolve`` from a ``_Carry`` (state, time, next step size, the saves filled so far) towards the
horizon, stopping after at most ``max_steps`` solver steps. A fixed solver under ``jit``/``vmap`` is
one segment. Outside ``jit`` the same segment is chained in Python (``_auto.drive``) for
``solver="auto"`` (which switches solvers on measured evidence), progress in log t, and
checkpoints. Tolerances, horizons and the target are traced values: new values do not recompile.
"""

import dataclasses
import math
import numbers
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_bool, as_int, is_traced
from ._flow import ModifiedFlow, base_problem, make_field, time_from_log_t
from ._nonsmooth import AbstractNonsmoothModel, kink_crossings, kink_statistics
from ._problem import Problem
from ._solvers import (
    EXPLICIT_SOLVERS,
    LINEAR_SOLVER_NAMES,
    SOLVER_NAMES,
    RecordingController,
    TimeBisection,
    make_solver,
    make_terms,
    resolve_linear_solver,
)
from ._trajectory import Status, Trajectory, log_t_from_log_time, log_t_from_time, saved_losses

# exp(709.78) is the largest float64; beyond it t is not representable and only log time works.
_MAX_LINEAR_LOG_T = 700.0


class _Static(NamedTuple):
    """What fixes the compiled program: structure, never values."""

    solver: str
    linear_solver: str
    log_time: bool
    max_steps: int
    progress: bool
    has_target: bool
    solvers: tuple  # every solver this solve may use: the carry holds a state for each


class Settings(eqx.Module):
    """The values a solve depends on, as (possibly traced, possibly batched) arrays."""

    rtol: jax.Array
    atol: jax.Array
    log_t1: jax.Array
    time1: jax.Array  # the horizon in the solver's time variable (t or s = log(1 + t))
    target_log_loss: jax.Array  # NaN when there is no target


class _Carry(eqx.Module):
    """The state between segments: everything needed to continue a solve exactly."""

    theta: jax.Array
    time: jax.Array
    dt: jax.Array  # the step size the controller proposed next (NaN before the first step)
    saves: jax.Array  # (n_grid, p)
    save_time: jax.Array  # (n_grid,) the time each save holds
    filled: jax.Array  # (n_grid,) bool
    num_steps: jax.Array
    num_accepted_steps: jax.Array
    num_rejected_steps: jax.Array
    status: jax.Array  # Status, or -1 while the solve may continue
    # Per solver name: (solver state, controller state, made_jump) and whether to start it afresh
    # (Diffrax's own initial step and state) instead of continuing from them. Held for every solver
    # the solve may use, so the carry's structure never changes and each solver compiles once.
    solver_states: dict
    fresh: dict


def _is_real_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)) or (
        isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0
        and np.issubdtype(np.result_type(value), np.number) and not np.issubdtype(np.result_type(value), np.bool_)
    )


def _horizon(name: str, value, *, positive: bool):
    """A horizon: checked now when concrete, returned as a float64 array either way."""
    if not _is_real_number(value) and not is_traced(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if is_traced(value):
        return jnp.asarray(value, dtype=jnp.float64)
    number = float(value)
    if positive and not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be positive and finite, got {number}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return jnp.asarray(number, dtype=jnp.float64)


def _tolerance(name: str, value):
    if is_traced(value):
        return jnp.asarray(value, dtype=jnp.float64)
    if not _is_real_number(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be positive and finite, got {number}")
    return jnp.asarray(number, dtype=jnp.float64)


def save_grid(log_t1, n_save: int, log_time: bool):
    """Default save times (log t) before the final state: t = 0, then n_save − 2 interior points.

    Linear time: uniform in log t from three decades below min(1, t1). Log time: uniform in
    asinh(log t), i.e. uniform in log t near t = 1 and log-spaced in log t for long horizons, so
    ``log_t1=1e5`` saves every decade of log t, not only t ≤ 10⁻³ and t ≥ e^329."""
    log_t1 = jnp.asarray(log_t1, dtype=jnp.float64)
    low = jnp.minimum(0.0, log_t1) - 3.0 * math.log(10.0)
    fractions = jnp.linspace(0.0, 1.0, n_save - 1)[:-1]
    if log_time:
        interior = jnp.sinh(jnp.arcsinh(low) + fractions * (jnp.arcsinh(log_t1) - jnp.arcsinh(low)))
    else:
        interior = low + fractions * (log_t1 - low)
    return jnp.concatenate([jnp.asarray([-jnp.inf]), interior])


def _explicit_grid(save_log_t, log_t1) -> jax.Array:
    if is_traced(save_log_t):
        return jnp.asarray(save_log_t, dtype=jnp.float64)
    grid = np.asarray(save_log_t, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"save_log_t must be a non-empty 1-d array of log times, got shape {grid.shape}")
    if np.any(np.isnan(grid)) or np.any(grid == np.inf):
        raise ValueError("save_log_t must not contain NaN or +inf (use -inf for t = 0)")
    if np.any(np.diff(grid) <= 0):
        raise ValueError("save_log_t must be strictly increasing")
    if not is_traced(log_t1) and grid[-1] > float(log_t1):
        raise ValueError(f"save_log_t goes to {grid[-1]}, beyond the horizon log t1 = {float(log_t1)}")
    return jnp.asarray(grid)


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
    checkpoint=None,
    checkpoint_every_s: float = 5.0,
) -> Trajectory:
    """Solve the gradient flow θ'(t) = −∇L(θ(t)) from the problem's model to a horizon.

    **Arguments:**

    - ``problem``: a ``fs.Problem``, or ``fs.modified_flow(problem, lr)``.
    - ``t1`` or ``log_t1`` (exactly one): the horizon in physical time (integrated in linear
      time) or t1 = e^{log_t1} (integrated in log time s = log(1 + t), where
      dθ/ds = −e^s ∇L(θ), so log_t1 = 1e6 works and t is never formed). ``time="linear" |
      "log"`` overrides the choice.
    - ``solver``: ``"auto"`` (the default: starts explicit, measures stiffness along the solve and
      switches between Tsit5 and Kvaerno5 in segments where the measured cost says so;
      ``traj.info["auto"]`` records what ran — under ``jit``/``vmap`` no measurement is possible
      and it is Kvaerno5 in log time, Tsit5 in linear time), ``"tsit5" | "dopri5" | "dopri8"``
      (explicit) or ``"kvaerno3" | "kvaerno4" | "kvaerno5" | "kencarp4" | "kencarp5"`` (implicit:
      Newton on the exact Jacobian of the field; dense below 512 parameters, inexact GMRES on
      Hessian–vector products above, or as ``linear_solver="dense" | "krylov"`` says).
    - ``rtol``, ``atol``: step-size controller tolerances (Newton uses 100× these).
    - ``n_save``: number of saved states: t = 0, interior times, and the final state.
      ``save_log_t`` gives the save times (log t, increasing) explicitly instead.
    - ``max_steps``: solver steps allowed before giving up (``traj.ok`` is then False).
    - ``target_log_loss``: stop as soon as log L(θ) falls to this value (training to accuracy
      ε is ``target_log_loss=log ε``). A target at or above the starting log loss is refused.
    - ``progress``: show a progress bar in log t.
    - ``checkpoint``: a file path (outside ``jit``/``vmap`` only). The solve runs in segments and
      writes its state there atomically at most every ``checkpoint_every_s`` seconds; calling
      ``simulate`` again with the same arguments resumes from it
      (``traj.info["resumed_from_log_t"]``).

    Tolerances, horizons and ``target_log_loss`` are values, not compile-time constants: new
    values do not recompile, and ``eqx.filter_vmap`` over any of them works. Pure: works under
    ``jax.jit`` and ``eqx.filter_vmap`` (one compiled solve for a batch; each member keeps its own
    step sizes, status and message).

    **Returns:** a ``fs.Trajectory``.
    """
    if not isinstance(problem, (Problem, ModifiedFlow)):
        raise TypeError(f"problem must be a flowsim.Problem (or fs.modified_flow(...)), got {type(problem).__name__}")
    if (t1 is None) == (log_t1 is None):
        raise ValueError("give exactly one horizon: t1 (physical time) or log_t1 (t1 = e^log_t1), "
                         f"got t1={t1!r}, log_t1={log_t1!r}")
    if t1 is not None:
        t1 = _horizon("t1", t1, positive=True)
        log_horizon = jnp.log(t1)
    else:
        if not is_traced(log_t1) and not (_is_real_number(log_t1) and math.isfinite(float(log_t1))):
            raise ValueError(f"log_t1 must be a finite real number, got {log_t1!r}")
        log_horizon = _horizon("log_t1", log_t1, positive=False)
    if time not in ("auto", "linear", "log"):
        raise ValueError(f"time must be 'auto', 'linear' or 'log', got {time!r}")
    log_time = (log_t1 is not None) if time == "auto" else (time == "log")
    if not log_time and not is_traced(log_horizon) and float(log_horizon) > _MAX_LINEAR_LOG_T:
        raise ValueError(
            f"log_t1 = {float(log_horizon)} is beyond what linear time can represent (t = e^{float(log_horizon)} "
            f"overflows past log t ≈ {_MAX_LINEAR_LOG_T:g}); integrate in log time (time='log' or the default)"
        )
    if not isinstance(solver, str) or solver not in SOLVER_NAMES:
        raise ValueError(f"unknown solver {solver!r}; valid solvers are {list(SOLVER_NAMES)}")
    if not isinstance(linear_solver, str) or linear_solver not in LINEAR_SOLVER_NAMES:
        raise ValueError(f"unknown linear_solver {linear_solver!r}; valid: {list(LINEAR_SOLVER_NAMES)}")
    if isinstance(problem, ModifiedFlow) and log_time:
        raise ValueError("fs.modified_flow is integrated in linear time only: give t1 (not log_t1), or time='linear'")
    rtol = _tolerance("rtol", rtol)
    atol = _tolerance("atol", atol)
    n_save = as_int("n_save", n_save, minimum=2)
    max_steps = as_int("max_steps", max_steps)
    progress = as_bool("progress", progress)
    has_target = target_log_loss is not None
    if has_target:
        if not is_traced(target_log_loss) and not (
            _is_real_number(target_log_loss) and math.isfinite(float(target_log_loss))
        ):
            raise ValueError(f"target_log_loss must be a finite real number (log ε), got {target_log_loss!r}")
        target = jnp.asarray(target_log_loss, dtype=jnp.float64)
    else:
        target = jnp.asarray(jnp.nan)
    grid_log_t = save_grid(log_horizon, n_save, log_time) if save_log_t is None else _explicit_grid(save_log_t, log_horizon)

    theta0, field = make_field(problem, log_time)
    inner = base_problem(problem)
    traced = any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves((inner, rtol, atol, log_horizon, target,
                                                                         grid_log_t)))
    if has_target and not traced:
        start = float(field.log_loss(theta0))
        if float(target) >= start:
            hint = ""
            if float(target) > 0 and float(target) < 1:
                hint = f" A target in (0, 1) looks like ε itself: did you mean log ε = {math.log(float(target)):.6g}?"
            raise ValueError(
                f"target_log_loss = {float(target):.6g} is not below the starting log loss {start:.6g}, so the run "
                f"would stop at t = 0.{hint}"
            )
    if t1 is not None and not log_time:
        time1 = t1
    else:
        time1 = time_from_log_t(log_horizon, log_time)
    settings = Settings(rtol=rtol, atol=atol, log_t1=log_horizon, time1=time1, target_log_loss=target)
    num_params = int(theta0.shape[-1])
    linear = resolve_linear_solver(linear_solver, num_params)
    metadata = dict(
        time="log" if log_time else "linear",
        max_steps=max_steps,
        num_params=num_params,
        t1=None if t1 is None or is_traced(t1) else float(t1),
    )
    save_times = time_from_log_t(grid_log_t, log_time)
    if traced and checkpoint is not None:
        raise ValueError("checkpoint needs concrete arguments: it cannot be used under jax.jit or eqx.filter_vmap")

    from ._auto import drive  # the segment drivers (Python loops): eager only

    if traced:
        name = solver if solver != "auto" else ("kvaerno5" if log_time else "tsit5")
        metadata["auto"] = "under jit/vmap: fixed rule (no measurement possible)" if solver == "auto" else None
        static = _Static(name, linear, log_time, max_steps, progress, has_target, solvers=(name,))
        carry = init_carry(problem, save_times, settings, static)
        carry = segment(problem, carry, save_times, settings, settings.time1, static)
        return finish(problem, carry, save_times, settings, static, metadata, linear)
    return drive(
        problem, save_times, settings, metadata,
        solver=solver, linear_solver=linear, log_time=log_time, max_steps=max_steps, progress=progress,
        has_target=has_target, checkpoint=checkpoint, checkpoint_every_s=checkpoint_every_s,
    )


def _invalid_input(problem: Problem, settings: Settings) -> jax.Array:
    """Per-member checks of values that may have been traced (batched), as one bool."""
    bad = ~(jnp.isfinite(settings.rtol) & (settings.rtol > 0) & jnp.isfinite(settings.atol) & (settings.atol > 0))
    bad = bad | ~jnp.isfinite(settings.log_t1)
    if problem.loss.is_classification:
        bad = bad | ~jnp.all((problem.y == 1.0) | (problem.y == -1.0))
    return bad


@eqx.filter_jit
def init_carry(problem, save_times, settings: Settings, static: _Static) -> _Carry:
    theta0, field = make_field(problem, static.log_time, settings.rtol, settings.atol)
    inner = base_problem(problem)
    status = jnp.asarray(-1, dtype=jnp.int32)
    status = jnp.where(_invalid_input(inner, settings), Status.INVALID_INPUT, status)
    if static.has_target:
        above = ~(field.log_loss(theta0) > settings.target_log_loss)
        status = jnp.where((status < 0) & above, Status.TARGET_AT_START, status)
    n_grid = save_times.shape[0]
    zero = jnp.asarray(0, dtype=jnp.int64)
    states = {name: _fresh_states(name, field, theta0, jnp.asarray(0.0), settings.time1, settings, static)[:3]
              for name in static.solvers}
    return _strongly_typed(_Carry(
        theta=theta0,
        time=jnp.asarray(0.0),
        dt=jnp.asarray(jnp.nan),
        saves=jnp.zeros((n_grid, theta0.shape[0]), theta0.dtype),
        save_time=jnp.zeros(n_grid),
        filled=jnp.zeros(n_grid, dtype=bool),
        num_steps=zero,
        num_accepted_steps=zero,
        num_rejected_steps=zero,
        status=status.astype(jnp.int32),
        solver_states=states,
        fresh={name: jnp.asarray(True) for name in static.solvers},
    ))


def _strongly_typed(tree):
    """Arrays with no weak types: a carry that comes back from a segment then has exactly the types of
    the one that went in, and chained segments (auto, progress, checkpoints) compile once. (Diffrax's
    PID controller starts with a Python ``False`` for ``at_dtmin`` and returns an array.)"""

    def strong(leaf):
        if eqx.is_array(leaf):
            return jnp.asarray(leaf, dtype=leaf.dtype)
        if isinstance(leaf, (bool, int, float)):
            return jnp.asarray(leaf, dtype=jnp.result_type(type(leaf)))
        return leaf

    return jax.tree_util.tree_map(strong, tree)


# A PI controller for ReLU models (Hairer & Wanner's β = 0.4/k, α = 0.7/k ≈ Diffrax's pcoeff = 0.4,
# icoeff = 0.3): the field jumps where a pair crosses its kink, and the default I-controller
# overshoots after each jump. Measured on the Frei et al. net of benchmarks/relu.py (to log t = 3): 6,848 steps
# with 73% rejected → 4,698 with 45%, the same solution to 7 digits. Smooth models keep the default.
_NONSMOOTH_PCOEFF, _NONSMOOTH_ICOEFF = 0.4, 0.3


def _controller(problem, settings: Settings):
    if isinstance(base_problem(problem).model, AbstractNonsmoothModel):
        pid = diffrax.PIDController(rtol=settings.rtol, atol=settings.atol, pcoeff=_NONSMOOTH_PCOEFF,
                                    icoeff=_NONSMOOTH_ICOEFF)
    else:
        pid = diffrax.PIDController(rtol=settings.rtol, atol=settings.atol)
    return RecordingController(pid)


def _fresh_states(name, field, theta, time0, time1, settings: Settings, static: "_Static"):
    """(solver state, controller state, made_jump, first step) of a fresh start of solver ``name`` at
    (time0, θ), exactly as ``diffeqsolve`` would make them: Diffrax's public ``init`` methods."""
    solver = make_solver(name, settings.rtol, settings.atol, static.linear_solver)
    terms = make_terms(name, field)
    controller = _controller(field.problem, settings).wrap(1)
    tnext, controller_state = controller.init(terms, time0, time1, theta, None, None, solver.func,
                                              solver.error_order(terms))
    tnext = jnp.minimum(tnext, time1)
    solver_state = solver.init(terms, time0, tnext, theta, None)
    return solver_state, controller_state, jnp.asarray(False), tnext - time0


def _status_from_result(result) -> jax.Array:
    return jnp.select(
        [
            result == diffrax.RESULTS.successful,
            result == diffrax.RESULTS.event_occurred,
            result == diffrax.RESULTS.max_steps_reached,
            result == diffrax.RESULTS.dt_min_reached,
        ],
        [Status.HORIZON_REACHED, Status.TARGET_REACHED, Status.MAX_STEPS, Status.STEP_SIZE_UNDERFLOW],
        Status.SOLVER_FAILURE,
    ).astype(jnp.int32)


@eqx.filter_jit
def segment(problem, carry: _Carry, save_times, settings: Settings, end_time, static: _Static) -> _Carry:
    """At most ``static.max_steps`` solver steps from ``carry`` towards ``end_time`` (≤ the horizon).

    Returns the new carry. ``status`` stays −1 when the segment ended at its step budget or at an
    ``end_time`` short of the horizon (the solve may continue); otherwise it says why it stopped."""
    _, field = make_field(problem, static.log_time, settings.rtol, settings.atol)
    solver = make_solver(static.solver, settings.rtol, settings.atol, static.linear_solver)
    terms = make_terms(static.solver, field)
    done = carry.status >= 0
    # A member that is finished (or invalid) integrates over an empty interval.
    time0 = carry.time
    time1 = jnp.where(done, time0, jnp.maximum(jnp.minimum(end_time, settings.time1), time0))

    event = None
    if static.has_target:
        event = diffrax.Event(
            lambda t, y, args, **kwargs: field.log_loss(y) - settings.target_log_loss,
            root_finder=TimeBisection(rtol=settings.rtol, atol=settings.atol),
            direction=False,
        )
    meter = diffrax.TqdmProgressMeter() if static.progress else diffrax.NoProgressMeter()
    fresh = carry.fresh[static.solver]
    new_states = _fresh_states(static.solver, field, carry.theta, time0, time1, settings, static)
    kept_states = carry.solver_states[static.solver]
    solver_state, controller_state, made_jump = jax.tree_util.tree_map(
        lambda start, kept: jnp.where(fresh, start, kept), new_states[:3], kept_states)
    # Diffrax's initial step probes the field at t0 + h0 with h0 = 0.01‖y‖/‖f‖; mid-solve in log time
    # (a switch of solver) that can be s + 10^5, where e^s overflows and the step comes back NaN.
    # Then the step the previous solver proposed is the better start.
    carried_ok = jnp.isfinite(carry.dt) & (carry.dt > 0)
    fallback = jnp.where(carried_ok, carry.dt, 1e-6 * jnp.maximum(1.0, jnp.abs(time0)))
    started = jnp.where(jnp.isfinite(new_states[3]) & (new_states[3] > 0), new_states[3], fallback)
    dt0 = jnp.where(fresh, started, carry.dt)
    # An empty interval (a finished member, or a warm-up call) still needs a positive first step.
    dt0 = jnp.where(jnp.isfinite(dt0) & (dt0 > 0), dt0, jnp.finfo(dt0.dtype).tiny)
    saveat = diffrax.SaveAt(
        subs=[diffrax.SubSaveAt(ts=jnp.clip(save_times, time0, time1)), diffrax.SubSaveAt(t1=True)],
        solver_state=True,
        controller_state=True,
        made_jump=True,
    )
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0=time0,
        t1=time1,
        # Continuing a solver: exactly the step it proposed next. A fresh start (a new solve, or a
        # switch of solver): Diffrax's own initial step selection, made in `_fresh_states`.
        dt0=dt0,
        y0=carry.theta,
        saveat=saveat,
        stepsize_controller=_controller(problem, settings),
        max_steps=static.max_steps,
        event=event,
        throw=False,
        progress_meter=meter,
        solver_state=solver_state,
        controller_state=controller_state,
        made_jump=made_jump,
    )
    grid_ts, grid_ys = solution.ts[0], solution.ys[0]
    end_ts, end_ys = solution.ts[1][-1], solution.ys[1][-1]
    new = jnp.isfinite(grid_ts) & ~carry.filled & (save_times >= time0) & (save_times <= end_ts) & ~done
    saves = jnp.where(new[:, None], grid_ys, carry.saves)
    save_time = jnp.where(new, grid_ts, carry.save_time)
    result = solution.result
    seg_status = _status_from_result(result)
    reached_end = seg_status == Status.HORIZON_REACHED
    # Ended where it was asked to (short of the horizon), or at its step budget: may continue.
    may_continue = (reached_end & (time1 < settings.time1)) | (seg_status == Status.MAX_STEPS)
    status = jnp.where(done, carry.status, jnp.where(may_continue, -1, seg_status)).astype(jnp.int32)
    _, dt_next = solution.controller_state
    return _strongly_typed(_Carry(
        theta=jnp.where(done, carry.theta, end_ys),
        time=jnp.where(done, carry.time, end_ts),
        dt=jnp.where(done, carry.dt, dt_next),
        saves=saves,
        save_time=save_time,
        filled=carry.filled | new,
        num_steps=carry.num_steps + solution.stats["num_steps"],
        num_accepted_steps=carry.num_accepted_steps + solution.stats["num_accepted_steps"],
        num_rejected_steps=carry.num_rejected_steps + solution.stats["num_rejected_steps"],
        status=status,
        solver_states={**carry.solver_states, static.solver: jax.tree_util.tree_map(
            lambda new, old: jnp.where(done, old, new),
            (solution.solver_state, solution.controller_state, jnp.asarray(solution.made_jump)), kept_states)},
        fresh={**carry.fresh, static.solver: jnp.where(done, fresh, jnp.asarray(False))},
    ))


@eqx.filter_jit
def _final_checks(problem, carry: _Carry, settings: Settings, log_time: bool):
    _, field = make_field(problem, log_time, settings.rtol, settings.atol)
    velocity = field(carry.time, carry.theta)
    finite_state = jnp.all(jnp.isfinite(carry.theta))
    # Also probe one proposed step ahead: a solver stalls in front of a field that turns NaN/Inf
    # (its steps into it are all rejected), and the state it stalls at is still finite.
    # After many rejections the proposed step has shrunk below the distance to the bad region:
    # probe a few multiples of it then.
    dt = jnp.where(jnp.isfinite(carry.dt) & (carry.dt > 0), carry.dt, 0.0)
    many_rejected = 10 * carry.num_rejected_steps >= 3 * jnp.maximum(carry.num_steps, 1)
    factors = jnp.where(many_rejected, 4.0 ** jnp.arange(6), jnp.ones(6))
    ahead = jax.vmap(lambda k: field(carry.time + k * dt, carry.theta + k * dt * velocity))(factors)
    finite_field = jnp.all(jnp.isfinite(velocity)) & jnp.all(jnp.isfinite(ahead))
    status = carry.status
    status = jnp.where(status < 0, Status.MAX_STEPS, status)
    failed = (status != Status.HORIZON_REACHED) & (status != Status.TARGET_REACHED)
    status = jnp.where(~finite_state, Status.NON_FINITE, status)
    # A NaN field can end a Diffrax solve as "successful" (its step size turns NaN and the loop
    # condition fails): a result whose field or loss is NaN at the end is never reported as reached.
    broken = jnp.isnan(field.problem.loss.value(field.predictions(carry.theta), field.problem.y))
    broken = broken | ~jnp.all(jnp.isfinite(velocity)) | ~jnp.isfinite(carry.time)
    status = jnp.where(finite_state & broken & (status != Status.INVALID_INPUT) & (status != Status.TARGET_AT_START),
                       Status.NON_FINITE_FIELD, status)
    # A field that is NaN/Inf at the last state explains a stalled solve better than its step count.
    status = jnp.where(finite_state & ~finite_field & failed & (status != Status.INVALID_INPUT)
                       & (status != Status.TARGET_AT_START), Status.NON_FINITE_FIELD, status)
    return status.astype(jnp.int32)


def finish(problem, carry: _Carry, save_times, settings: Settings, static: _Static, metadata: dict, linear) -> Trajectory:
    """Turn the final carry into a Trajectory: unreached saves hold the last state at its time."""
    trajectory = _finish(problem, carry, save_times, settings, static.log_time)
    # Metadata is static (hashable, per call): attached outside the compiled function, so values in it
    # (what "auto" measured) never cause a recompilation.
    return dataclasses.replace(trajectory, metadata=_metadata_tuple(metadata, static, linear))


def _metadata_tuple(metadata: dict, static: _Static, linear) -> tuple:
    out = dict(metadata)
    out.setdefault("solver", static.solver)
    out["linear_solver"] = linear if out["solver"] not in EXPLICIT_SOLVERS or out["solver"] == "auto" else None
    return tuple(sorted(out.items(), key=lambda item: item[0]))


@eqx.filter_jit
def _finish(problem, carry: _Carry, save_times, settings: Settings, log_time: bool) -> Trajectory:
    _, field = make_field(problem, log_time, settings.rtol, settings.atol)
    status = _final_checks(problem, carry, settings, log_time)
    # The final state is appended after the grid (as Diffrax's SaveAt(ts=…, t1=True) does).
    ts = jnp.concatenate([jnp.where(carry.filled, carry.save_time, carry.time), carry.time[None]])
    ys = jnp.concatenate([jnp.where(carry.filled[:, None], carry.saves, carry.theta[None, :]), carry.theta[None]])
    log_t = log_t_from_log_time(ts) if log_time else log_t_from_time(ts)
    models = eqx.filter_vmap(field.model)(ys)
    loss, log_loss = saved_losses(base_problem(problem), models)
    stats = {
        "num_steps": carry.num_steps,
        "num_accepted_steps": carry.num_accepted_steps,
        "num_rejected_steps": carry.num_rejected_steps,
        "wall_time_s": jnp.asarray(jnp.nan),
    }
    inner = base_problem(problem)
    if isinstance(inner.model, AbstractNonsmoothModel):
        # Where the run ended against the ReLU kinks, and how many activation changes the saves saw.
        final_model = field.model(carry.theta)
        at_end = kink_statistics(final_model, inner.X, settings.rtol, settings.atol)
        stats["pairs_at_kink"] = at_end["pairs_at_kink"]
        stats["band_overflow"] = at_end["band_overflow"]
        stats["kink_crossings"] = kink_crossings(models, inner.X)
    return Trajectory(
        log_t=log_t,
        params=models,
        final=field.model(carry.theta),
        loss=loss,
        log_loss=log_loss,
        stats=stats,
        status=status,
        log_t_reached=log_t[-1],
        metadata=(),
        settings={
            "rtol": settings.rtol,
            "atol": settings.atol,
            "log_t1": settings.log_t1,
            "target_log_loss": settings.target_log_loss,
        },
    )
