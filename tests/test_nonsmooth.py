"""ReLU networks through kinks: the minimum-norm Clarke subgradient field, against independent references.

Oracles: a hand-solved three-phase flow (smooth piece, sliding along a kink, exit) in closed form;
scipy's solve_ivp on the two smooth pieces of a transversal crossing, glued at the crossing time;
scipy's bounded least squares (lsq_linear) on subgradient columns built by a numpy backpropagation
written here; jax.grad of the plain loss away from kinks; finite differences for the field's
Jacobian; a Python loop for vmap.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from conftest import linear_phase_to_kink
from scipy.integrate import solve_ivp

import flowsim as fs
from flowsim._flow import make_field
from flowsim._nonsmooth import kink_crossings, kink_statistics

nets = fs.networks

# ---------------------------------------------------------------- the hand-solved single-neuron flow
#
# f(x) = φ(⟨w, x⟩), φ(z) = max(z, γz), w ∈ R², squared loss, n = 2 samples:
#   x1 = (1, 0), y1 = −1   and   x2 = (c, 1), y2 = 3  (z2 > 0 throughout).
# Phase 1 (w1 > 0): a linear ODE, w(t) = w* + e^{−At/n}(w0 − w*), A = Σ x xᵀ, until w1 = 0 at t1.
# At w1 = 0 with slope D ∈ [γ, 1] for sample 1: dw1/dt = (−D + c(y2 − w2))/n. When
# γ < c(y2 − w2) < 1 both sides push into the kink: Filippov sliding with D = c(y2 − w2) (the
# minimum-norm element), w1 = 0 and w2' = (y2 − w2)/n, so w2 = y2 + (w2(t1) − y2)e^{−(t−t1)/n}
# until c(y2 − w2) = γ at t2 = t1 + n log(c(y2 − w2(t1))/γ). Phase 3 (w1 < 0): linear again with
# x1 scaled by γ. With c small, c(y2 − w2) < γ at the kink: a transversal crossing instead.

GAMMA, Y1, Y2, N = 0.2, -1.0, 3.0, 2
W0 = np.array([0.5, 0.5])


def single_neuron_data(c):
    return np.array([[1.0, 0.0], [c, 1.0]]), np.array([Y1, Y2])


def sliding_closed_form(c, times):
    X, y = single_neuron_data(c)
    phase1, t1 = linear_phase_to_kink(X, y, W0, N)
    w2_t1 = phase1(t1)[1]
    assert GAMMA < c * (Y2 - w2_t1) < 1  # a sliding entry, by construction
    t2 = t1 + N * np.log(c * (Y2 - w2_t1) / GAMMA)
    x1 = np.array([GAMMA, 0.0])
    A3 = np.outer(x1, x1) + np.outer(X[1], X[1])
    w3_star = np.linalg.solve(A3, Y1 * x1 + Y2 * X[1])
    w_t2 = np.array([0.0, Y2 + (w2_t1 - Y2) * np.exp(-(t2 - t1) / N)])
    out = []
    for t in times:
        if t <= t1:
            out.append(phase1(t))
        elif t <= t2:
            out.append(np.array([0.0, Y2 + (w2_t1 - Y2) * np.exp(-(t - t1) / N)]))
        else:
            out.append(w3_star + scipy.linalg.expm(-A3 * (t - t2) / N) @ (w_t2 - w3_star))
    return np.array(out), t1, t2


def single_neuron_problem(c, **band):
    net = nets.TwoLayer(W0[None, :], np.array([1.0]), GAMMA, **band)
    X, y = single_neuron_data(c)
    return fs.Problem(net, X, y, "squared", trainable=net.first_layer_filter())


RTOL, ATOL = 1e-10, 1e-12
BAND = {"kink_rtol": 10 * RTOL, "kink_atol": 10 * ATOL}
T_END = 12.0
SAVE_T = np.array([0.5, 1.0, 1.6, 2.0, 2.5, 3.0, 5.0, 8.0])


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5"])
def test_sliding_along_a_kink_matches_the_hand_solved_flow(solver):
    expected, t1, t2 = sliding_closed_form(0.3, np.append(SAVE_T, T_END))
    assert t1 < 1.6 and 2.5 < t2 < 3.0  # two save points inside the sliding phase
    traj = fs.simulate(single_neuron_problem(0.3, **BAND), t1=T_END, solver=solver, rtol=RTOL, atol=ATOL,
                       save_log_t=np.log(SAVE_T))
    assert bool(traj.ok), traj.message
    W = np.asarray(traj.params.W)[:, 0, :]  # (n_save, 2): saves at SAVE_T, then T_END
    np.testing.assert_allclose(W, expected, atol=2e-8)
    sliding = (SAVE_T > t1) & (SAVE_T < t2)
    assert np.all(np.abs(W[:-1][sliding, 0]) < 1e-8)  # on the kink while sliding
    # No chattering: a few hundred steps for the whole solve (a plain gradient stalls, see benchmarks/relu.py).
    assert int(traj.stats["num_steps"]) < 1000


def test_transversal_kink_crossing_matches_scipy_glued_pieces():
    c = 0.05
    X, y = single_neuron_data(c)

    def piece(slope1):
        def rhs(t, w):
            r1 = slope1 * w[0] - y[0]  # f1 = slope1·w1 on its side of the kink
            r2 = X[1] @ w - y[1]
            return -(r1 * slope1 * X[0] + r2 * X[1]) / N

        return rhs

    hit = lambda t, w: w[0]
    hit.terminal, hit.direction = True, -1
    first = solve_ivp(piece(1.0), (0, T_END), W0, events=hit, rtol=1e-12, atol=1e-14, method="DOP853")
    t_cross = first.t_events[0][0]
    w_cross = first.y_events[0][0]
    # Transversal: both sides push w1 down at the kink.
    assert -1.0 + c * (Y2 - w_cross[1]) < 0 and -GAMMA + c * (Y2 - w_cross[1]) < 0
    second = solve_ivp(piece(GAMMA), (t_cross, T_END), w_cross, t_eval=[T_END], rtol=1e-12, atol=1e-14,
                       method="DOP853")
    traj = fs.simulate(single_neuron_problem(c, **BAND), t1=T_END, solver="tsit5", rtol=RTOL, atol=ATOL,
                       save_log_t=np.log(SAVE_T))
    assert bool(traj.ok), traj.message
    np.testing.assert_allclose(np.asarray(traj.final.W[0]), second.y[:, -1], atol=1e-8)
    assert float(traj.final.W[0, 0]) < -0.1  # crossed, did not stick
    assert int(kink_crossings(traj.params, X)) == 1  # one pair changed sign, once


# ---------------------------------------------------------------- the field against bounded least squares


def numpy_gradient(layers, leak, X, Y, slopes, loss):
    """∇L over all layers of x ↦ W_L φ(⋯φ(W_1 x)) with activation derivatives ``slopes`` (n, U),
    by a hand-written backpropagation (numpy). Squared loss (Y (n, k)) or logistic (Y (n,))."""
    n = X.shape[0]
    grads = [np.zeros_like(W) for W in layers]
    for i in range(n):
        hs, start, h = [X[i]], 0, X[i]
        Ds = []
        for W in layers[:-1]:
            z = W @ h
            Ds.append(slopes[i, start:start + z.size])
            start += z.size
            h = np.maximum(z, leak * z)
            hs.append(h)
        out = layers[-1] @ h
        if loss == "squared":
            r = (out - Y[i]) / n
        else:
            r = -Y[i] / (1.0 + np.exp(Y[i] * out)) / n
        r = np.atleast_1d(r)
        WL = np.atleast_2d(layers[-1])
        grads[-1] += (np.outer(r, hs[-1])).reshape(layers[-1].shape)
        delta = WL.T @ r
        for l in range(len(layers) - 2, -1, -1):
            delta = delta * Ds[l]
            grads[l] += np.outer(delta, hs[l])
            delta = layers[l].T @ delta
    return grads


def min_norm_oracle(layers, leak, X, Y, pairs, loss, trained):
    """The minimum-norm element over the free slopes of ``pairs`` (flat (sample, unit) indices)
    restricted to the ``trained`` layers, from scipy's bounded least squares."""
    n = X.shape[0]
    z = []
    for i in range(n):
        h, zi = X[i], []
        for W in layers[:-1]:
            zi.append(W @ h)
            h = np.maximum(zi[-1], leak * zi[-1])
        z.append(np.concatenate(zi))
    z = np.array(z)
    base = np.where(z > 0, 1.0, leak)

    def flat_gradient(free):
        slopes = base.copy().ravel()
        slopes[pairs] = free
        grads = numpy_gradient(layers, leak, X, Y, slopes.reshape(base.shape), loss)
        return np.concatenate([g.ravel() for g, t in zip(grads, trained) if t])

    start = np.full(len(pairs), leak)
    c = flat_gradient(start)
    G = np.stack([flat_gradient(start + np.eye(len(pairs))[k]) - c for k in range(len(pairs))], axis=1)
    solution = scipy.optimize.lsq_linear(G, -(c - G @ start), bounds=(leak, 1.0), tol=1e-14, method="bvls")
    return c + G @ (solution.x - start), solution.x


