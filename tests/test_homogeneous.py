"""fs.analysis for homogeneous networks, against independent computations: a hand-solved two-neuron KKT
point, a cvxpy max-margin program in parameter space, direct NumPy formulas and dense SVDs."""

import pathlib

import cvxpy as cp
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs
from flowsim import networks as nets
from flowsim.harness import main

A = fs.analysis


def two_neuron(W):
    """f(x) = relu(⟨w_1, x⟩) − relu(⟨w_2, x⟩) on x_1 = e_1 (y = +1), x_2 = e_2 (y = −1), W trained."""
    net = nets.TwoLayer(np.asarray(W, dtype=float), np.array([1.0, -1.0]))
    return fs.Problem(net, np.eye(2), np.array([1.0, -1.0]), "logistic", trainable=net.first_layer_filter())


def test_hand_solved_two_neuron_kkt():
    # W = I: both margins are 1 and θ = λ_1 ∇(y_1 f_1) + λ_2 ∇(y_2 f_2) with λ = (1, 1), the slopes of the
    # two units at their kinks (w_12 = w_21 = 0) set to 0: a KKT point of min ‖W‖² s.t. y_i f_i ≥ 1.
    kkt = A.homogeneous_kkt(two_neuron(np.eye(2)))
    assert kkt.residual < 1e-9 and kkt.num_kinks == 2
    np.testing.assert_allclose(kkt.multipliers, [1.0, 1.0], atol=1e-8)
    # W = diag(2, 1): margins (2, 1), only sample 2 active; its subgradient is (−s e_2, e_2), so the best fit
    # leaves (2e_1, 0) unexplained: residual 2/‖W‖_F = 2/√5. Normalised margin min(2, 1)/√5.
    problem = two_neuron(np.diag([2.0, 1.0]))
    kkt = A.homogeneous_kkt(problem)
    assert abs(kkt.residual - 2 / np.sqrt(5)) < 1e-9
    np.testing.assert_array_equal(kkt.active, [False, True])
    assert abs(float(A.homogeneous_margin(problem)) - 1 / np.sqrt(5)) < 1e-14
    assert A.homogeneity_degree(problem) == 1


