"""Initialisation scale vs training accuracy (Moroshko et al., NeurIPS 2020): fs.networks.SignedDiagonal and the
fs.analysis references, against independent computations.

Oracles: ⟨x, u₊^D − u₋^D⟩ written out with numpy; the full gradient flow (flowsim's Diffrax engine) against the
reduced n-dimensional ODE (scipy Radau in the loss level); for one sample the reduced ODE against a scalar root
find (the margin IS log(1/ε)); the Q_μ minimiser (projected Newton on the dual) against scipy's SLSQP on the
primal and against the ℓ2 / ℓ1 max-margin programs in the limits μ → ∞ / μ → 0.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import flowsim as fs

A_ = fs.analysis
N, D_IN = 6, 12


@pytest.fixture(scope="module")
def data():
    return fs.data.separable(N, D_IN, 0)


def _flow(X, y, alphas, depth, log_inv_eps, rtol=1e-11, atol=1e-13):
    """The full flow of β = u₊^D − u₋^D (flowsim's mean exponential loss), one vmapped solve per ε row over α
    and target_log_loss, stopped when the paper's summed loss reaches ε."""
    sweep = A_.scale_accuracy_sweep(X, y, depth, alphas, log_inv_eps, rtol=rtol, atol=atol)
    assert sweep.ok.all()
    return sweep


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_signed_diagonal_computes_its_beta(depth):
    rng = np.random.default_rng(depth)
    up, um, x = rng.standard_normal((3, 7))
    net = fs.networks.SignedDiagonal([up, um], depth)
    beta = up**depth - um**depth
    np.testing.assert_allclose(np.asarray(net.beta()), beta, rtol=1e-14)
    assert abs(float(net(jnp.asarray(x))) - float(x @ beta)) < 1e-13
    assert net.depth == depth and net.input_dim == 7
    init = fs.networks.SignedDiagonal.init(7, depth, 0.3)
    np.testing.assert_array_equal(np.asarray(init.layers[0]), np.full(7, 0.3))
    np.testing.assert_array_equal(np.asarray(init.beta()), np.zeros(7))
    geometry = net.margin_geometry()  # the ℓ_{2/D} max-margin problem in β (S = I)
    assert geometry.q == 2.0 / depth and geometry.layer_coordinates is None
    np.testing.assert_allclose(np.asarray(geometry.rho), beta, rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(geometry.transform), np.eye(7))
    # under vmap over α (a traced scale)
    betas = eqx.filter_vmap(lambda a: fs.networks.SignedDiagonal.init(7, depth, a).layers[1])(jnp.array([0.1, 2.0]))
    np.testing.assert_allclose(np.asarray(betas), [[0.1] * 7, [2.0] * 7])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fs.networks.SignedDiagonal.init(4, 2, 0.0), "0.0"),
        (lambda: fs.networks.SignedDiagonal.init(4, 2, -1.0), "-1.0"),
        (lambda: fs.networks.SignedDiagonal.init(4, 2, float("nan")), "nan"),
        (lambda: fs.networks.SignedDiagonal.init(4, 1, 1.0), "depth"),
        (lambda: fs.networks.SignedDiagonal.init(0, 2, 1.0), "0"),
        (lambda: fs.networks.SignedDiagonal([np.ones(3)], 2), "two layers"),
        (lambda: fs.networks.SignedDiagonal([np.ones(3), np.ones(4)], 2), r"\(4,\)"),
        (lambda: fs.networks.SignedDiagonal([np.ones(3), np.ones(3)], 1), "1"),
    ],
)
def test_signed_diagonal_refuses_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_signed_diagonal_refuses_non_integer_depth_and_bool_scale():
    with pytest.raises(TypeError, match="2.5"):
        fs.networks.SignedDiagonal.init(4, 2.5, 1.0)
    with pytest.raises(TypeError, match="True"):
        fs.networks.SignedDiagonal.init(4, 2, True)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fs.networks.SignedDiagonal.init(4, 2, 1.0)(jnp.ones(3))


# ---------------------------------------------------------------- full flow vs reduced ODE


