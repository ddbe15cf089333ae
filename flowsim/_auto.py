"""Segment drivers for eager solves: ``solver="auto"`` on evidence, progress in log t, checkpoints.

``solver="auto"`` (outside ``jit``/``vmap``) runs the solve in segments of at most
``SEGMENT_STEPS`` steps and decides, after each, which solver is cheaper for what comes next:

1. Start explicit (Tsit5): it wins whenever the flow is not stiff, and its steps are cheap.
2. After an explicit segment, estimate the spectral radius ρ of the field's Jacobian by power
   iteration on Jacobian–vector products (Hessian–vector products of L) at the segment's end.
   If the step h the controller proposes next satisfies h·ρ ≥ ``STIFF_STEP_RATIO``, the steps
   are held by stability, not accuracy (Tsit5's real stability boundary is ≈ 3.5): the flow is
   stiff there. Then try the implicit solver (Kvaerno5). A trial is also made when the explicit
   steps crawl (below ``CRAWL_STEP`` times the time covered), as they do once a field is
   round-off noise.
3. A trial runs in segments of doubling span, the first ``TRIAL_FIRST_SPAN`` explicit steps long
   and unmeasured (a fresh start's small first steps are not what the solver costs); it is
   measured once the later segments hold ``TRIAL_MIN_STEPS`` accepted implicit steps and the span
   of ``TRIAL_EXPLICIT_STEPS`` explicit steps (or that many implicit steps, when the implicit
   steps are the smaller). Sized in steps, not in time already covered, a lost trial costs a few
   segments' worth of work however long the solve has run; implicit segments are
   ``IMPLICIT_SEGMENT_STEPS`` long (an implicit step can cost 200× an explicit one), and a trial
   whose cost per unit time so far is ``TRIAL_ABANDON_FACTOR`` times the explicit rate is lost at
   once (a smoothed ReLU network: accuracy, not stability, holds Kvaerno5's steps there, at 200× the
   cost per step). Each segment ends at a time, so its last step is clipped; the next starts from
   the mean accepted step.
4. Costs are compared as wall per unit of solver time. Wall per step is each solver's smallest
   over its last ``COST_WINDOW`` segments: load on a shared machine only ever adds time, so the
   minimum is the solver's own cost. Explicit steps (held by stability or accuracy) change
   slowly: its rate is cost / (the step proposed next). Implicit steps grow, and cost more as
   they grow (more Krylov iterations): its rate is over the time actually covered. A trial is
   undone only if it costs ``TRIAL_MARGIN`` times the explicit rate (stiffness grows along the
   flows flowsim studies: a near tie goes to the implicit solver). The next trial waits until
   the solver time has grown ``RETRY_FACTOR``-fold and the explicit solver has spent
   ``RETRY_WALL_FACTOR`` times the lost trial's wall (times the factor by which it lost beyond
   ``TRIAL_MARGIN``), so lost trials cost at most a third of the run.
5. While implicit, the explicit cost is predicted from its measured cost per step and the step
   it could take, min(h_implicit, ``EXPLICIT_STABLE_STEP``/ρ); below ``SWITCH_BACK_FACTOR`` times
   the implicit cost, auto switches back.

Compilation is kept out of the measurements (each solver is compiled on an empty interval first).
"""

import collections
import dataclasses
import hashlib
import math
import sys
import time as _time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._flow import base_problem, make_field
from ._nonsmooth import AbstractNonsmoothModel
from ._solvers import EXPLICIT_SOLVERS

SEGMENT_STEPS = 512
IMPLICIT_SEGMENT_STEPS = 32  # auto's implicit segments (each implicit step costs far more)
STIFF_STEP_RATIO = 1.0
EXPLICIT_STABLE_STEP = 3.0
POWER_ITERATIONS = 20
TRIAL_FIRST_SPAN = 32  # a trial's first (unmeasured) segment spans this many explicit steps,
TRIAL_EXPLICIT_STEPS = 128  # its measured segments at least this many,
TRIAL_MIN_STEPS = 8  # and hold at least this many accepted implicit steps
TRIAL_MARGIN = 1.5  # a trial is undone only if implicit costs this much more per unit time
TRIAL_ABANDON_FACTOR = 20.0  # ... and is lost at once, measured or not, past this many times
RETRY_FACTOR = 2.0  # after a lost trial, the next waits until the solver time has grown this much
SWITCH_BACK_FACTOR = 0.25  # hysteresis: back to explicit only when predicted 4x cheaper
RETRY_WALL_FACTOR = 2.0  # ... and the explicit solver has spent this many times the lost trial's wall
COST_WINDOW = 4  # a solver's wall per step: the smallest over its last this many segments
CRAWL_STEP = 1e-4  # explicit steps below this fraction of the time covered also trigger a trial,
CRAWL_MAX_REJECTED = 0.3  # unless this fraction of them was rejected (kinks, not stiffness)
AUTO_EXPLICIT = "tsit5"
AUTO_IMPLICIT = "kvaerno5"