def frei_max_margin(seed, n=4, d=12, leak=0.3):
    """min ‖W‖² s.t. y_i f(x_i; W) ≥ 1 restricted to the activation pattern sign⟨w_j, x_i⟩ = sign(a_j y_i)
    (a convex QP, cvxpy); when that pattern holds strictly at the solution, it is a KKT point of (P)."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, d)), np.array([1.0, -1.0] * (n // 2))
    a = np.array([1.0, -1.0, 1.0, -1.0]) / 2
    sign = np.sign(np.outer(a, y))
    W = cp.Variable((4, d))
    f = cp.sum(cp.multiply(a[:, None] * np.where(sign > 0, 1.0, leak), W @ X.T), axis=0)
    program = cp.Problem(cp.Minimize(cp.sum_squares(W)), [cp.multiply(y, f) >= 1])
    program.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert np.min(sign * (W.value @ X.T)) > 1e-3  # the pattern holds strictly
    return X, y, a, W.value, np.sqrt(program.value)


@pytest.mark.parametrize("seed", [0, 3])
def test_cvxpy_parameter_space_max_margin_is_a_kkt_point(seed):
    X, y, a, W, norm = frei_max_margin(seed)
    net = nets.TwoLayer(W, a, leak=0.3)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    assert A.homogeneous_kkt(problem).residual < 1e-8
    assert abs(float(A.homogeneous_margin(problem)) - 1 / norm) < 1e-9
    # Any scaling is the same direction; a perturbed W is not a KKT point.
    assert A.homogeneous_kkt(problem, eqx.tree_at(lambda m: m.W, net, 5.0 * net.W)).residual < 1e-8
    moved = eqx.tree_at(lambda m: m.W, net, net.W + 0.05 * np.random.default_rng(9).standard_normal(W.shape))
    assert A.homogeneous_kkt(problem, moved).residual > 0.01


def test_smoothed_margin_against_numpy_and_the_lyu_li_bounds():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 3))
    net = nets.MLP([np.eye(3) + 0.1 * rng.standard_normal((3, 3)), np.array([1.0, -0.5, 0.2])], leak=0.2)
    y = np.sign(np.asarray(jax.vmap(net)(X)))  # labels the net separates: a positive margin
    for loss in ("logistic", "exponential"):
        problem = fs.Problem(net, X, y, loss)
        assert A.homogeneity_degree(problem) == 2
        for c in (1.0, 3.0):
            model = jax.tree_util.tree_map(lambda w, c=c: c * w, net)
            q = y * np.array([float(model(jnp.asarray(x))) for x in X])
            norm2 = sum(float(np.sum(np.asarray(w) ** 2)) for w in model.layers)
            total = np.sum(np.log1p(np.exp(-q))) if loss == "logistic" else np.sum(np.exp(-q))
            expected = (-np.log(np.expm1(total)) if loss == "logistic" else -np.log(total)) / norm2
            assert abs(float(A.smoothed_margin(problem, model)) - expected) < 1e-10
    # Lyu & Li: γ̃ ≤ γ̄, and γ̄ − γ̃ ≤ log n / ‖θ‖^L → 0 as the scale grows (finite where ℒ underflows).
    problem = fs.Problem(net, X, y, "logistic")
    margin = float(A.homogeneous_margin(problem))
    assert margin > 0
    for c in (10.0, 1e3, 1e6):
        model = jax.tree_util.tree_map(lambda w, c=c: c * w, net)
        smooth = float(A.smoothed_margin(problem, model))
        assert np.isfinite(smooth) and smooth <= margin + 1e-12
        norm2 = c**2 * sum(float(np.sum(np.asarray(w) ** 2)) for w in net.layers)
        assert margin - smooth <= 1.01 * np.log(8) / norm2


def test_margins_along_a_stacked_trajectory_axis():
    X, y, a, W, _ = frei_max_margin(0)
    net = nets.TwoLayer(W, a, leak=0.3)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    scales = jnp.array([0.5, 1.0, 4.0])
    stacked = eqx.filter_vmap(lambda c: eqx.tree_at(lambda m: m.W, net, c * net.W))(scales)
    margins = np.asarray(A.homogeneous_margin(problem, stacked))
    assert margins.shape == (3,) and np.allclose(margins, float(A.homogeneous_margin(problem)), rtol=1e-12)
    residuals = A.homogeneous_kkt_residuals(problem, stacked)
    assert residuals.shape == (3,) and np.all(residuals < 1e-8)


def test_singular_value_ratios_and_stable_rank_against_dense_svd():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((7, 5, 3))
    s = np.stack([np.linalg.svd(w, compute_uv=False) for w in W])
    np.testing.assert_allclose(np.asarray(A.singular_value_ratios(W)), s / s[:, :1], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(A.stable_rank(W)), np.sum(s**2, 1) / s[:, 0] ** 2, rtol=1e-12)
    rank_one = np.outer([1.0, 2.0], [3.0, -1.0])
    assert abs(float(A.stable_rank(rank_one)) - 1.0) < 1e-12
    assert float(A.singular_value_ratios(rank_one)[1]) < 1e-15


def test_linear_comparison():
    # All pre-activations positive on the points: f is the linear map x ↦ ⟨Σ_j a_j w_j, x⟩ there.
    rng = np.random.default_rng(1)
    X = np.abs(rng.standard_normal((50, 3))) + 0.1
    W = np.abs(rng.standard_normal((4, 3)))
    a = np.array([0.5, -0.5, 0.5, -0.5])
    net = nets.TwoLayer(W, a, leak=0.2)
    beta = a @ W
    np.testing.assert_allclose(np.asarray(A.effective_direction(net, X)), beta, rtol=1e-12)
    same = A.compare_with_linear(net, beta, X)
    assert same.agreement == 1.0 and abs(same.one_minus_cos) < 1e-12
    flipped = A.compare_with_linear(net, -beta, X)
    assert abs(flipped.one_minus_cos - 2.0) < 1e-12
    assert flipped.agreement == np.mean(np.sign(X @ beta) == 0)


class Biased(eqx.Module):
    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return jnp.dot(self.w, x) + self.b


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda p, r: A.homogeneous_margin(r), ValueError, "classification"),
        (lambda p, r: A.homogeneous_margin(p, degree=0), ValueError, "degree"),
        (lambda p, r: A.homogeneity_degree(p, scales=(1.0, 2.0)), ValueError, "≠ 1"),
        (lambda p, r: A.homogeneity_degree(p, scales=(-2.0,)), ValueError, "> 0"),
        (lambda p, r: A.homogeneity_degree(fs.Problem(Biased(jnp.ones(2), jnp.array(0.5)), np.eye(2), np.ones(2),
                                                      "logistic", trainable=Biased(True, False))),
         ValueError, "not homogeneous"),
        (lambda p, r: A.homogeneous_kkt(p, active_rtol=-1.0), ValueError, "active_rtol"),
        (lambda p, r: A.homogeneous_kkt(p, eqx.tree_at(lambda m: m.W, p.model, -p.model.W)), ValueError,
         "classifies every sample"),
        (lambda p, r: A.homogeneous_kkt(p, eqx.filter_vmap(lambda c: p.model)(jnp.ones(2))), ValueError, "ONE"),
        (lambda p, r: A.homogeneous_kkt(np.eye(2)), TypeError, "flowsim.Problem"),
        (lambda p, r: A.singular_value_ratios(np.ones(3)), ValueError, "shape"),
        (lambda p, r: A.compare_with_linear(p.model, np.ones(3), np.eye(2)), ValueError, "beta"),
    ],
)
def test_bad_inputs_are_refused(call, error, words):
    problem = two_neuron(np.eye(2))
    regression = fs.Problem(nets.TwoLayer(np.eye(2), np.ones(2)), np.eye(2), np.ones(2))
    with pytest.raises(error, match=words):
        call(problem, regression)


SCENARIO = pathlib.Path(__file__).resolve().parents[1] / "scenarios" / "timor2023_relu_rank.py"


def test_timor_quick_run_end_to_end(tmp_path):
    """--quick --strict exits 0; the saved final weights, pushed through NumPy, give the saved outcomes."""
    code = main(["run", str(SCENARIO), "--quick", "--strict", "--out", str(tmp_path / "runs"),
                 "--figures", str(tmp_path / "figs")])
    assert code == 0
    with np.load(tmp_path / "runs" / "timor2023_relu_rank-quick" / "results.npz") as saved:
        r = dict(saved)
    W1 = r["W1_final"]
    s = np.linalg.svd(W1, compute_uv=False)
    np.testing.assert_allclose(r["long/stable_rank_W1"], np.sum(s**2, 1) / s[:, 0] ** 2, rtol=1e-10)
    x = np.array([[1.0, 0.99], [-1.0, 0.99]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    contribution = np.linalg.norm(r["W2_final"], axis=1)[:, :, None] * np.maximum(np.einsum("bud,nd->bun", W1, x), 0)
    dead = ~(contribution > 1e-4).any(2)
    np.testing.assert_array_equal(r["long/dead_units"], dead.sum(1))
    assert r["long/converged"].any() and (~r["long/converged"]).any()
    assert np.all(r["long/log_loss"][r["long/converged"]] < np.log(1e-4))