def test_flow_matches_reduced_ode_depth_2(data):
    """The acceptance test of issue 11: ≤ 1e-8 relative at several (α, ε), D = 2, across 4 decades of α."""
    X, y = data
    alphas, lams = [1e-3, 1e-1, 3.0], [30.0, 1e4]
    sweep = _flow(X, y, alphas, 2, lams)
    # the flow stopped at flowsim's mean loss L = ε/n, i.e. at the paper's summed loss ε
    np.testing.assert_allclose(sweep.log_inv_eps_reached, np.array(lams)[:, None] * np.ones((1, 3)), rtol=1e-9)
    for a, alpha in enumerate(alphas):
        ref = A_.reduced_scale_flow(X, y, alpha, 2, lams)
        assert np.all(ref.loss_residual < 1e-9 * np.array(lams))
        err = np.linalg.norm(sweep.beta[:, a] - ref.beta, axis=-1) / np.linalg.norm(ref.beta, axis=-1)
        assert np.all(err <= 1e-8), (alpha, err)


def test_depth_3_closed_form_h_D_matches_the_flow(data):
    """β = α^D h_D(D(D−2)α^{D−2} X̃ᵀν) (unverified in the brief): the reduced ODE built on it agrees with the
    full flow of u₊³ − u₋³, which knows nothing of h_D."""
    X, y = data
    alphas = [1e-2, 1.0]
    sweep = _flow(X, y, alphas, 3, [100.0])
    for a, alpha in enumerate(alphas):
        ref = A_.reduced_scale_flow(X, y, alpha, 3, [100.0]).beta[0]
        assert np.linalg.norm(sweep.beta[0, a] - ref) / np.linalg.norm(ref) <= 1e-8


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_reduced_ode_one_sample_closed_form(depth):
    """n = 1: the summed loss is exp(−m), so at accuracy ε the margin is exactly log(1/ε) and ν solves the
    scalar equation x̃ᵀβ(x̃ν) = log(1/ε) (bracketed root find, independent of the ODE)."""
    x = np.array([[0.7, -1.3, 0.4]])
    y = np.array([-1.0])
    alpha = 0.5
    targets = np.array([0.5, 20.0, 1e4])
    sol = A_.reduced_scale_flow(x, y, alpha, depth, targets)
    xt = (y[:, None] * x)[0]
    for k, lam in enumerate(targets):
        g = lambda nu: xt @ A_.signed_diagonal_beta(xt * nu, alpha, depth) - lam
        hi = 10.0 if depth == 2 else (1 - 1e-15) / (depth * (depth - 2) * alpha ** (depth - 2) * np.max(np.abs(xt)))
        nu = scipy.optimize.brentq(g, 0.0, hi, xtol=1e-15, rtol=1e-15)
        assert abs(sol.nu[k, 0] - nu) <= 1e-9 * nu
        np.testing.assert_allclose(sol.margins[k], [lam], rtol=1e-10)


def test_beta_closed_form_at_small_z_is_the_linearisation():
    """β'(0) = 2D² α^{2D−2} for every D (from β = u₊^D − u₋^D with u± ≈ α ± D α^{D−1} z)."""
    for depth in (2, 3, 4):
        alpha, z = 0.7, 1e-7
        slope = A_.signed_diagonal_beta(np.array([z]), alpha, depth)[0] / z
        assert abs(slope - 2 * depth**2 * alpha ** (2 * depth - 2)) < 1e-6 * slope


# ---------------------------------------------------------------- Q_mu


def test_woodworth_q_closed_form():
    z = np.array([-30.0, -2.0, -1e-4, 0.0, 1e-5, 0.5, 3.0, 1e3])
    direct = 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)
    np.testing.assert_allclose(A_.woodworth_q(z), direct, rtol=1e-9, atol=1e-15)  # direct cancels at small z
    assert abs(A_.woodworth_q(np.array([1e-5]))[0] - 1e-10 / 4) < 1e-22  # the series branch, no cancellation
    q4, q2 = 2 - np.sqrt(4 + 16) + 4 * np.arcsinh(2), 2 - np.sqrt(4 + 4) + 2 * np.arcsinh(1)  # q(4), q(−2)
    np.testing.assert_allclose(A_.q_potential(np.array([2.0, -1.0]), 0.5), 0.5 * (q4 + q2), rtol=1e-13)