def field_gradient(problem):
    theta, field = make_field(problem, log_time=False)
    return -np.asarray(field(0.0, theta))


def project_out(w, xs):
    """w minus its component in span(xs): afterwards ⟨w, x⟩ = 0 (to round-off) for each x."""
    Q, _ = np.linalg.qr(np.array(xs).T)
    return w - Q @ (Q.T @ w)


def test_two_layer_field_is_the_min_norm_subgradient():
    rng = np.random.default_rng(25)
    n, d, m, leak = 6, 8, 3, 0.3
    X = rng.standard_normal((n, d))
    y = np.array([1.0, -1, 1, -1, 1, 1])
    W = rng.standard_normal((m, d))
    W[0] = project_out(W[0], [X[0], X[1]])  # two samples at neuron 0's kink
    W[1] = project_out(W[1], [X[2]])  # one at neuron 1's
    a = np.array([1.0, -1.0, 1.0]) / np.sqrt(m)
    net = nets.TwoLayer(W, a, leak)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    pairs = np.array([0 * m + 0, 1 * m + 0, 2 * m + 1])
    layers = [W, a]
    expected, slopes = min_norm_oracle(layers, leak, X, y, pairs, "logistic", trained=[True, False])
    interior = (slopes > leak + 1e-3) & (slopes < 1 - 1e-3)
    assert interior.sum() == 2 and not interior.all()  # two pairs slide (one per unit), one is at a bound
    np.testing.assert_allclose(field_gradient(problem), expected, rtol=1e-9, atol=1e-13)
    stats = kink_statistics(net, X)
    assert int(stats["pairs_at_kink"]) == 3 and int(stats["units_at_kink"]) == 2
    # Away from kinks the field is the ordinary gradient.
    net_off = nets.TwoLayer(rng.standard_normal((m, d)), a, leak)
    plain = fs.Problem(net_off, X, y, "logistic", trainable=net_off.first_layer_filter())
    loss = lambda W: plain.loss_value(eqx.tree_at(lambda t: t.W, net_off, W))
    np.testing.assert_allclose(field_gradient(plain), np.asarray(jax.grad(loss)(net_off.W)).ravel(), rtol=1e-12)
    assert int(kink_statistics(net_off, X)["pairs_at_kink"]) == 0


