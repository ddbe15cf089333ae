"""The compiled pieces of a solve: `init_carry`, `segment`, `finish` over an explicit carry.

Diffrax's habit of a pure step over explicit state: `segment` is ONE compiled `diffeqsolve` from a
`Carry` (state, time, next step size, the saves filled so far, every solver's state) towards an end time,
stopping after at most `static.max_steps` steps. A fixed solver under `jit`/`vmap` is one segment; the
eager driver (`flowsim._driver`) chains segments for `solver="auto"`, progress and checkpoints. The
solvers are Diffrax solver objects resolved once by the plan (`flowsim._plan`) and passed in as values
(their tolerances are arrays: new values do not recompile). Tolerances, horizons and the target are
traced values too.
"""

import dataclasses
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._nonsmooth import AbstractNonsmoothModel, kink_crossings, kink_statistics
from ._problem import Problem
from ._solvers import (
    KRYLOV_FORCING,
    KRYLOV_MAX_ITERATIONS,
    KRYLOV_RESTART,
    RecordingController,
    TimeBisection,
    gmres,
    make_terms,
)
from ._trajectory import Status, Trajectory, log_t_from_log_time, log_t_from_time, saved_losses

POWER_ITERATIONS = 20


class Static(NamedTuple):
    """What fixes the compiled program: structure, never values. `solver`: the name (key) of the solver
    that runs the segment; `solvers`: every solver the solve may use (the carry holds a state for each)."""

    solver: str
    log_time: bool
    max_steps: int
    progress: bool
    has_target: bool
    solvers: tuple


class Settings(eqx.Module):
    """The values a solve depends on, as (possibly traced, possibly batched) arrays."""

    rtol: jax.Array
    atol: jax.Array
    log_t1: jax.Array
    time1: jax.Array  # the horizon in the solver's time variable (t or s = log(1 + t))
    target_log_loss: jax.Array  # NaN when there is no target
    grid_ok: jax.Array  # the save times increase and stay within the horizon (checked per member when traced)


class Carry(eqx.Module):
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


def invalid_input(problem: Problem, settings: Settings) -> jax.Array:
    """Per-member checks of values that may have been traced (batched), as one bool."""
    bad = ~(jnp.isfinite(settings.rtol) & (settings.rtol > 0) & jnp.isfinite(settings.atol) & (settings.atol > 0))
    bad = bad | ~jnp.isfinite(settings.log_t1) | ~settings.grid_ok
    if problem.loss.is_classification:
        bad = bad | ~jnp.all((problem.y == 1.0) | (problem.y == -1.0))
    return bad


