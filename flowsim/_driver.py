"""The eager driver of a solve: segments, progress in log t, checkpoints, and asking the solver policy.

Outside `jit`/`vmap`, `fs.simulate` runs a `Plan` here. A fixed solver with no progress bar and no
checkpoint is one compiled segment to the horizon. Otherwise the solve is a chain of compiled
segments (`flowsim._engine.segment`, each continuing the last exactly: state, step size, solver and
controller state); after each the driver measures what it did (counts and step sizes, never the clock:
`flowsim._policy.Measurement`) and asks the policy which solver runs next. The carry and the policy's
state are written to the checkpoint together, so a resumed solve continues both.
"""

import dataclasses
import math
import sys
import time as _time

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checkpoint import CheckpointStore, fingerprint
from ._engine import finish, init_carry, krylov_iterations, segment, spectral_radius
from ._policy import Measurement


def log_t_of(time_value: float, log_time: bool) -> float:
    """log t for a value of the solver's time variable (s = log(1 + t) or t)."""
    if time_value <= 0:
        return -math.inf
    if log_time:
        return time_value + math.log(-math.expm1(-time_value))
    return math.log(time_value)


class ProgressBar:
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


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def start_afresh(carry, name: str):
    """The next segment of solver `name` starts afresh (a switch): Diffrax's initial step and state."""
    return dataclasses.replace(carry, fresh={**carry.fresh, name: jnp.asarray(True)})


def run_segment(plan, carry, name: str, end_time: float, max_steps: int, progress: bool = False):
    """One compiled segment of solver `name` from `carry` to `end_time` (at most `max_steps` steps)."""
    static = plan.static(name, max_steps=max_steps, progress=progress)
    return segment(plan.field, carry, plan.save_times, plan.settings, jnp.asarray(end_time, jnp.float64), static,
                   plan.solvers[name])


def measure(plan, policy, before, after, name: str) -> Measurement:
    """What the segment from `before` to `after` did, in counts (and ρ, Krylov iterations where the policy
    weighs them)."""
    steps = int(after.num_steps) - int(before.num_steps)
    finished = int(after.status) >= 0
    rho, krylov = math.nan, None
    if policy.measures and not finished and steps > 0:
        rho = float(spectral_radius(plan.field, after.theta, after.time))
        if plan.is_implicit(name) and plan.linear_solver == "krylov":
            krylov = float(krylov_iterations(plan.field, after.theta, after.time, after.dt))
    return Measurement(
        solver=name, time0=float(before.time), time1=float(after.time), steps=steps,
        accepted=int(after.num_accepted_steps) - int(before.num_accepted_steps),
        rejected=int(after.num_rejected_steps) - int(before.num_rejected_steps),
        dt=float(after.dt), finished=finished, rho=rho, krylov_iterations=krylov)


def _stiffness(plan, carry) -> dict:
    """For the advice of a solve that ran out of steps: h·ρ at its end (≥ 1: its steps are held by stability),
    and the steps an explicit solver would need to the horizon at its stability limit, ρ·(remaining time)/3.5."""
    if int(carry.status) >= 0:
        return {}
    rho = float(spectral_radius(plan.field, carry.theta, carry.time))
    dt = float(carry.dt)
    remaining = float(plan.settings.time1) - float(carry.time)
    return {"stiffness": _round(dt * rho) if math.isfinite(dt) and dt > 0 else None,
            "explicit_steps_needed": _round(rho * remaining / 3.5) if math.isfinite(rho) else None}


def _restore(plan, policy, store, carry, state):
    """(carry, policy state, log t resumed from or None) from the checkpoint, if there is one."""
    def template(name):
        return eqx.filter_eval_shape(segment, plan.field, carry, plan.save_times, plan.settings, plan.settings.time1,
                                     plan.static(name), plan.solvers[name])

    restored = store.load(template)
    if restored is None:
        return carry, state, None
    carry, current = restored
    if store.policy_state is not None:
        state = policy.state_from_json(store.policy_state)
    else:  # a checkpoint from before policies were saved: the policy restarts from the solver it ran
        state = dataclasses.replace(state, current=current)
    return carry, state, log_t_of(float(carry.time), plan.log_time)


def drive(plan):
    """Run an eager solve. Returns the Trajectory with `stats["wall_time_s"]` and `info` filled in."""
    start = _time.perf_counter()
    policy = plan.policy()
    record_start = getattr(policy, "note", None)
    segmented = policy.measures or plan.progress or plan.checkpoint is not None
    state = policy.init(plan)
    carry = init_carry(plan.field, plan.theta0, plan.save_times, plan.settings, plan.static(state.current),
                       plan.solvers)
    if not segmented:
        carry = run_segment(plan, carry, state.current, float(plan.settings.time1), plan.max_steps)
        record = ((-math.inf, state.current, record_start),) if record_start else None
        return _finish(plan, carry, start, record, None, state.current)

    store, resumed_from = None, None
    if plan.checkpoint is not None:
        store = CheckpointStore(plan.checkpoint, fingerprint(plan))
        carry, state, resumed_from = _restore(plan, policy, store, carry, state)
    record = [(_round(log_t_of(float(carry.time), plan.log_time)), state.current, record_start or "start")]
    bar = ProgressBar(plan.progress, float(plan.settings.log_t1))
    last_write = _time.perf_counter()
    horizon = float(plan.settings.time1)
    try:
        while int(carry.status) < 0 and int(carry.num_steps) < plan.max_steps:
            name = state.current
            end_time = policy.segment_end(state, float(carry.time), horizon)
            before = carry
            carry = run_segment(plan, carry, name, end_time, policy.segment_steps(state, plan.max_steps))
            measurement = measure(plan, policy, before, carry, name)
            state, chosen, reason = policy.decide(state, measurement)
            if state.next_dt is not None:
                carry = dataclasses.replace(carry, dt=jnp.asarray(state.next_dt, dtype=carry.dt.dtype))
            if chosen != name:
                carry = start_afresh(carry, chosen)
            if reason is not None:
                record.append((_round(log_t_of(measurement.time1, plan.log_time)), chosen, reason))
            bar.update(log_t_of(measurement.time1, plan.log_time), name)
            if store is not None and _time.perf_counter() - last_write >= plan.checkpoint_every_s:
                store.save(carry, state.current, state.to_json())
                last_write = _time.perf_counter()
    finally:
        bar.close()
    if store is not None:
        store.save(carry, state.current, state.to_json())
    auto = tuple(record) if (policy.measures or record_start) else None
    return _finish(plan, carry, start, auto, resumed_from, state.current)


def _finish(plan, carry, start, auto, resumed_from, current):
    metadata = dict(plan.metadata, solver=plan.solver_name, auto=auto, resumed_from_log_t=resumed_from,
                    **_stiffness(plan, carry))
    implicit = plan.solver_name == "auto" or plan.is_implicit(plan.solver_name)
    metadata["linear_solver"] = plan.linear_solver if implicit else None
    metadata["implicit"] = plan.is_implicit(current)
    trajectory = finish(plan.field, carry, plan.save_times, plan.settings, plan.log_time, metadata)
    jax.block_until_ready(trajectory)
    return eqx.tree_at(lambda tr: tr.stats["wall_time_s"], trajectory, jnp.asarray(_time.perf_counter() - start))
