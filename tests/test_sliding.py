"""Event-driven sliding (flowsim._sliding) against independent references.

Oracles: the hand-solved single-neuron flow of tests/test_nonsmooth.py (smooth piece, sliding
along a kink, exit) in closed form, its event times included; the same flow with a transversal
crossing, two linear ODEs glued at the crossing (matrix exponentials); the band field of
`fs.simulate` at tight tolerances on a small two-layer net (agreement to the band's size).
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from conftest import linear_phase_to_kink
from test_nonsmooth import GAMMA, W0, Y1, Y2, N, single_neuron_data, single_neuron_problem, sliding_closed_form

import flowsim as fs
from flowsim._sliding import simulate_sliding

nets = fs.networks
T_END = 12.0


def test_sliding_matches_the_hand_solved_flow_and_its_event_times():
    (expected,), t1, t2 = sliding_closed_form(0.3, [T_END])
    sol = simulate_sliding(single_neuron_problem(0.3), np.log(T_END), rtol=1e-11, atol=1e-13)
    assert sol.ok, sol.message
    assert sol.events == [("slide", 0), ("leave", 0)] and sol.missed == 0
    # Event times: the kink is reached at t1 and left at t2 (closed form).
    np.testing.assert_allclose(sol.log_t[1:3], np.log([t1, t2]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(sol.theta[-1], expected, rtol=0, atol=1e-8)
    # While sliding w1 stays on the kink (z = w1), to round-off.
    assert abs(sol.theta[2, 0]) < 1e-12 and sol.max_drift.max() < 1e-12
    assert sol.stratum_size.tolist() == [0, 0, 1, 0]  # the stratum of the segment ending at each point


def crossing_closed_form(c, t_end):
    """Phase 1 until w1 = 0 at t1, then the linear flow with x1 scaled by γ (no sliding)."""
    X, y = single_neuron_data(c)
    phase1, t1 = linear_phase_to_kink(X, y, W0, N)
    assert c * (Y2 - phase1(t1)[1]) < GAMMA  # transversal, by construction
    x1 = np.array([GAMMA, 0.0])
    A3 = np.outer(x1, x1) + np.outer(X[1], X[1])
    w3_star = np.linalg.solve(A3, Y1 * x1 + Y2 * X[1])
    return w3_star + scipy.linalg.expm(-A3 * (t_end - t1) / N) @ (phase1(t1) - w3_star), t1


def test_transversal_crossing_flips_the_sign_and_is_not_held():
    expected, t1 = crossing_closed_form(0.05, T_END)
    sol = simulate_sliding(single_neuron_problem(0.05), np.log(T_END), rtol=1e-11, atol=1e-13)
    assert sol.ok, sol.message
    assert sol.events == [("cross", 0)] and sol.missed == 0
    assert sol.stratum_size.max() == 0
    np.testing.assert_allclose(sol.log_t[1], np.log(t1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(sol.theta[-1], expected, rtol=0, atol=1e-8)
    assert sol.theta[-1, 0] < 0  # on the other side


def small_net_problem():
    rng = np.random.default_rng(0)
    n, d = 6, 3
    X = rng.normal(size=(n, d))
    y = np.sign(rng.normal(size=n))
    net = nets.TwoLayer(0.5 * rng.normal(size=(3, d)), np.array([1.0, -1.0, 0.5]), 0.1)
    return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())


def test_small_two_layer_net_agrees_with_the_band_field():
    problem = small_net_problem()
    sol = simulate_sliding(problem, 4.0, rtol=1e-10, atol=1e-12)
    assert sol.ok, sol.message
    kinds = [kind for kind, _ in sol.events]
    assert kinds.count("slide") >= 2 and kinds.count("cross") >= 5 and sol.missed == 0
    assert sol.stratum_size[-1] >= 2  # pairs still sliding at the end
    assert sol.max_drift.max() < 1e-11  # the Baumgarte term holds z_S = 0
    traj = fs.simulate(problem, log_t1=4.0, rtol=1e-10, atol=1e-12)
    assert bool(traj.ok), traj.message
    # The band field slides at an offset of the band (10 × the tolerances): O(1e-9).
    np.testing.assert_allclose(np.asarray(sol.final.W), np.asarray(traj.final.W), rtol=0, atol=1e-8)


class SmoothModel(eqx.Module):
    w: jnp.ndarray

    def __call__(self, x):
        return jnp.tanh(self.w @ x)


def test_bad_inputs_are_refused():
    X, y = single_neuron_data(0.3)
    with pytest.raises(TypeError, match="no kinks to slide on"):
        simulate_sliding(fs.Problem(SmoothModel(jnp.ones(2)), X, y), 1.0)
    with pytest.raises(TypeError, match="flowsim.Problem"):
        simulate_sliding("problem", 1.0)
    deep = nets.MLP([np.ones((2, 2)), np.ones((2, 2)), np.ones(2)])
    with pytest.raises(ValueError, match="one kink layer per sample.*depth 3"):
        simulate_sliding(fs.Problem(deep, X, y), 1.0)
    problem = single_neuron_problem(0.3)
    with pytest.raises(ValueError, match="log_t1 must be finite"):
        simulate_sliding(problem, np.inf)
    with pytest.raises(ValueError, match="rtol must be a positive"):
        simulate_sliding(problem, 1.0, rtol=-1.0)
    with pytest.raises(ValueError, match="drift_rate must be a positive"):
        simulate_sliding(problem, 1.0, drift_rate=0.0)
    with pytest.raises(ValueError, match="max_sliding must be at least 1"):
        simulate_sliding(problem, 1.0, max_sliding=0)
