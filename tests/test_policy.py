"""The solver policies on recorded (fake) measurement sequences: no solve, no clock.

`AutoSolver.decide` is a pure function of its state and a `Measurement` (counts, step sizes, ρ), so
each rule of `flowsim._policy` is checked here on hand-made sequences: switch to the implicit solver,
win a trial, lose a trial, wait before retrying, retry, switch back; and the state survives a
round trip through JSON (what a checkpoint stores)."""

import math
import types

import pytest

from flowsim._costs import CostTable
from flowsim._policy import (
    IMPLICIT_SEGMENT_STEPS,
    SEGMENT_STEPS,
    TRIAL_FIRST_SPAN,
    AutoSolver,
    AutoState,
    FixedSolver,
    Measurement,
)

# E = 1000, J = 2000 flop-equivalents at p = 10: an explicit step costs 14,000, an implicit one ~189,000.
PLAN = types.SimpleNamespace(costs=CostTable(1_000.0, 2_000.0, 10), linear_solver="dense")


def explicit(time0, time1, dt, rho, steps=SEGMENT_STEPS, rejected=0):
    return Measurement("tsit5", time0, time1, steps, steps - rejected, rejected, dt, rho=rho)


def implicit(time0, time1, steps, dt, rho=1e4):
    return Measurement("kvaerno5", time0, time1, steps, steps, 0, dt, rho=rho)


def start_trial(policy):
    """A stiff explicit segment (h·ρ = 5): a trial starts."""
    state = policy.init(PLAN)
    assert state.current == "tsit5" and policy.segment_steps(state, 10**6) == SEGMENT_STEPS
    state, solver, reason = policy.decide(state, explicit(0.0, 0.5, dt=1e-3, rho=5e3))
    assert solver == "kvaerno5" and reason.startswith("trial: explicit h·ρ = 5"), reason
    assert state.trial is not None and state.trial.span == pytest.approx(TRIAL_FIRST_SPAN * 1e-3)
    assert policy.segment_steps(state, 10**6) == IMPLICIT_SEGMENT_STEPS
    assert policy.segment_end(state, 0.5, 100.0) == pytest.approx(0.5 + TRIAL_FIRST_SPAN * 1e-3)
    # The first trial segment (a fresh start's small steps) is never judged.
    state, solver, reason = policy.decide(state, implicit(0.5, 0.532, steps=10, dt=0.01))
    assert solver == "kvaerno5" and reason is None and len(state.trial.segments) == 1
    return state


def test_auto_switches_to_the_implicit_solver_and_keeps_a_trial_that_wins():
    policy = AutoSolver()
    state = start_trial(policy)
    # Ten implicit steps over a unit of time: ~1.9e6 per unit time against the explicit 1.4e7.
    state, solver, reason = policy.decide(state, implicit(0.532, 1.532, steps=10, dt=0.2))
    assert solver == "kvaerno5" and reason.startswith("stiff: implicit"), reason
    assert state.trial is None
    # Judged and kept: the next implicit segments run to the horizon (no span), in implicit-sized segments.
    assert policy.segment_end(state, 1.532, 100.0) == 100.0


def test_a_lost_trial_goes_back_to_explicit_and_waits_before_a_retry():
    policy = AutoSolver()
    state = start_trial(policy)
    # 200 implicit steps over 0.128: ~3e8 per unit time, 14x beyond the margin over explicit: lost.
    state, solver, reason = policy.decide(state, implicit(0.532, 0.66, steps=200, dt=6.4e-4))
    assert solver == "tsit5" and reason.startswith("trial lost: implicit"), reason
    assert state.trial is None and state.next_trial_time > 0.66 and state.trial_cost_owed > 0
    owed = state.trial_cost_owed
    # Still stiff, but before the solve has doubled its time: no retry.
    state, solver, reason = policy.decide(state, explicit(0.66, 1.0, dt=1e-3, rho=5e3))
    assert solver == "tsit5" and reason is None
    # Time has grown enough but the explicit work since the lost trial is below what it owes: no retry yet.
    state, solver, reason = policy.decide(state, explicit(1.0, 1.6, dt=1e-3, rho=5e3, steps=10))
    assert solver == "tsit5" and reason is None and state.explicit_cost_since_trial < owed
    # Enough explicit work done: the trial is retried.
    steps = int(owed / policy.init(PLAN).table().step("tsit5")) + 1
    state, solver, reason = policy.decide(state, explicit(1.6, 50.0, dt=1e-3, rho=5e3, steps=steps))
    assert solver == "kvaerno5" and reason.startswith("trial:"), reason


def test_a_hopeless_trial_is_lost_at_once():
    policy = AutoSolver()
    state = policy.init(PLAN)
    state, solver, _ = policy.decide(state, explicit(0.0, 0.5, dt=1e-3, rho=5e3))
    # The first segment alone is 20x behind the explicit rate: lost without waiting for a measurement.
    state, solver, reason = policy.decide(state, implicit(0.5, 0.5 + 1e-5, steps=32, dt=3e-7))
    assert solver == "tsit5" and reason.startswith("trial lost"), reason


def test_auto_switches_back_when_the_flow_is_no_longer_stiff():
    policy = AutoSolver()
    state = start_trial(policy)
    state, solver, _ = policy.decide(state, implicit(0.532, 1.532, steps=10, dt=0.2))
    assert solver == "kvaerno5"
    # Implicit steps of 0.1, where ρ has fallen to 1: explicit steps of 0.1 are stable and 13x cheaper.
    state, solver, reason = policy.decide(state, implicit(1.532, 4.732, steps=32, dt=0.1, rho=1.0))
    assert solver == "tsit5" and reason.startswith("not stiff: explicit"), reason


def test_a_segment_that_did_nothing_or_finished_changes_nothing():
    policy = AutoSolver()
    state = policy.init(PLAN)
    for m in (explicit(0.0, 0.0, dt=1e-3, rho=5e3), explicit(0.0, 1.0, 1e-3, 5e3)._replace(finished=True), explicit(0.0, 1.0, dt=math.nan, rho=5e3)):
        new, solver, reason = policy.decide(state, m)
        assert solver == "tsit5" and reason is None and new.trial is None


def test_a_crawling_explicit_solve_gets_a_trial_unless_its_steps_are_rejected():
    policy = AutoSolver()
    state = policy.init(PLAN)
    crawl = explicit(1e3, 1.0001e3, dt=1e-3, rho=0.0)  # h = 1e-3 at t = 1000: below 1e-4 · t
    assert policy.decide(state, crawl)[1] == "kvaerno5"
    kinks = explicit(1e3, 1.0001e3, dt=1e-3, rho=0.0, rejected=300)
    assert policy.decide(state, kinks)[1] == "tsit5"


def test_the_state_survives_a_checkpoint_round_trip_and_the_policy_continues_alike():
    policy = AutoSolver()
    state = start_trial(policy)
    restored = AutoState.from_json(state.to_json())
    assert restored == state
    m = implicit(0.532, 1.532, steps=10, dt=0.2)
    assert policy.decide(restored, m) == policy.decide(state, m)


def test_a_fixed_solver_never_switches():
    policy = FixedSolver("kvaerno5")
    state = policy.init(PLAN)
    for m in (explicit(0.0, 0.5, dt=1e-3, rho=5e3), implicit(0.5, 1.0, steps=400, dt=1e-4)):
        state, solver, reason = policy.decide(state, m)
        assert solver == "kvaerno5" and reason is None
    assert policy.segment_end(state, 0.3, 7.0) == 7.0
    assert policy.state_from_json(state.to_json()) == state
