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


# --------------------------------------------------------------------------------------------
# The policies as public `solver=` values (issue 19)


def _stiff_quadratic():
    """Squared loss of a linear model, Hessian eigenvalues 1 … 10^4 (auto switches to implicit)."""
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import flowsim as fs

    class Linear(eqx.Module):
        w: object

        def __call__(self, x):
            return jnp.dot(x, self.w)

    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    X = np.sqrt(6.0) * np.diag(np.sqrt(np.logspace(0, 4, 6))) @ Q.T
    return fs.Problem(Linear(jnp.zeros(6)), X, X @ rng.normal(size=6), "squared"), X


def _same(a, b):
    import jax
    import numpy as np

    keep = lambda tr: (tr.log_t, tr.params, tr.loss, tr.log_loss, tr.status,  # noqa: E731
                       {k: v for k, v in tr.stats.items() if k != "wall_time_s"})
    for x, y in zip(jax.tree_util.tree_leaves(keep(a)), jax.tree_util.tree_leaves(keep(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.info == b.info


def test_policy_instances_as_solver_are_bitwise_their_names():
    import diffrax

    import flowsim as fs

    problem, _ = _stiff_quadratic()
    auto = fs.simulate(problem, t1=5.0, n_save=6)
    assert [entry[1] for entry in auto.info["auto"]][:2] == ["tsit5", "kvaerno5"], auto.info["auto"]
    _same(fs.simulate(problem, t1=5.0, n_save=6, solver=fs.AutoSolver()), auto)
    _same(fs.simulate(problem, t1=5.0, n_save=6, solver=fs.AutoSolver(explicit="tsit5", implicit="kvaerno5")), auto)
    fixed = fs.simulate(problem, t1=0.01, n_save=4, solver="tsit5")
    _same(fs.simulate(problem, t1=0.01, n_save=4, solver=fs.FixedSolver("tsit5")), fixed)
    _same(fs.simulate(problem, t1=0.01, n_save=4, solver=fs.FixedSolver(diffrax.Tsit5())),
          fs.simulate(problem, t1=0.01, n_save=4, solver=diffrax.Tsit5()))


def test_an_auto_solver_with_another_pair_switches_to_its_implicit_solver_and_meets_the_closed_form():
    import numpy as np
    import scipy.linalg

    import flowsim as fs

    problem, X = _stiff_quadratic()
    traj = fs.simulate(problem, t1=5.0, n_save=4, rtol=1e-10, atol=1e-12,
                       solver=fs.AutoSolver(explicit="dopri5", implicit="kvaerno3"))
    ran = [entry[1] for entry in traj.info["auto"]]
    assert bool(traj.ok) and ran[0] == "dopri5" and "kvaerno3" in ran and "kvaerno5" not in ran, traj.info["auto"]
    H, b = X.T @ X / 6, X.T @ np.asarray(problem.y) / 6
    star = np.linalg.solve(H, b)
    exact = star - scipy.linalg.expm(-5.0 * H) @ star  # θ(0) = 0
    np.testing.assert_allclose(np.asarray(traj.final.w), exact, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad", [42, object(), "rk4", None])
def test_any_other_solver_value_is_refused_naming_it_and_the_choices(bad):
    import equinox as eqx
    import jax.numpy as jnp

    import flowsim as fs

    problem, _ = _stiff_quadratic()
    with pytest.raises(ValueError, match=r"unknown solver .*valid solvers are \['auto', 'tsit5'.*fs\.AutoSolver") as info:
        fs.simulate(problem, t1=1.0, solver=bad)
    assert repr(bad) in str(info.value)
    problems = eqx.filter_vmap(lambda w: fs.Problem(type(problem.model)(w), problem.X, problem.y, "squared"))(
        jnp.zeros((2, 6)))
    for schedule in ("lockstep", "refill"):
        with pytest.raises(ValueError, match="unknown solver"):
            fs.simulate_batch(problems, t1=1.0, solver=bad, schedule=schedule)


@pytest.mark.parametrize(("make", "match"), [
    (lambda fs: fs.AutoSolver(explicit="kvaerno5"), r"explicit solver 'kvaerno5'; valid explicit solvers are \['tsit5'"),
    (lambda fs: fs.AutoSolver(implicit="tsit5"), r"implicit solver 'tsit5'; valid implicit solvers are \['kvaerno3'"),
    (lambda fs: fs.AutoSolver(explicit=3), r"explicit solver 3"),
    (lambda fs: fs.FixedSolver("auto"), r"unknown solver 'auto' \(for auto, use fs.AutoSolver\(\)\); valid solvers"),
    (lambda fs: fs.FixedSolver("rk4"), r"unknown solver 'rk4'; valid solvers are \['tsit5'"),
])
def test_a_policy_with_a_bad_solver_name_is_refused(make, match):
    import flowsim as fs

    with pytest.raises(ValueError, match=match):
        make(fs)


def test_a_policy_keys_the_solve_cache_by_its_fields(tmp_path):
    # Inside fs.cache a policy instance is keyed by its class and fields: the same policy replays, another pair
    # of solvers (or another kind of value for solver=) is a different entry.
    import flowsim as fs
    from flowsim._cache import call_key

    problem, _ = _stiff_quadratic()
    key = lambda solver: call_key("simulate", {"problem": problem, "t1": 1.0, "solver": solver})  # noqa: E731
    assert key(fs.AutoSolver()) == key(fs.AutoSolver("tsit5", "kvaerno5"))
    assert len({key(fs.AutoSolver()), key(fs.AutoSolver("dopri5", "kvaerno5")), key("auto"),
                key(fs.FixedSolver("tsit5")), key(fs.FixedSolver("dopri5"))}) == 5
    with fs.cache(tmp_path) as store:
        first = fs.simulate(problem, t1=0.01, n_save=3, solver=fs.FixedSolver("tsit5"))
        again = fs.simulate(problem, t1=0.01, n_save=3, solver=fs.FixedSolver("tsit5"))
    assert store.computed == 1 and store.reused == 1 and store.uncached == 0
    _same(first, again)


@pytest.mark.parametrize("schedule", ["lockstep", "refill"])
def test_simulate_batch_takes_a_policy_as_its_name(schedule):
    # Under vmap auto is the fixed rule (Kvaerno5 in log time): AutoSolver() is "auto" there too, an AutoSolver
    # with another implicit solver runs that one, and a FixedSolver is its name.
    import equinox as eqx
    import jax.numpy as jnp

    import flowsim as fs

    problem, _ = _stiff_quadratic()
    problems = eqx.filter_vmap(lambda w: fs.Problem(type(problem.model)(w), problem.X, problem.y, "squared"))(
        jnp.stack([jnp.zeros(6), 0.1 * jnp.ones(6)]))
    options = dict(log_t1=1.0, n_save=3, schedule=schedule)
    _same_batch(fs.simulate_batch(problems, solver=fs.AutoSolver(), **options),
                fs.simulate_batch(problems, **options))
    _same_batch(fs.simulate_batch(problems, solver=fs.FixedSolver("kvaerno3"), **options),
                fs.simulate_batch(problems, solver="kvaerno3", **options))
    other = fs.simulate_batch(problems, solver=fs.AutoSolver(implicit="kvaerno3"), **options)
    assert other.info["solver"] == "kvaerno3", other.info


def _same_batch(a, b):
    """Bitwise the same batched solves (wall times aside)."""
    import jax
    import numpy as np

    keep = lambda tr: (tr.log_t, tr.params, tr.loss, tr.log_loss, tr.status,  # noqa: E731
                       {k: v for k, v in tr.stats.items() if k != "wall_time_s"})
    for x, y in zip(jax.tree_util.tree_leaves(keep(a)), jax.tree_util.tree_leaves(keep(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    drop = lambda tr: repr({k: v for k, v in tr.info.items() if k != "batch_wall_time_s"})  # noqa: E731
    assert drop(a) == drop(b)