@pytest.mark.parametrize("mu", [0.05, 1.0, 20.0])
def test_q_minimizer_matches_primal_slsqp(data, mu):
    X, y = data
    Xt = y[:, None] * X
    sol = A_.q_minimizer(X, y, mu)
    assert sol.kkt_residual < 1e-10
    f = lambda b: mu * np.sum(2 - np.sqrt(4 + (b / mu) ** 2) + (b / mu) * np.arcsinh(b / (2 * mu)))
    g = lambda b: np.arcsinh(b / (2 * mu))
    start = A_.max_margin_solution(X, y, 2.0).rho * 1.5
    res = scipy.optimize.minimize(f, start, jac=g, method="SLSQP",
                                  constraints=[dict(type="ineq", fun=lambda b: Xt @ b - 1, jac=lambda b: Xt)],
                                  options=dict(ftol=1e-14, maxiter=2000))
    assert res.status in (0, 8)  # 8: no further descent at round-off level
    assert np.min(Xt @ res.x) > 1 - 1e-9 and np.min(Xt @ sol.beta) > 1 - 1e-12
    assert abs(sol.potential - res.fun) <= 1e-9 * res.fun
    np.testing.assert_allclose(sol.beta, res.x, atol=1e-5 * np.max(np.abs(res.x)))
    # stationarity: b = 2μ sinh(X̃ᵀλ)
    np.testing.assert_allclose(sol.beta, 2 * mu * np.sinh(Xt.T @ sol.multipliers), rtol=1e-9, atol=1e-12)


def test_q_minimizer_limits_are_l2_and_l1(data):
    X, y = data
    l2 = A_.max_margin_solution(X, y, 2.0)
    big = A_.q_minimizer(X, y, 1e6)
    np.testing.assert_allclose(big.beta, l2.rho, rtol=1e-5, atol=1e-7)
    l1 = A_.max_margin_solution(X, y, 1.0)
    small = A_.q_minimizer(X, y, log_inv_mu=300.0)  # μ = e^-300
    assert abs(float(A_.normalized_margin(small.beta, X, y, 1.0)) - l1.margin) < 1e-12


def test_l1_dual_slack_matches_scipy_dual_lp(data):
    """The ℓ1 max-margin LP's dual, max 1ᵀκ s.t. |X̃ᵀκ| ≤ 1, κ ≥ 0, solved by scipy's linprog (HiGHS) here."""
    X, y = data
    Xt = y[:, None] * X
    res = scipy.optimize.linprog(-np.ones(N), A_ub=np.vstack([Xt.T, -Xt.T]), b_ub=np.ones(2 * D_IN),
                                 bounds=[(0, None)] * N, method="highs")
    assert res.status == 0
    np.testing.assert_allclose(A_.l1_dual_slack(X, y), 1 - np.abs(Xt.T @ res.x), atol=1e-8)
    assert abs(-res.fun - 1 / A_.max_margin_value(X, y, 1.0)) < 1e-9  # strong duality: 1ᵀκ = ‖b*‖₁


def test_phase_coordinate_and_vertex_kkt_point(data):
    X, y = data
    l1, l2 = A_.max_margin_solution(X, y, 1.0), A_.max_margin_solution(X, y, 2.0)
    np.testing.assert_allclose(A_.phase_coordinate(np.stack([l2.direction, 3 * l1.rho]), X, y, 1.0, l1.rho), [0, 1],
                               atol=1e-12)
    # a rich-regime-like state: the LP vertex blurred off its support and scaled -> the vertex, certified
    blurred = 40 * (l1.rho + 1e-5 * np.random.default_rng(0).standard_normal(D_IN))
    for depth in (2, 3):
        vertex = A_.vertex_kkt_point(blurred, X, y, depth)
        np.testing.assert_allclose(vertex.beta, l1.rho, atol=1e-10)
    assert A_.vertex_kkt_point(blurred, X, y, 2).kkt_residual < 1e-9
    with pytest.raises(ValueError, match="separate"):
        A_.vertex_kkt_point(-l1.rho, X, y, 2)
    with pytest.raises(ValueError, match="not above"):
        A_.phase_coordinate(l1.rho, X, y, 1.0, l2.direction)