@eqx.filter_jit
def spectral_radius(problem, theta, time, log_time: bool, rtol=None, atol=None):
    """ρ(∂v/∂θ) of the field v at (time, θ), by power iteration on Jacobian–vector products.

    In linear time ∂v/∂θ = −∇²L (symmetric), in log time −e^s ∇²L: the iteration's norm ratio
    converges to the largest |eigenvalue|; 20 iterations give the order of magnitude a solver
    choice needs."""
    _, field = make_field(problem, log_time, rtol, atol)
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


class _Timer:
    """Wall time of a compiled call, with its first (compiling) call per signature kept out of the
    measurement."""

    def __init__(self):
        self.compiled = set()
        self.compile_s = 0.0

    def warm(self, key, fn):
        if key not in self.compiled:
            start = _time.perf_counter()
            jax.block_until_ready(fn())
            self.compile_s += _time.perf_counter() - start
            self.compiled.add(key)

    @staticmethod
    def run(fn):
        start = _time.perf_counter()
        out = jax.block_until_ready(fn())
        return out, _time.perf_counter() - start


def _log_t(time_value: float, log_time: bool) -> float:
    if time_value <= 0:
        return -math.inf
    if log_time:
        return time_value + math.log(-math.expm1(-time_value))
    return math.log(time_value)