@pytest.mark.parametrize("depth", [2, 3])
def test_mlp_field_is_the_min_norm_subgradient(depth):
    """Depth 2 uses the rank-one fast path, depth 3 the forward-mode columns (kinks in one layer)."""
    rng = np.random.default_rng(5)
    n, d, h, k, leak = 4, 3, 3, 2, 0.0
    X = rng.standard_normal((n, d))
    Y = rng.standard_normal((n, k))
    layers = [rng.standard_normal((h, d))] + [rng.standard_normal((h, h)) for _ in range(depth - 2)]
    layers.append(rng.standard_normal((k, h)))
    layers[0][1] = project_out(layers[0][1], [X[0], X[2]])
    layers[0][2] = project_out(layers[0][2], [X[1]])
    net = nets.MLP(layers, leak)
    problem = fs.Problem(net, X, Y, "squared")
    U = h * (depth - 1)
    pairs = np.array([0 * U + 1, 2 * U + 1, 1 * U + 2])
    expected, _ = min_norm_oracle(layers, leak, X, Y, pairs, "squared", trained=[True] * depth)
    np.testing.assert_allclose(field_gradient(problem), expected, rtol=1e-9, atol=1e-13)


def test_field_jacobian_matches_finite_differences_while_sliding():
    """Implicit solvers take jax.jacfwd of the field; on a sliding state it must be the derivative
    of the sliding field (the free slope moves with θ)."""
    net = nets.TwoLayer(np.array([[0.0, 0.7]]), np.array([1.0]), GAMMA, kink_rtol=1e-6, kink_atol=1e-8)
    X, y = single_neuron_data(0.3)
    problem = fs.Problem(net, X, y, "squared", trainable=net.first_layer_filter())
    theta, field = make_field(problem, log_time=False)
    jac = np.asarray(jax.jacfwd(lambda th: field(0.0, th))(theta))
    step = 1e-9  # inside the band
    fd = np.stack([(np.asarray(field(0.0, theta + step * e)) - np.asarray(field(0.0, theta - step * e))) / (2 * step)
                   for e in np.eye(2)], axis=1)
    np.testing.assert_allclose(jac, fd, atol=1e-6)
    # The sliding field keeps w1 on the kink: its first component is zero, for every w2.
    assert abs(float(field(0.0, theta)[0])) < 1e-12 and np.allclose(jac[0], 0.0, atol=1e-12)