# ---------------------------------------------------------------- units and regime parameter


def test_loss_normalisation_conversion(data):
    X, y = data
    beta = np.random.default_rng(3).standard_normal(D_IN)
    margins = y * (X @ beta)
    log_sum = math.log(np.sum(np.exp(-margins)))
    log_mean = float(fs.Exponential().log_value(jnp.asarray(X @ beta), jnp.asarray(y)))  # flowsim's log L
    assert abs(log_mean - math.log(np.mean(np.exp(-margins)))) < 1e-13
    assert abs(float(A_.summed_log_loss(log_mean, N)) - log_sum) < 1e-13
    assert abs(float(A_.mean_log_loss(log_sum, N)) - log_mean) < 1e-13
    assert abs(float(A_.log_regime_parameter(0.1, 3, 1e4)) - math.log(1e-3 / 1e4)) < 1e-12


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X, y: A_.reduced_scale_flow(X, y, 0.0, 2, [1.0]), "alpha"),
        (lambda X, y: A_.reduced_scale_flow(X, y, -2.0, 2, [1.0]), "-2.0"),
        (lambda X, y: A_.reduced_scale_flow(X, y, 1.0, 1, [1.0]), "depth"),
        (lambda X, y: A_.reduced_scale_flow(X, y, 1.0, 2.5, [1.0]), "2.5"),
        (lambda X, y: A_.reduced_scale_flow(X, y, 1.0, 2, [-2.0]), "-2.0"),
        (lambda X, y: A_.reduced_scale_flow(X, y, 1.0, 2, [np.inf]), "inf"),
        (lambda X, y: A_.reduced_scale_flow(X, 2 * y, 1.0, 2, [1.0]), "labels"),
        (lambda X, y: A_.q_minimizer(X, y), "exactly one"),
        (lambda X, y: A_.q_minimizer(X, y, 1.0, log_inv_mu=1.0), "exactly one"),
        (lambda X, y: A_.q_minimizer(X, y, -1.0), "-1.0"),
        (lambda X, y: A_.q_minimizer(X, y, log_inv_mu=1e10), "1e\\+10"),
        (lambda X, y: A_.q_potential(np.ones(3), 0.0), "0.0"),
        (lambda X, y: A_.log_regime_parameter(1.0, 2, 0.0), "0."),
        (lambda X, y: A_.log_regime_parameter(-1.0, 2, 10.0), "-1."),
        (lambda X, y: A_.mean_log_loss(-1.0, 0), "0"),
        (lambda X, y: A_.scale_accuracy_sweep(X, y, 2, [0.0, 1.0], [10.0]), "alphas"),
        (lambda X, y: A_.scale_accuracy_sweep(X, y, 2, [1.0], [-1.0]), "log_inv_eps"),
        (lambda X, y: A_.scale_accuracy_sweep(X, y, 1, [1.0], [1.0]), "depth"),
    ],
)
def test_references_refuse_bad_inputs(data, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(*data)


# ---------------------------------------------------------------- the scenario, quick config, end to end


def test_scenario_quick_run_holds_its_claims(tmp_path):
    import json
    import pathlib

    from flowsim.harness import main

    scenario = pathlib.Path(__file__).resolve().parents[1] / "scenarios" / "moroshko2020_scale_vs_accuracy.py"
    code = main(["run", str(scenario), "--quick", "--strict", "--out", str(tmp_path / "runs"),
                 "--figures", str(tmp_path / "figs")])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "moroshko2020_scale_vs_accuracy-quick" / "summary.json").read_text())
    assert summary["all_claims_hold"]
    names = {c["name"] for c in summary["claims"]}
    assert {"D2_flow_matches_reduced_ode", "D2_transition_slope", "gd_cannot_reach_deepest_eps"} <= names
    assert (tmp_path / "figs" / "moroshko2020_scale_vs_accuracy" / "phase_diagram.png").exists()