class _Bar:
    """A tqdm bar in log t, drawn from Python between segments (no solver internals)."""

    def __init__(self, enabled: bool, log_t1: float):
        self.bar = None
        self.log_t1 = log_t1
        self.low = min(0.0, log_t1) - 3.0 * math.log(10.0)
        if enabled:
            import tqdm

            self.bar = tqdm.tqdm(total=1000, file=sys.stderr, leave=False, dynamic_ncols=True,
                                 bar_format="{desc} {percentage:5.1f}%|{bar}| [{elapsed}<{remaining}]")

    def update(self, log_t: float, solver: str):
        if self.bar is None:
            return
        fraction = 0.0 if not math.isfinite(log_t) else (log_t - self.low) / max(self.log_t1 - self.low, 1e-300)
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_description(f"log t = {log_t:.4g} / {self.log_t1:.4g} ({solver})", refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def drive(problem, save_times, settings, metadata, *, solver, linear_solver, log_time, max_steps, progress,
          has_target, checkpoint, checkpoint_every_s):
    """Run an eager solve: one segment for a fixed solver, or chained segments (auto, progress,
    checkpoint). Returns the Trajectory with ``stats["wall_time_s"]`` and ``info`` filled in."""
    from ._simulate import _Static, finish, init_carry, segment

    start = _time.perf_counter()
    auto = solver == "auto"
    # ReLU models: their steps are held by kinks, not stiffness, and an implicit solve of the min-norm field
    # was measured 40-100x slower per unit time: auto stays explicit, in one segment unless asked for more.
    nonsmooth = isinstance(base_problem(problem).model, AbstractNonsmoothModel)
    segmented = (auto and not nonsmooth) or progress or checkpoint is not None
    if not segmented:
        name = AUTO_EXPLICIT if auto else solver
        static = _Static(name, linear_solver, log_time, max_steps, False, has_target, solvers=(name,))
        carry = init_carry(problem, save_times, settings, static)
        carry = segment(problem, carry, save_times, settings, settings.time1, static)
        record = ((-math.inf, name, "start: non-smooth model, explicit throughout"),) if auto else None
        metadata = dict(metadata, solver=solver, auto=record, resumed_from_log_t=None)
        trajectory = finish(problem, carry, save_times, settings, static, metadata, linear_solver)
        return _timed(trajectory, start)

    current = AUTO_EXPLICIT if auto else solver

    solvers = (AUTO_EXPLICIT, AUTO_IMPLICIT) if auto else (solver,)

    def static_for(name):
        budget = min(max_steps, IMPLICIT_SEGMENT_STEPS if auto and name == AUTO_IMPLICIT else SEGMENT_STEPS)
        return _Static(name, linear_solver, log_time, budget, False, has_target, solvers=solvers)

    carry = init_carry(problem, save_times, settings, static_for(current))
    resumed_from = None
    store = None
    if checkpoint is not None:
        from ._checkpoint import CheckpointStore

        store = CheckpointStore(checkpoint, _fingerprint(problem, save_times, settings, solver, linear_solver,
                                                          log_time, has_target))
        restored = store.load(lambda name: eqx.filter_eval_shape(
            segment, problem, carry, save_times, settings, settings.time1, static_for(name)))
        if restored is not None:
            carry, current = restored
            resumed_from = _log_t(float(carry.time), log_time)
    timer = _Timer()
    bar = _Bar(progress, float(settings.log_t1))
    switches = [(_round(_log_t(float(carry.time), log_time)), current, "start")]
    explicit_rate = None  # wall per unit time at the explicit solver's current step (measured)
    explicit_step_cost = None  # wall per explicit step (measured)
    step_costs = {name: collections.deque(maxlen=COST_WINDOW) for name in solvers}
    next_trial_time = -math.inf  # a lost trial is retried only once the solve has got this far
    trial_wall_owed = 0.0  # ... and the explicit solver has spent this much wall since
    explicit_wall_since_trial = 0.0
    trial = None  # while a trial runs: its next span, and (wall, steps, accepted, span) of its segments
    last_write = _time.perf_counter()
    horizon = float(settings.time1)
    try:
        while int(carry.status) < 0 and int(carry.num_steps) < max_steps:
            time0 = float(carry.time)
            end_time = horizon if trial is None else min(horizon, time0 + trial["span"])
            static = static_for(current)
            timer.warm((current, _signature(carry)), lambda: segment(problem, carry, save_times, settings,
                                                                     jnp.asarray(time0), static))
            steps_before = int(carry.num_steps)
            accepted_before = int(carry.num_accepted_steps)
            rejected_before = int(carry.num_rejected_steps)
            carry, wall = timer.run(lambda: segment(problem, carry, save_times, settings,
                                                    jnp.asarray(end_time), static))
            time1 = float(carry.time)
            steps = int(carry.num_steps) - steps_before
            accepted = int(carry.num_accepted_steps) - accepted_before
            log_t_now = _log_t(time1, log_time)
            bar.update(log_t_now, current)
            if store is not None and (_time.perf_counter() - last_write >= checkpoint_every_s):
                store.save(carry, current)
                last_write = _time.perf_counter()
            if not auto or nonsmooth or int(carry.status) >= 0 or time1 <= time0 or steps == 0:
                continue
            step = float(carry.dt)  # the step the controller proposes next
            if trial is not None:
                if accepted > 0 and not (math.isfinite(step) and step * accepted >= time1 - time0):
                    # The segment's last step was clipped to its end, and the controller's next
                    # proposal with it: the mean accepted step is the better (conservative) start.
                    step = (time1 - time0) / accepted
                    carry = dataclasses.replace(carry, dt=jnp.asarray(step, dtype=carry.dt.dtype))
                trial["segments"].append((wall, steps, accepted, time1 - time0))
                trial["span"] *= 2.0
                segments = trial["segments"]
                # Far behind already (warm-up included, which only overstates the cost a few-fold): lost.
                abandon = (explicit_rate is not None and sum(m[2] for m in segments) > 0
                           and sum(m[0] for m in segments)
                           >= TRIAL_ABANDON_FACTOR * explicit_rate * sum(m[3] for m in segments))
                measured = segments[1:]
                if not abandon and (
                        sum(m[2] for m in measured) < TRIAL_MIN_STEPS
                        or (sum(m[3] for m in measured) < TRIAL_EXPLICIT_STEPS * trial["explicit_step"]
                            and sum(m[1] for m in measured) < TRIAL_EXPLICIT_STEPS)):
                    continue
            if not (math.isfinite(step) and step > 0):
                continue
            if trial is not None:
                measured = trial["segments"][1:] or trial["segments"]
                step_costs[current].extend(m[0] / m[1] for m in measured)
                total_steps, total_span = sum(m[1] for m in measured), sum(m[3] for m in measured)
                rate = min(step_costs[current]) * total_steps / total_span
            else:
                step_costs[current].append(wall / steps)
                step_cost = min(step_costs[current])
                # Explicit: at the step proposed next; implicit: over the time actually covered.
                rate = step_cost / step if current in EXPLICIT_SOLVERS else step_cost * steps / (time1 - time0)
            rho = float(spectral_radius(problem, carry.theta, carry.time, log_time, settings.rtol, settings.atol))
            if current in EXPLICIT_SOLVERS:
                explicit_wall_since_trial += wall
                explicit_step_cost, explicit_rate = step_cost, rate
                ratio = step * rho
                # Steps far below the time already covered, whatever ρ says (e.g. a field that is
                # round-off noise once the loss is at machine precision): worth an implicit trial too.
                # Not when most steps are rejected: that is a kink (a ReLU activation changing), which
                # an implicit solver does not step over any better.
                rejected = int(carry.num_rejected_steps) - rejected_before
                crawling = step < CRAWL_STEP * max(time1, 1.0) and rejected < CRAWL_MAX_REJECTED * steps
                if ((ratio >= STIFF_STEP_RATIO or crawling) and time1 >= next_trial_time
                        and explicit_wall_since_trial >= trial_wall_owed):
                    current = AUTO_IMPLICIT
                    trial = dict(span=TRIAL_FIRST_SPAN * step, explicit_step=step, segments=[])
                    step_costs[current].clear()  # its cost per step depends on where it runs
                    carry = _start_afresh(carry, current)
                    why = f"explicit h·ρ = {ratio:.3g}" if ratio >= STIFF_STEP_RATIO else f"explicit h = {step:.3g}"
                    switches.append((_round(log_t_now), current, f"trial: {why}"))
                continue
            implicit_rate = rate
            was_trial, trial_wall = trial is not None, sum(m[0] for m in (trial or {}).get("segments", ()))
            trial = None
            if was_trial and explicit_rate is not None and implicit_rate >= TRIAL_MARGIN * explicit_rate:
                next_trial_time = time1 + (RETRY_FACTOR - 1.0) * max(abs(time1), time1 - time0)
                # A trial lost by far is retried correspondingly later (stiffness that makes up a 10^4 gap
                # would show as a far larger h·ρ first).
                lost_by = implicit_rate / (TRIAL_MARGIN * explicit_rate)
                trial_wall_owed, explicit_wall_since_trial = RETRY_WALL_FACTOR * trial_wall * max(1.0, lost_by), 0.0
                current = AUTO_EXPLICIT
                carry = _start_afresh(carry, current)
                switches.append((_round(log_t_now), current, f"trial lost: implicit {implicit_rate:.3g} vs explicit "
                                 f"{explicit_rate:.3g} s per unit time"))
                continue
            if explicit_step_cost is not None:
                mean_step = (time1 - time0) / max(accepted, 1)
                explicit_step = min(mean_step, EXPLICIT_STABLE_STEP / rho) if rho > 0 else mean_step
                predicted = explicit_step_cost / explicit_step
                if predicted < SWITCH_BACK_FACTOR * implicit_rate:
                    current = AUTO_EXPLICIT
                    carry = _start_afresh(carry, current)
                    switches.append((_round(log_t_now), current, f"not stiff: explicit {predicted:.3g} vs implicit "
                                     f"{implicit_rate:.3g} s per unit time"))
                elif was_trial:
                    switches.append((_round(log_t_now), current, f"stiff: implicit {implicit_rate:.3g} vs explicit "
                                     f"{explicit_rate:.3g} s per unit time"))
    finally:
        bar.close()
    if store is not None:
        store.save(carry, current)
    metadata = dict(
        metadata,
        solver="auto" if auto else solver,
        auto=tuple(switches) if auto else None,
        compile_s=round(timer.compile_s, 3),
        resumed_from_log_t=resumed_from,
    )
    static = static_for(current)
    trajectory = finish(problem, carry, save_times, settings, static, metadata, linear_solver)
    return _timed(trajectory, start)


def _signature(tree) -> tuple:
    """What a jitted call compiles for: the shapes, dtypes and weak types of the array leaves (a carry
    returned by one solver's segment can differ in weak types from the one it started from)."""
    return tuple((leaf.shape, leaf.dtype, bool(getattr(leaf, "weak_type", False)))
                 for leaf in jax.tree_util.tree_leaves(tree) if eqx.is_array(leaf))


def _start_afresh(carry, name):
    """The next segment of solver ``name`` starts afresh (a switch): Diffrax's initial step and state."""
    return dataclasses.replace(carry, fresh={**carry.fresh, name: jnp.asarray(True)})


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _timed(trajectory, start):
    jax.block_until_ready(trajectory)
    return eqx.tree_at(lambda tr: tr.stats["wall_time_s"], trajectory, jnp.asarray(_time.perf_counter() - start))


def _fingerprint(problem, save_times, settings, solver, linear_solver, log_time, has_target) -> str:
    """A digest of everything a solve's result depends on: a checkpoint made with other arguments is
    refused. ``max_steps`` is left out on purpose: resuming with a larger budget is the common case."""
    digest = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter((problem, save_times, settings), eqx.is_array))
    digest.update(str(treedef).encode())
    for leaf in leaves:
        array = np.asarray(leaf)
        digest.update(str((array.shape, array.dtype)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    static_part = eqx.filter((problem,), lambda leaf: not eqx.is_array(leaf))
    digest.update(repr(jax.tree_util.tree_structure(static_part)).encode())
    digest.update(repr((type(base_problem(problem).model).__name__, solver, linear_solver, log_time,
                        has_target, SEGMENT_STEPS, IMPLICIT_SEGMENT_STEPS)).encode())
    return digest.hexdigest()