# ---------------------------------------------------------------- batches, the paper setups, bad inputs


def timor_data():
    x1 = np.array([1.0, 0.99])
    x2 = np.array([-1.0, 0.99])
    return np.stack([x1 / np.linalg.norm(x1), x2 / np.linalg.norm(x2)]), np.eye(2)


def test_vmap_over_seeds_equals_a_loop():
    X, Y = timor_data()
    problems = [fs.Problem(nets.MLP.init(jax.random.key(s), 2, [2], 2, scale=0.5, distribution="ball"), X, Y)
                for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *problems)
    batch = eqx.filter_vmap(lambda p: fs.simulate(p, t1=30.0, solver="tsit5", n_save=5))(stacked)
    for s, problem in enumerate(problems):
        single = fs.simulate(problem, t1=30.0, solver="tsit5", n_save=5)
        assert bool(single.ok) and bool(batch.ok[s])
        for mine, theirs in zip(batch.final.layers, single.final.layers):
            np.testing.assert_allclose(np.asarray(mine[s]), np.asarray(theirs), rtol=1e-7, atol=1e-9)


def test_frei_label_noise_reaches_the_horizon():
    """The issue's stalling example, small: leaky two-layer net, fixed outer layer, label noise.
    A plain gradient field stalls at kinks here (benchmarks/relu.py has the full-size table)."""
    n, d, m, leak = 12, 60, 8, 0.1
    rng = np.random.default_rng(0)
    clean = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    X = clean[:, None] * np.eye(d)[0] * d ** 0.3 + rng.standard_normal((n, d))
    y = clean.copy()
    y[:2] *= -1
    net = nets.TwoLayer.init(jax.random.key(0), d, m, scale=1 / np.sqrt(d), leak=leak)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    traj = fs.simulate(problem, log_t1=4.0, solver="tsit5", max_steps=20_000, n_save=10)
    assert bool(traj.ok), traj.message
    assert np.all(np.diff(np.asarray(traj.log_loss)) < 1e-9)  # the loss decreases along the flow
    np.testing.assert_array_equal(np.asarray(traj.final.a), np.asarray(net.a))  # the outer layer stayed fixed


