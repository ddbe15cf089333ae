"""Kinks found in any JAX model (flowsim._kinks), against independent references.

Oracles: the library's own `fs.networks.MLP` (its hand-written kink description) for the same network
written as a user's module and as `equinox.nn.MLP`; the minimum-norm element of the Clarke
subdifferential from a cvxpy/Clarabel QP over subgradients built by a numpy backpropagation written
here; the unchanged jaxpr of a smooth model.
"""

import warnings

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import OwnLeaky, OwnReLU

import flowsim as fs
import flowsim._problem as problem_module
from flowsim._flow import make_field
from flowsim._kinks import Kinked, NonsmoothWarning, find_kinks


class JaxLeaky(OwnLeaky):
    """The same net with jax.nn.leaky_relu (a jnp.where on a comparison: a select site)."""

    def __call__(self, x):
        return self.a @ jax.nn.leaky_relu(self.W @ x, self.leak)


def separable(seed, n, d):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sign(X @ rng.standard_normal(d))
    return X, y


def test_sites_are_found_through_jit_custom_jvp_and_where():
    key = jax.random.PRNGKey(0)
    mlp = eqx.nn.MLP(3, "scalar", 4, 2, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=key)
    report = find_kinks(mlp, jnp.ones(3))
    assert [(s.label, s.shape) for s in report.sites] == [("relu", (4,)), ("relu", (4,))]
    assert report.num_units == 8 and not report.unsupported

    class Many(eqx.Module):
        W: jax.Array

        def __call__(self, x):
            z = self.W @ x
            smooth = jax.nn.softplus(z).sum() + jnp.maximum(x, 0.0).sum()  # smooth in θ: not sites
            return (jnp.abs(z).sum() + jnp.clip(z, -1, 1).sum() + jax.nn.hard_tanh(z).sum()
                    + jax.nn.leaky_relu(z).sum() + jnp.minimum(z, 2 * z).sum() + smooth
                    + jax.lax.stop_gradient(jnp.maximum(z, 0.0)).sum())

    sites = find_kinks(Many(jnp.ones((4, 3))), jnp.ones(3)).sites
    assert [s.label for s in sites] == ["abs", "clip", "clip", "hard_tanh", "hard_tanh", "leaky_relu", "minimum"]


@pytest.mark.parametrize("body, words", [
    (lambda z: jnp.sort(z)[0], "sort"),
    (lambda z: (z * (z > 0)).sum(), "comparison of θ-dependent values"),
    (lambda z: jnp.max(z), "reduce_max"),
    (lambda z: z[jnp.argmax(z)], "argmax"),
    (lambda z: jnp.sign(z).sum(), "sign"),
])
def test_unsupported_nonsmooth_operations_are_reported_in_words(body, words):
    class Odd(eqx.Module):
        W: jax.Array

        def __call__(self, x):
            return body(self.W @ x) + jnp.sum(self.W)

    model = Odd(jnp.ones((3, 2)))
    assert any(words in text for text in find_kinks(model, jnp.ones(2)).unsupported)
    with pytest.warns(NonsmoothWarning, match=words):
        fs.Problem(model, np.ones((4, 2)), np.ones(4))


