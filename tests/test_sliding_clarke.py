"""Event-driven sliding (flowsim._sliding) with two pairs held at once, against a closed form.

Oracle: two identical units with output weights 1/2 compute the single neuron of
tests/test_nonsmooth.py, each unit's gradient is half the neuron's, so each row of W follows the
hand-solved single-neuron flow at half speed, w_u(t) = w(t / 2): both (sample 0, unit u) pairs
reach their kink together at 2·t1, slide together and leave together at 2·t2 (closed form).
"""

import numpy as np
from test_nonsmooth import GAMMA, W0, single_neuron_data, sliding_closed_form

import flowsim as fs
from flowsim._sliding import simulate_sliding

T_END = 12.0


def test_two_pairs_slide_at_once_and_match_the_hand_solved_flow():
    (expected,), t1, t2 = sliding_closed_form(0.3, [T_END / 2])
    net = fs.networks.TwoLayer(np.stack([W0, W0]), np.array([0.5, 0.5]), GAMMA)
    X, y = single_neuron_data(0.3)
    problem = fs.Problem(net, X, y, "squared", trainable=net.first_layer_filter())
    sol = simulate_sliding(problem, np.log(T_END), rtol=1e-11, atol=1e-13)
    assert sol.ok, sol.message
    assert sol.missed == 0
    # Pairs are flattened sample-major: (sample 0, unit u) is pair u.
    assert sorted(sol.events[:2]) == [("slide", 0), ("slide", 1)], sol.events
    assert sorted(sol.events[2:]) == [("leave", 0), ("leave", 1)], sol.events
    assert sol.stratum_size.max() == 2  # both pairs held in one segment
    slide = int(np.argmax(sol.stratum_size))
    np.testing.assert_allclose(sol.log_t[slide - 1], np.log(2 * t1), rtol=0, atol=1e-8)
    np.testing.assert_allclose(sol.log_t[slide], np.log(2 * t2), rtol=0, atol=1e-8)
    # While both slide, both rows stay on the kink z = w_u[0] = 0 (round-off).
    np.testing.assert_allclose(sol.theta[slide].reshape(2, 2)[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(sol.theta[-1].reshape(2, 2), np.stack([expected, expected]), rtol=0, atol=1e-8)