def test_models_compute_the_papers_networks():
    X, _ = timor_data()
    W1, W2 = np.array([[1.0, -2.0], [0.5, 1.0]]), np.array([[2.0, 0.0], [-1.0, 3.0]])
    net = nets.MLP([W1, W2])
    for x in X:
        np.testing.assert_allclose(np.asarray(net(jnp.asarray(x))), W2 @ np.maximum(W1 @ x, 0.0), rtol=1e-14)
    two = nets.TwoLayer(W1, np.array([0.5, -0.5]), leak=0.1)
    for x in X:
        z = W1 @ x
        np.testing.assert_allclose(float(two(jnp.asarray(x))), 0.5 * max(z[0], 0.1 * z[0]) - 0.5 * max(z[1], 0.1 * z[1]))
    init = nets.TwoLayer.init(jax.random.key(1), 5, 6, scale=0.01, leak=0.2)
    assert np.allclose(np.abs(np.asarray(init.a)), 1 / np.sqrt(6)) and init.W.shape == (6, 5)
    ball = nets.MLP.init(jax.random.key(2), 2, [2], 2, scale=1e-4, distribution="ball")
    assert all(np.all(np.linalg.norm(np.asarray(W), axis=1) <= 1e-4) for W in ball.layers)
    scalar = nets.MLP.init(jax.random.key(3), 3, [4, 4], "scalar")
    assert scalar.layers[-1].shape == (4,) and np.shape(scalar(jnp.ones(3))) == ()


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(2), leak=1.0), ValueError, "leak"),
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(2), leak=-0.1), ValueError, "-0.1"),
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(2), leak=True), TypeError, "leak"),
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(3)), ValueError, "shape (2,)"),
        (lambda: nets.TwoLayer(np.ones(3), np.ones(3)), ValueError, "matrix"),
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(2), kink_rtol=-1.0), ValueError, "kink_rtol"),
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(2), max_kinks=0), ValueError, "max_kinks"),
        (lambda: nets.MLP([np.ones((2, 3))]), ValueError, "at least 2 layers"),
        (lambda: nets.MLP([np.ones((2, 3)), np.ones((2, 3))]), ValueError, "needs 2 columns"),
        (lambda: nets.MLP(np.ones((2, 2, 2))), TypeError, "list"),
        (lambda: nets.MLP([np.ones((2, 3)), np.ones((1, 2, 2))]), ValueError, "last layer"),
        (lambda: nets.MLP([np.ones((2, 3)), np.ones(2)], leak=2.0), ValueError, "[0, 1)"),
        (lambda: nets.MLP.init(jax.random.key(0), 2, [2], distribution="disk"), ValueError, "disk"),
        (lambda: nets.TwoLayer.init(jax.random.key(0), 2, 3, scale=-1.0), ValueError, "scale"),
        (lambda: kink_statistics(nets.Diagonal([np.ones(2), np.ones(2)]), np.ones((1, 2))), TypeError,
         "AbstractNonsmoothModel"),
        (lambda: nets.TwoLayer(np.ones((2, 3)), np.ones(2))(jnp.ones(4)), ValueError, "shape (3,)"),
    ],
)
def test_bad_inputs_are_refused(build, error, words):
    with pytest.raises(error, match=None) as info:
        build()
    assert words in str(info.value), str(info.value)


def test_private_kink_statistics_points_a_user_model_to_fs_analysis():
    from flowsim._nonsmooth import kink_statistics

    with pytest.raises(TypeError, match=r"got str: .*fs\.analysis\.kink_statistics\(problem, params\)"):
        kink_statistics("model", np.ones((2, 2)))