@eqx.filter_jit
def init_carry(field, theta0, save_times, settings: Settings, static: Static, solvers: dict) -> Carry:
    """The carry at t = 0 (status INVALID_INPUT or TARGET_AT_START where a traced value says so).
    `solvers`: name -> Diffrax solver, for every name in `static.solvers`."""
    status = jnp.asarray(-1, dtype=jnp.int32)
    status = jnp.where(invalid_input(field.problem, settings), Status.INVALID_INPUT, status)
    if static.has_target:
        above = ~(field.log_loss(theta0) > settings.target_log_loss)
        status = jnp.where((status < 0) & above, Status.TARGET_AT_START, status)
    n_grid = save_times.shape[0]
    zero = jnp.asarray(0, dtype=jnp.int64)
    states = {name: fresh_states(solvers[name], name, field, theta0, jnp.asarray(0.0), settings.time1, settings)[:3]
              for name in static.solvers}
    return _strongly_typed(Carry(
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
    PID controller starts with a Python `False` for `at_dtmin` and returns an array.)"""

    def strong(leaf):
        if eqx.is_array(leaf):
            return jnp.asarray(leaf, dtype=leaf.dtype)
        if isinstance(leaf, (bool, int, float)):
            return jnp.asarray(leaf, dtype=jnp.result_type(type(leaf)))
        return leaf

    return jax.tree_util.tree_map(strong, tree)


# A PI controller for ReLU models (Hairer & Wanner's β = 0.4/k, α = 0.7/k ≈ Diffrax's pcoeff = 0.4,
# icoeff = 0.3): the field jumps where a pair crosses its kink, and the default I-controller
# overshoots after each jump, so most steps near kinks are rejected (benchmarks/relu.py compares the two).
# Smooth models keep the default.
_NONSMOOTH_PCOEFF, _NONSMOOTH_ICOEFF = 0.4, 0.3


def _controller(field, settings: Settings):
    if isinstance(field.problem.model, AbstractNonsmoothModel):
        pid = diffrax.PIDController(rtol=settings.rtol, atol=settings.atol, pcoeff=_NONSMOOTH_PCOEFF,
                                    icoeff=_NONSMOOTH_ICOEFF)
    else:
        pid = diffrax.PIDController(rtol=settings.rtol, atol=settings.atol)
    return RecordingController(pid)


def fresh_states(solver, name, field, theta, time0, time1, settings: Settings):
    """(solver state, controller state, made_jump, first step) of a fresh start of `solver` at (time0, θ),
    exactly as `diffeqsolve` would make them: Diffrax's public `init` methods."""
    terms = make_terms(solver, field)
    controller = _controller(field, settings).wrap(1)
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
def segment(field, carry: Carry, save_times, settings: Settings, end_time, static: Static, solver) -> Carry:
    """At most `static.max_steps` solver steps from `carry` towards `end_time` (≤ the horizon).

    Returns the new carry. `status` stays −1 when the segment ended at its step budget or at an
    `end_time` short of the horizon (the solve may continue); otherwise it says why it stopped."""
    terms = make_terms(solver, field)
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
    new_states = fresh_states(solver, static.solver, field, carry.theta, time0, time1, settings)
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
        # A member whose save times are invalid (INVALID_INPUT, so done) gets an ordered stand-in grid.
        subs=[diffrax.SubSaveAt(ts=jnp.clip(jnp.where(settings.grid_ok, save_times, time0), time0, time1)),
              diffrax.SubSaveAt(t1=True)],
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
        stepsize_controller=_controller(field, settings),
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
    return _strongly_typed(Carry(
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
def _final_checks(field, carry: Carry):
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


def finish(field, carry: Carry, save_times, settings: Settings, log_time: bool, metadata: dict) -> Trajectory:
    """Turn the final carry into a Trajectory: unreached saves hold the last state at its time. `metadata`
    (static, hashable) is attached outside the compiled function, so values in it (what "auto" did) never
    cause a recompilation."""
    trajectory = finish_arrays(field, carry, save_times, settings, log_time)
    return dataclasses.replace(trajectory, metadata=metadata_tuple(metadata))


def metadata_tuple(metadata: dict) -> tuple:
    return tuple(sorted(metadata.items(), key=lambda item: item[0]))


@eqx.filter_jit
def finish_arrays(field, carry: Carry, save_times, settings: Settings, log_time: bool) -> Trajectory:
    status = _final_checks(field, carry)
    # The final state is appended after the grid (as Diffrax's SaveAt(ts=…, t1=True) does).
    ts = jnp.concatenate([jnp.where(carry.filled, carry.save_time, carry.time), carry.time[None]])
    ys = jnp.concatenate([jnp.where(carry.filled[:, None], carry.saves, carry.theta[None, :]), carry.theta[None]])
    log_t = log_t_from_log_time(ts) if log_time else log_t_from_time(ts)
    models = eqx.filter_vmap(field.model)(ys)
    inner = field.problem
    loss, log_loss = saved_losses(inner, models)
    stats = {
        "num_steps": carry.num_steps,
        "num_accepted_steps": carry.num_accepted_steps,
        "num_rejected_steps": carry.num_rejected_steps,
        "wall_time_s": jnp.asarray(jnp.nan),
    }
    if isinstance(inner.model, AbstractNonsmoothModel):
        # Where the run ended against the ReLU kinks, and how many activation changes the saves saw.
        at_end = kink_statistics(field.model(carry.theta), inner.X, field.band)
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


@eqx.filter_jit
def spectral_radius(field, theta, time):
    """ρ(∂v/∂θ) of the field v at (time, θ), by power iteration on Jacobian–vector products.

    In linear time ∂v/∂θ = −∇²L (symmetric), in log time −e^s ∇²L: the iteration's norm ratio converges
    to the largest |eigenvalue|; 20 iterations give the order of magnitude a solver choice needs."""
    _, jvp = jax.linearize(lambda th: field(time, th), theta)
    p = theta.shape[0]
    start = 1.0 + 0.1 * jnp.cos(jnp.arange(p, dtype=theta.dtype))  # deterministic, generic
    start = start / jnp.linalg.norm(start)

    def body(_, carry):
        vector, _ = carry
        image = jvp(vector)
        size = jnp.linalg.norm(image)
        return jnp.where(size > 0, image / jnp.where(size > 0, size, 1.0), vector), size

    _, rho = jax.lax.fori_loop(0, POWER_ITERATIONS, body, (start, jnp.asarray(0.0, theta.dtype)))
    return jnp.where(jnp.isfinite(rho), rho, jnp.inf)


# Kvaerno5's diagonal coefficient a_ii (Kværnø 2004): the Newton systems of its stages are I − h·γ·∂v/∂θ.
_ESDIRK_GAMMA = 0.26


@eqx.filter_jit
def krylov_iterations(field, theta, time, dt):
    """GMRES iterations for one Newton system of an implicit stage at (time, θ) with step `dt`:
    (I − h γ ∂v/∂θ) x = v(θ), solved as `StageNewton` solves it (forcing `KRYLOV_FORCING`). A count of the
    work a matrix-free implicit step does there, for the cost model (deterministic)."""
    _, jvp = jax.linearize(lambda th: field(time, th), theta)
    h = jnp.where(jnp.isfinite(dt) & (dt > 0), dt, 0.0)
    # A Newton residual is not the velocity (which lies along the few directions the flow moves in, and
    # converges in one iteration): a generic right-hand side excites the whole spectrum, as residuals do.
    p = theta.shape[0]
    generic = 1.0 + 0.1 * jnp.cos(jnp.arange(p, dtype=theta.dtype))
    _, used = gmres(lambda v: v - h * _ESDIRK_GAMMA * jvp(v), generic, rtol=KRYLOV_FORCING,
                    restart=KRYLOV_RESTART, max_iterations=KRYLOV_MAX_ITERATIONS)
    return used
