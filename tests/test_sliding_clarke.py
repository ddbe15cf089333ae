"""Event-driven sliding (flowsim._sliding) against independent references.

Oracles: the min-norm element of the Clarke subdifferential at states built exactly on a stratum
(a convex QP over the held slopes in cvxpy, solved by Clarabel to a duality gap of 1e-14; the gradient
written by hand in numpy), against the equivalent-control field; and, for two pairs held at once: two identical units with output weights 1/2 compute the single neuron of
tests/test_nonsmooth.py, each unit's gradient is half the neuron's, so each row of W follows the
hand-solved single-neuron flow at half speed, w_u(t) = w(t / 2): both (sample 0, unit u) pairs
reach their kink together at 2·t1, slide together and leave together at 2·t2 (closed form).
"""

import cvxpy as cp
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


def _hand_gradient(W, a, X, y, slopes):
    """∂L/∂W of L = (1/n) Σ_i ½(Σ_u a_u d_iu ⟨w_u, x_i⟩ − y_i)², slopes d fixed (numpy, by hand)."""
    Z = X @ W.T
    r = (Z * slopes) @ a - y
    return ((r[:, None] * slopes * a[None, :]).T @ X) / len(y)


def _min_norm_clarke(g0, G, lo, hi):
    """argmin over δ ∈ [lo, hi] of ‖g0 + G δ‖² (a convex QP; Clarabel's interior point, gap and feasibility
    tolerances 1e-14: on such small dense problems it matches an exact active-set solve to ~1e-12 relative)."""
    delta = cp.Variable(G.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(g0 + G @ delta)), [delta >= lo, delta <= hi])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14, tol_ktratio=1e-12)
    assert problem.status == cp.OPTIMAL, problem.status
    return delta.value


def test_each_strata_field_is_the_min_norm_clarke_element():
    import jax.numpy as jnp

    from flowsim._flow import make_field
    from flowsim._sliding import _Segment

    n, d, m, gamma = 6, 5, 3, 0.1
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(n, d)), rng.normal(size=n)
    a = np.array([1.0, -0.7, 0.5])
    compared = 0
    for trial in range(60):
        W, k = rng.normal(size=(m, d)), 1 + trial % 2
        S = [(int(i), int(u)) for i, u in zip(rng.choice(n, k, replace=False), rng.integers(0, m, k))]
        for u in range(m):  # project w_u so that ⟨w_u, x_i⟩ = 0 for (i, u) in S, exactly enough
            rows = np.array([X[i] for i, v in S if v == u])
            if len(rows):
                Q, _ = np.linalg.qr(rows.T)
                W[u] -= Q @ (Q.T @ W[u])
        Z = X @ W.T
        base = np.where(Z > 0, 1.0, gamma)
        net = fs.networks.TwoLayer(W, a, gamma)
        problem = fs.Problem(net, X, y, "squared", trainable=net.first_layer_filter())
        theta, field = make_field(problem, log_time=True, rtol=1e-10, atol=1e-12)
        seg = _Segment(field, gamma, 10.0, (n, m))
        index = np.array([i * m + u for i, u in S])
        rate, dS = seg.rates(
            jnp.asarray(0.0), theta, jnp.asarray(base.ravel()), jnp.asarray(index), jnp.ones(len(S), bool)
        )
        rate, dS = np.asarray(rate).reshape(m, d), np.asarray(dS)
        if not np.all((dS > gamma + 1e-6) & (dS < 1 - 1e-6)):
            continue
        # (b) min-norm Clarke element: min ‖g0 + Σ_s (d_s − base_s) G_s‖² over d_S in [γ, 1].
        g0 = _hand_gradient(W, a, X, y, base).ravel()
        G = []
        for i, u in S:
            e = np.zeros_like(base)
            e[i, u] = 1.0
            G.append(_hand_gradient(W, a, X, y, base + e).ravel() - g0)
        G = np.array(G).T
        lo, hi = gamma - base[tuple(np.array(S).T)], 1.0 - base[tuple(np.array(S).T)]
        delta = _min_norm_clarke(g0, G, lo, hi)
        clarke = -(g0 + G @ delta).reshape(m, d)
        np.testing.assert_allclose(rate, clarke, rtol=1e-8, atol=1e-12 * np.abs(clarke).max())
        # The min-norm element keeps every held pair on its kink: ż_s = ⟨x_i, w_u'⟩ = 0.
        zdot = np.array([X[i] @ clarke[u] for i, u in S])
        np.testing.assert_allclose(zdot, 0.0, atol=1e-10 * np.abs(clarke).max())
        compared += 1
    assert compared >= 3, compared
