"""Input checks of the plan (issue 21): bad save times and checkpoint intervals are refused or flagged
per member, never clamped or failed deep inside Diffrax; advice when out of steps fits the problem."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.dot(x, self.w)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 3))
    return fs.Problem(Linear(jnp.zeros(3)), X, X @ rng.normal(size=3), "squared")


@pytest.fixture(scope="module")
def stiff():
    """Hessian eigenvalues 1 to 10^6: stiff in linear time."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    X = np.sqrt(6.0) * np.diag(np.sqrt(np.logspace(0, 6, 6))) @ Q.T
    return fs.Problem(Linear(jnp.zeros(6)), X, X @ rng.normal(size=6), "squared")


GOOD = np.array([-np.inf, -2.0, -1.0, 0.0])


def test_a_traced_non_increasing_save_grid_is_invalid_input_for_that_member_only(small):
    grids = jnp.asarray(np.stack([GOOD, np.array([-np.inf, -1.0, -2.0, 0.0])]))
    traj = eqx.filter_vmap(lambda grid: fs.simulate(small, t1=1.0, solver="tsit5", save_log_t=grid))(grids)
    status = np.asarray(traj.status)
    assert status[0] == fs.Status.HORIZON_REACHED and status[1] == fs.Status.INVALID_INPUT
    assert "member 1" in traj.message and "save_log_t" in traj.message


def test_a_traced_horizon_before_the_last_save_time_is_invalid_input_not_clamped(small):
    traj = eqx.filter_vmap(lambda log_t1: fs.simulate(small, log_t1=log_t1, time="linear", solver="tsit5",
                                                      save_log_t=GOOD))(jnp.asarray([0.5, -0.5]))
    status = np.asarray(traj.status)
    assert status[0] == fs.Status.HORIZON_REACHED and status[1] == fs.Status.INVALID_INPUT, status


@pytest.mark.parametrize("grid, match", [
    (np.array([-np.inf, 0.0, 1.0]), "beyond the horizon"),
    (np.array([-np.inf, 0.0, -1.0]), "strictly increasing; it goes from 0.0 to -1.0"),
    (np.array([-np.inf, np.nan]), "NaN"),
    ("soon", "save_log_t must be a 1-d array"),
])
def test_a_bad_concrete_save_grid_is_refused(small, grid, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fs.simulate(small, t1=1.0, save_log_t=grid)


@pytest.mark.parametrize("every, error, match", [
    ("5", TypeError, r"checkpoint_every_s must be a number of seconds .* got '5'"),
    (math.nan, ValueError, r"checkpoint_every_s must be a finite number of seconds ≥ 0, got nan"),
    (-1.0, ValueError, r"got -1.0"),
    (math.inf, ValueError, r"got inf"),
    (True, TypeError, r"got True"),
])
def test_a_bad_checkpoint_interval_is_refused_before_any_segment(small, tmp_path, every, error, match):
    path = tmp_path / "solve.npz"
    with pytest.raises(error, match=match):
        fs.simulate(small, t1=1.0, checkpoint=path, checkpoint_every_s=every)
    assert not path.exists()


def test_advice_for_a_stiff_smooth_problem_out_of_steps_names_stiffness_not_kinks(stiff):
    # Kvaerno5 at rtol = 1e-12: steps held by accuracy in the fast transient; Tsit5 would need ~10^6 steps.
    implicit = fs.simulate(stiff, t1=5.0, solver="kvaerno5", rtol=1e-12, atol=1e-14, max_steps=100)
    assert implicit.status == fs.Status.MAX_STEPS
    assert "kink" not in implicit.message and "solver='tsit5'" not in implicit.message, implicit.message
    assert "loosen rtol/atol (rtol = 1e-12" in implicit.message and "stiff" in implicit.message, implicit.message
    explicit = fs.simulate(stiff, t1=5.0, solver="tsit5", max_steps=200)
    assert explicit.status == fs.Status.MAX_STEPS
    assert "kink" not in explicit.message and "use an implicit solver" in explicit.message, explicit.message


@pytest.mark.parametrize(
    "rtol, atol, match",
    [
        (0.5, 1e-10, r"rtol must be in \[2.22e-15, 0.1\].*got 0.5"),
        (1e-30, 1e-10, r"rtol must be in .*got 1e-30"),
        (1e-8, 10.0, r"atol must be at most 0.1.*got 10"),
        (float("nan"), 1e-10, "rtol must be positive and finite"),
    ],
)
def test_tolerances_outside_what_float64_and_the_flow_allow_are_refused(small, rtol, atol, match):
    with pytest.raises(ValueError, match=match):
        fs.simulate(small, log_t1=2.0, rtol=rtol, atol=atol)
