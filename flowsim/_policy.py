"""Solver policies: which solver runs the next segment of an eager solve, as a pure function of counts.

A policy is an object with explicit state (the Optimistix habit of `init`/`step` over a state that is
passed in and out, nothing cached on `self`):

    state = policy.init(plan)
    state, solver, reason = policy.decide(state, measurement)   # after every segment

`FixedSolver(name)` always answers `name`. `AutoSolver()` is `solver="auto"`: it starts explicit
(Tsit5) and decides, after each segment, on evidence that depends only on the computation, never on
the clock: the counted work of the segment (steps, accepted and rejected, weighted by the per-shape
cost table of `flowsim._costs`, with the Krylov iterations of a matrix-free Newton solve counted), the
step the controller proposes next, and the stiffness estimate ρ (power iteration on the field's
Jacobian). The same problem and options therefore take the same solver path and give bitwise the
same result, whatever the machine's load.

The rule (`AutoSolver.decide`):

1. Start explicit: it wins whenever the flow is not stiff, and its steps are cheap.
2. After an explicit segment, if the proposed step h satisfies h·ρ ≥ `STIFF_STEP_RATIO`, the steps are
   held by stability, not accuracy (Tsit5's real stability boundary is ≈ 3.5): try the implicit solver
   (Kvaerno5). A trial is also made when the explicit steps crawl (below `CRAWL_STEP` times the time
   covered, with under `CRAWL_MAX_REJECTED` of them rejected), as they do once a field is round-off noise.
3. A trial runs in segments of doubling span, the first `TRIAL_FIRST_SPAN` explicit steps long and
   unmeasured (a fresh start's small first steps are not what the solver costs); it is judged once the
   later segments hold `TRIAL_MIN_STEPS` accepted steps and the span of `TRIAL_EXPLICIT_STEPS` explicit
   steps (or that many implicit steps). A trial whose cost per unit time so far is `TRIAL_ABANDON_FACTOR`
   times the explicit rate is lost at once.
4. Costs are compared per unit of solver time: the explicit rate is (cost per step) / (the step proposed
   next); the implicit rate is the trial's counted cost over the time it covered. A trial is lost only if
   it costs `TRIAL_MARGIN` times the explicit rate (stiffness grows along the flows flowsim studies: a near
   tie goes to the implicit solver). The next trial waits until the solver time has grown `RETRY_FACTOR`-
   fold and the explicit solver has done `RETRY_COST_FACTOR` times the lost trial's work (times the factor
   by which it lost beyond `TRIAL_MARGIN`), so lost trials cost at most about a third of the run.
5. While implicit, the explicit cost is predicted from its cost per step and the step it could take,
   min(h_implicit, `EXPLICIT_STABLE_STEP`/ρ); below `SWITCH_BACK_FACTOR` times the implicit rate, auto
   switches back.

The state is a frozen dataclass of numbers and strings (`to_json` / `from_json`), saved with each
checkpoint, so a resumed solve continues the policy where it stopped.
"""

import dataclasses
import json
import math
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx

from ._costs import EXPLICIT_STAGES, IMPLICIT_STAGES, CostTable
from ._solvers import EXPLICIT_SOLVERS, IMPLICIT_SOLVERS

SEGMENT_STEPS = 512
IMPLICIT_SEGMENT_STEPS = 32  # auto's implicit segments (an implicit step can cost 200x an explicit one)
STIFF_STEP_RATIO = 1.0
EXPLICIT_STABLE_STEP = 3.0
TRIAL_FIRST_SPAN = 32  # a trial's first (unmeasured) segment spans this many explicit steps,
TRIAL_EXPLICIT_STEPS = 128  # its measured segments at least this many,
TRIAL_MIN_STEPS = 8  # and hold at least this many accepted implicit steps
TRIAL_MARGIN = 1.5  # a trial is lost only if implicit costs this much more per unit time
TRIAL_ABANDON_FACTOR = 20.0  # ... and is lost at once, measured or not, past this many times
RETRY_FACTOR = 2.0  # after a lost trial, the next waits until the solver time has grown this much
RETRY_COST_FACTOR = 2.0  # ... and the explicit solver has done this many times the lost trial's work
SWITCH_BACK_FACTOR = 0.25  # hysteresis: back to explicit only when predicted 4x cheaper
CRAWL_STEP = 1e-4  # explicit steps below this fraction of the time covered also trigger a trial,
CRAWL_MAX_REJECTED = 0.3  # unless this fraction of them was rejected (kinks, not stiffness)
AUTO_EXPLICIT = "tsit5"
AUTO_IMPLICIT = "kvaerno5"
FIXED_SOLVER_NAMES = (*EXPLICIT_SOLVERS, *IMPLICIT_SOLVERS)