def test_a_model_without_kinks_is_not_wrapped_and_compiles_the_same_program():
    X, y = separable(0, 8, 3)
    model = fs.networks.Diagonal.init(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NonsmoothWarning for a smooth model
        problem = fs.Problem(model, X, y, "logistic")
    assert type(problem.model) is type(model)
    original = problem_module.with_kinks
    try:
        problem_module.with_kinks = lambda model, x, trainable=None: model
        untouched = fs.Problem(model, X, y, "logistic")
    finally:
        problem_module.with_kinks = original

    def program(p):
        theta, field = make_field(p, True, 1e-8, 1e-10)
        return str(jax.make_jaxpr(lambda th: field(1.0, th))(theta))

    assert program(problem) == program(untouched)


@pytest.mark.parametrize("nonsmooth, field", [("auto", "sliding on strata"), ("band", "minimum-norm")])
def test_the_same_relu_net_three_ways_gives_the_same_trajectory(nonsmooth, field):
    """The issue's reproducer: equinox.nn.MLP depth 1 on 16 separable points, exponential loss (it
    used to run out of 100,000 steps at log t = 1.5; now log t = 30 takes ~2,200 steps), written
    three ways, here to log t = 8 (three pairs sliding at the end). Pairs slide
    (the band's decisions are discontinuous, so two solves agree to the solver's tolerance: 1e-10)."""
    d, h = 5, 8
    X, y = separable(3, 16, d)
    mlp = eqx.nn.MLP(d, "scalar", h, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                     key=jax.random.PRNGKey(2))
    W1, w2 = mlp.layers[0].weight, mlp.layers[1].weight[0]
    runs, kinks = [], []
    for model in (OwnReLU(W1, w2), mlp, fs.networks.MLP([W1, w2])):
        problem = fs.Problem(model, X, y, "exponential")
        traj = fs.simulate(problem, log_t1=8.0, n_save=6, rtol=1e-10, atol=1e-12, nonsmooth=nonsmooth)
        assert bool(traj.ok), traj.message
        assert type(traj.params) is type(model) and type(traj.final) is type(model)
        arrays = eqx.filter(traj.params, eqx.is_inexact_array)
        flat = jax.vmap(lambda m: jax.flatten_util.ravel_pytree(m)[0])(arrays)
        runs.append(np.asarray(flat))
        kinks.append(traj.info["kinks"])
    assert "maximum ×1" in kinks[0] and "relu ×1" in kinks[1] and all(field in k for k in kinks)
    assert fs.Problem(mlp, X, y, "exponential").model.layers[0].weight.shape == (h, d)  # attributes pass through
    scale = np.linalg.norm(runs[2], axis=1, keepdims=True)
    for other in runs[:2]:
        np.testing.assert_array_less(np.linalg.norm(other - runs[2], axis=1, keepdims=True) / scale, 1e-7)


def test_own_leaky_relu_net_with_label_noise_reaches_its_horizon():
    """The issue's first reproducer, smaller: a user's leaky-ReLU two-layer net (outer layer fixed),
    noisy labels, logistic loss (it stopped at log t = −4.1 with a negative margin)."""
    rng = np.random.default_rng(7)
    n, d, m, leak = 10, 20, 4, 0.1
    X = rng.standard_normal((n, d))
    y = np.sign(X[:, 0] + 0.1)
    y[:2] = -y[:2]  # label noise
    a = np.where(np.arange(m) % 2 == 0, 1.0, -1.0) / np.sqrt(m)
    net = OwnLeaky(1e-3 * rng.standard_normal((m, d)), a, leak)
    trainable = eqx.tree_at(lambda t: (t.W, t.a), jax.tree.map(lambda _: False, net), (True, False))
    problem = fs.Problem(net, X, y, "logistic", trainable=trainable)
    assert isinstance(problem.model, Kinked)
    traj = fs.simulate(problem, log_t1=6.0, n_save=4)
    assert bool(traj.ok), traj.message
    assert np.all(np.asarray(traj.params.a) == a)  # the fixed layer stays fixed
    margins = y * np.asarray(jax.vmap(traj.final)(X))
    assert np.min(margins) > 0  # the noisy samples are fit too (interpolation, Frei et al. 2023)


def numpy_clarke_generators(W, a, leak, X, y, pairs):
    """c and G of ∂L(W) ⊇ {c + G d : leak ≤ d ≤ 1} for the logistic loss of Σ_j a_j φ(⟨w_j, x⟩), W
    trained: ∇_{w_j} L = (1/n) Σ_i ℓ'(y_i f_i) y_i a_j D_ij x_i, D_ij = φ'(z_ij), free on ``pairs``."""
    n = X.shape[0]
    Z = X @ W.T
    f = np.maximum(Z, leak * Z) @ a
    weight = -y / (1 + np.exp(y * f)) / n  # ∂ℓ/∂f / n
    D = np.where(Z > 0, 1.0, leak)
    for i, j in pairs:
        D[i, j] = 0.0
    c = ((weight[:, None] * D * a[None, :]).T @ X).ravel()
    columns = []
    for i, j in pairs:
        g = np.zeros_like(W)
        g[j] = weight[i] * a[j] * X[i]
        columns.append(g.ravel())
    return c, np.stack(columns, axis=1)


@eqx.filter_jit
def _field_at_start(problem):
    theta, field = make_field(problem, log_time=False)
    return field(0.0, theta)


@pytest.mark.parametrize("model_class", [OwnLeaky, JaxLeaky])
def test_field_is_the_min_norm_clarke_subgradient_from_a_qp(model_class):
    sliding = 0
    for seed in (25, 26, 27):  # a few sampled states, each with three pairs on kinks
        sliding += _compare_with_qp(model_class, seed)
    assert sliding > 0  # some pair slides (the field is not a one-sided gradient there)


def _compare_with_qp(model_class, seed):
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    n, d, m, leak = 6, 8, 3, 0.3
    X = rng.standard_normal((n, d))
    y = np.array([1.0, -1, 1, -1, 1, 1])
    a = np.array([1.0, -1.0, 1.0]) / np.sqrt(m)
    W = rng.standard_normal((m, d))
    for j, samples in ((0, [0, 1]), (1, [2])):  # samples 0, 1 at unit 0's kink, sample 2 at unit 1's
        Q, _ = np.linalg.qr(X[samples].T)
        W[j] -= Q @ (Q.T @ W[j])
    pairs = [(0, 0), (1, 0), (2, 1)]
    net = model_class(W, a, leak)
    trainable = eqx.tree_at(lambda t: (t.W, t.a), jax.tree.map(lambda _: False, net), (True, False))
    problem = fs.Problem(net, X, y, "logistic", trainable=trainable)
    got = -np.asarray(_field_at_start(problem))
    c, G = numpy_clarke_generators(W, a, leak, X, y, pairs)
    slopes = cp.Variable(len(pairs))
    qp = cp.Problem(cp.Minimize(cp.sum_squares(c + G @ slopes)), [slopes >= leak, slopes <= 1])
    qp.solve(solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14)
    expected = c + G @ slopes.value
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-12)
    return int(np.sum((slopes.value > leak + 1e-4) & (slopes.value < 1 - 1e-4)))