class Measurement(NamedTuple):
    """What one segment did: counts and step sizes only (no wall time).

    `solver`: the solver that ran it; `time0`, `time1`: the solver time at its start and end;
    `steps`, `accepted`, `rejected`: its step counts; `dt`: the step the controller proposes next;
    `finished`: the solve stopped (horizon, target, failure); `rho`: the spectral radius of the field's
    Jacobian at the end (NaN when not measured); `krylov_iterations`: GMRES iterations of one Newton
    system at the end (None for a dense linear solver or an explicit segment)."""

    solver: str
    time0: float
    time1: float
    steps: int
    accepted: int
    rejected: int
    dt: float
    finished: bool = False
    rho: float = math.nan
    krylov_iterations: float | None = None


@dataclasses.dataclass(frozen=True)
class Trial:
    """An implicit trial in progress: the next segment's span, the explicit step it is measured
    against, and (cost, steps, accepted, span) of each of its segments so far."""

    span: float
    explicit_step: float
    segments: tuple = ()


@dataclasses.dataclass(frozen=True)
class AutoState:
    """`AutoSolver`'s state between segments (every field a number, a string or None)."""

    current: str
    costs: tuple  # (evaluation, jvp, num_params, jacobian) of the problem's CostTable
    linear_solver: str = "dense"
    trial: Trial | None = None
    explicit_rate: float | None = None  # cost per unit time at the explicit solver's step
    explicit_step_cost: float | None = None
    next_trial_time: float = -math.inf  # a lost trial is retried only once the solve has got this far
    trial_cost_owed: float = 0.0  # ... and the explicit solver has done this much work since
    explicit_cost_since_trial: float = 0.0
    next_dt: float | None = None  # the step the next segment starts from (a trial segment clipped at its end)

    def table(self) -> CostTable:
        return CostTable(*self.costs)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "AutoState":
        data = json.loads(text)
        trial = data.get("trial")
        if trial is not None:
            trial = Trial(trial["span"], trial["explicit_step"], tuple(tuple(s) for s in trial["segments"]))
        data["trial"], data["costs"] = trial, tuple(data["costs"])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class FixedState:
    current: str
    next_dt: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "FixedState":
        return cls(**json.loads(text))


class FixedSolver(eqx.Module):
    """One solver throughout: `fs.simulate(..., solver=fs.FixedSolver("tsit5"))` is exactly
    `solver="tsit5"` (the same program, bitwise the same `Trajectory`).

    **Arguments:**

    - `solver`: a solver name (`"tsit5" | "dopri5" | "dopri8" | "kvaerno3" | "kvaerno4" |
      "kvaerno5" | "kencarp4" | "kencarp5"`) or a `diffrax.AbstractSolver` instance
      (`diffrax.Tsit5()`); anything else (`"auto"` included: that is `fs.AutoSolver()`) is refused
      with a `ValueError` naming it.
    - `note`: the reason recorded for it in `traj.info["auto"]` when it stands in for `solver="auto"`
      (None, the default: nothing is recorded).

    A policy (`init(plan) -> state`, `decide(state, measurement) -> (state, solver, reason)`) whose
    answer never changes."""

    solver: Any
    note: str | None = eqx.field(default=None, static=True)

    measures: ClassVar[bool] = False  # the driver need not estimate ρ or count Krylov iterations for it

    def __check_init__(self):
        if isinstance(self.solver, diffrax.AbstractSolver):
            return
        if not isinstance(self.solver, str) or self.solver not in FIXED_SOLVER_NAMES:
            hint = " (for auto, use fs.AutoSolver())" if isinstance(self.solver, str) and self.solver == "auto" else ""
            raise ValueError(f"FixedSolver: unknown solver {self.solver!r}{hint}; valid solvers are "
                             f"{list(FIXED_SOLVER_NAMES)} or a diffrax.AbstractSolver instance (e.g. diffrax.Tsit5())")

    @property
    def name(self) -> str:
        """The name the solver is reported and keyed by: its own, or a Diffrax object's class name."""
        return self.solver if isinstance(self.solver, str) else type(self.solver).__name__

    def init(self, plan=None) -> FixedState:
        del plan
        return FixedState(self.name)

    def decide(self, state: FixedState, measurement: Measurement):
        del measurement
        return state, state.current, None

    def segment_end(self, state, time0: float, horizon: float) -> float:
        del state, time0
        return horizon

    def segment_steps(self, state, max_steps: int) -> int:
        del state
        return min(max_steps, SEGMENT_STEPS)

    def state_from_json(self, text: str) -> FixedState:
        return FixedState.from_json(text)


class AutoSolver(eqx.Module):
    """`solver="auto"` as an object: explicit ↔ implicit on counted cost (the rule is this module's
    docstring, and the docs' "How `auto` decides").

    `fs.simulate(..., solver=fs.AutoSolver())` is exactly `solver="auto"` (bitwise the same
    `Trajectory`). `fs.AutoSolver(explicit="dopri5", implicit="kvaerno3")` runs the same rule
    between another pair of solvers.

    **Arguments:**

    - `explicit`: the solver it starts with and returns to, one of `"tsit5"` (default),
      `"dopri5"`, `"dopri8"`.
    - `implicit`: the solver it tries where the flow is stiff, one of `"kvaerno5"` (default),
      `"kvaerno3"`, `"kvaerno4"`, `"kencarp4"`, `"kencarp5"`.

    Another name is refused with a `ValueError` naming it and the valid ones. Under `jit`/`vmap`
    nothing can be measured: the implicit solver runs in log time, the explicit one in linear time;
    a non-smooth model runs the explicit solver throughout."""

    explicit: str = eqx.field(default=AUTO_EXPLICIT, static=True)
    implicit: str = eqx.field(default=AUTO_IMPLICIT, static=True)

    measures: ClassVar[bool] = True

    def __check_init__(self):
        for role, value, valid in (("explicit", self.explicit, EXPLICIT_STAGES),
                                   ("implicit", self.implicit, IMPLICIT_STAGES)):
            if not isinstance(value, str) or value not in valid:
                raise ValueError(f"AutoSolver: unknown {role} solver {value!r}; valid {role} solvers are "
                                 f"{list(valid)}")

    @property
    def solvers(self) -> tuple[str, str]:
        return (self.explicit, self.implicit)

    def init(self, plan) -> AutoState:
        """`plan`: anything with `costs` (a `CostTable`) and `linear_solver` ("dense" | "krylov")."""
        table = plan.costs
        return AutoState(self.explicit, table.as_tuple(), plan.linear_solver)

    def state_from_json(self, text: str) -> AutoState:
        return AutoState.from_json(text)

    def segment_end(self, state: AutoState, time0: float, horizon: float) -> float:
        return horizon if state.trial is None else min(horizon, time0 + state.trial.span)

    def segment_steps(self, state: AutoState, max_steps: int) -> int:
        return min(max_steps, IMPLICIT_SEGMENT_STEPS if state.current == self.implicit else SEGMENT_STEPS)

    def _is_explicit(self, name: str) -> bool:
        return name in EXPLICIT_STAGES

    def decide(self, state: AutoState, m: Measurement):
        """(new state, solver for the next segment, reason: a sentence when it switched or judged a trial,
        else None). Pure: a function of `state` and `m` only."""
        state = dataclasses.replace(state, next_dt=None)
        span = m.time1 - m.time0
        if m.finished or m.steps == 0 or not span > 0:
            return state, state.current, None
        cost = state.table().step(m.solver, state.linear_solver, m.krylov_iterations)
        work = m.steps * cost
        step = m.dt
        if state.trial is not None:
            state, step, judged = self._trial_segment(state, m, work, step)
            if not judged:
                return state, state.current, None
        if not (math.isfinite(step) and step > 0):
            return state, state.current, None
        if self._is_explicit(state.current):
            return self._after_explicit(state, m, cost, work, step)
        return self._after_implicit(state, m, cost)

    def _trial_segment(self, state: AutoState, m: Measurement, work: float, step: float):
        """Record a trial segment: (state, step, whether the trial can be judged now)."""
        span = m.time1 - m.time0
        next_dt = None
        if m.accepted > 0 and not (math.isfinite(step) and step * m.accepted >= span):
            # The segment's last step was clipped to its end, and the controller's next proposal with it:
            # the mean accepted step is the better (conservative) start.
            step = next_dt = span / m.accepted
        trial = state.trial
        segments = (*trial.segments, (work, m.steps, m.accepted, span))
        state = dataclasses.replace(state, trial=Trial(2.0 * trial.span, trial.explicit_step, segments),
                                    next_dt=next_dt)
        # Far behind already (its fresh start included, which only overstates the cost a few-fold): lost.
        abandon = (state.explicit_rate is not None and sum(s[2] for s in segments) > 0
                   and sum(s[0] for s in segments) >= TRIAL_ABANDON_FACTOR * state.explicit_rate
                   * sum(s[3] for s in segments))
        measured = segments[1:]
        short = (sum(s[2] for s in measured) < TRIAL_MIN_STEPS
                 or (sum(s[3] for s in measured) < TRIAL_EXPLICIT_STEPS * trial.explicit_step
                     and sum(s[1] for s in measured) < TRIAL_EXPLICIT_STEPS))
        return state, step, abandon or not short

    def _after_explicit(self, state: AutoState, m: Measurement, cost: float, work: float, step: float):
        rate = cost / step  # explicit steps change slowly: at the step proposed next
        state = dataclasses.replace(state, explicit_rate=rate, explicit_step_cost=cost,
                                    explicit_cost_since_trial=state.explicit_cost_since_trial + work)
        rho = m.rho if math.isfinite(m.rho) else (math.inf if m.rho == math.inf else 0.0)
        ratio = step * rho
        # Steps far below the time already covered, whatever ρ says (a field that is round-off noise once the loss
        # is at machine precision), are worth a trial too; not when most are rejected: that is a kink, which an
        # implicit solver does not step over any better.
        crawling = step < CRAWL_STEP * max(m.time1, 1.0) and m.rejected < CRAWL_MAX_REJECTED * m.steps
        if ((ratio >= STIFF_STEP_RATIO or crawling) and m.time1 >= state.next_trial_time
                and state.explicit_cost_since_trial >= state.trial_cost_owed):
            why = f"explicit h·ρ = {ratio:.3g}" if ratio >= STIFF_STEP_RATIO else f"explicit h = {step:.3g}"
            state = dataclasses.replace(state, current=self.implicit,
                                        trial=Trial(TRIAL_FIRST_SPAN * step, step, ()))
            return state, self.implicit, f"trial: {why}"
        return state, state.current, None

    def _after_implicit(self, state: AutoState, m: Measurement, cost: float):
        trial = state.trial
        if trial is not None:
            measured = trial.segments[1:] or trial.segments
            rate = sum(s[0] for s in measured) / sum(s[3] for s in measured)
        else:
            rate = cost * m.steps / (m.time1 - m.time0)  # implicit steps grow: over the time actually covered
        state = dataclasses.replace(state, trial=None)
        explicit_rate = state.explicit_rate
        if trial is not None and explicit_rate is not None and rate >= TRIAL_MARGIN * explicit_rate:
            # A trial lost by far is retried correspondingly later (stiffness that makes up a 10^4 gap would
            # show as a far larger h·ρ first).
            lost_by = rate / (TRIAL_MARGIN * explicit_rate)
            trial_work = sum(s[0] for s in trial.segments)
            state = dataclasses.replace(
                state, current=self.explicit, next_dt=None,
                next_trial_time=m.time1 + (RETRY_FACTOR - 1.0) * max(abs(m.time1), m.time1 - m.time0),
                trial_cost_owed=RETRY_COST_FACTOR * trial_work * max(1.0, lost_by), explicit_cost_since_trial=0.0)
            return state, self.explicit, (f"trial lost: implicit {rate:.3g} vs explicit {explicit_rate:.3g} "
                                          "flop-equivalents per unit time")
        if state.explicit_step_cost is not None:
            mean_step = (m.time1 - m.time0) / max(m.accepted, 1)
            rho = m.rho if math.isfinite(m.rho) else 0.0
            explicit_step = min(mean_step, EXPLICIT_STABLE_STEP / rho) if rho > 0 else mean_step
            predicted = state.explicit_step_cost / explicit_step
            if predicted < SWITCH_BACK_FACTOR * rate:
                state = dataclasses.replace(state, current=self.explicit, next_dt=None)
                return state, self.explicit, (f"not stiff: explicit {predicted:.3g} vs implicit {rate:.3g} "
                                              "flop-equivalents per unit time")
            if trial is not None:
                return state, state.current, (f"stiff: implicit {rate:.3g} vs explicit {explicit_rate:.3g} "
                                              "flop-equivalents per unit time")
        return state, state.current, None
