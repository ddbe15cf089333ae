"""`fs.analysis.limit_direction` against independent references: LPs (scipy HiGHS), QPs and SOCPs (cvxpy),
SLSQP for the non-convex depth-3 problem, and an independent KKT implementation (`fs.analysis.kkt_residual`).

Data: a planted sparse teacher (2 of 20 coordinates), samples kept only when their teacher margin exceeds half
the teacher norm; small problems (n = 10, d = 20; n = 6, d = 8 for convolutions) and log t ≤ 10^4 keep the
file fast.
"""

import cvxpy as cp
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import flowsim as fs


def planted(seed, n=10, d=20, k=2, gap=0.5):
    rng = np.random.default_rng(seed)
    teacher = np.zeros(d)
    teacher[:k] = rng.standard_normal(k)
    X = rng.standard_normal((4 * n, d))
    keep = np.abs(X @ teacher) > gap * np.linalg.norm(teacher)
    X = X[keep][:n]
    return X, np.sign(X @ teacher)


def run(net, X, y, log_t1, n_save=40):
    traj = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=log_t1, n_save=n_save)
    assert bool(traj.ok), traj.message
    return traj


def l1_lp(X, y, nonnegative, cost=None):
    """min Σ|ρ_j| (+ a perturbation cost·ρ) s.t. y_i⟨x_i, ρ⟩ ≥ 1 [, ρ ≥ 0], by HiGHS on ρ = p − q, p, q ≥ 0."""
    n, d = X.shape
    Z = y[:, None] * X
    if nonnegative:
        c, A_ub = np.ones(d), -Z
    else:
        c, A_ub = np.ones(2 * d), np.hstack([-Z, Z])
    if cost is not None:
        c = c + (cost if nonnegative else np.concatenate([cost, -cost]))
    res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=-np.ones(n), bounds=(0, None), method="highs",
                                 options=dict(primal_feasibility_tolerance=1e-10, dual_feasibility_tolerance=1e-10))
    assert res.status == 0, res.message
    rho = res.x if nonnegative else res.x[:d] - res.x[d:]
    return rho


def unique_l1_direction(X, y, nonnegative):
    """The LP solution, after checking that it is unique: small random perturbations of the objective (which
    would select different vertices of a non-unique optimal face) must not move it."""
    rho = l1_lp(X, y, nonnegative)
    rng = np.random.default_rng(1)
    for _ in range(3):
        other = l1_lp(X, y, nonnegative, cost=1e-5 * rng.standard_normal(X.shape[1]))
        assert np.max(np.abs(other - rho)) < 1e-7 * np.max(np.abs(rho)), "the LP solution is not unique"
    return rho / np.linalg.norm(rho)


def assert_much_better(res, reference, tol):
    """The estimate equals the reference to `tol`, and is far more accurate than the last iterate."""
    err = np.linalg.norm(res.direction - reference)
    assert err < tol, (err, res.message)
    assert res.last_iterate_error > 1e4 * max(1.0 - float(np.real(np.vdot(reference, res.direction))), 1e-16)
    return err


def assert_certificate(res):
    assert res.certified, res.message
    assert "Certified" in res.message
    assert res.kkt_residual < 1e-10
    assert np.all(res.multipliers >= 0)
    assert np.all(res.multipliers[np.setdiff1d(np.arange(res.multipliers.size), res.active_set)] == 0)
    tail = res.distance[-10:]
    assert tail[-1] < tail[0] and res.distance_slope < 0  # the trajectory approaches the estimate


def test_diagonal_depth2_balanced_is_sign_constrained_l1_lp():
    """Depth-2 diagonal net, balanced positive init: ρ ≥ 0 forever, so the limit is the sign-constrained ℓ1
    max-margin solution (unique: checked by perturbing the LP). At log t = 10^3 the last iterate is ~1e-4 away
    (1 − cos); the estimate agrees with the LP to rounding."""
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="balanced")
    res = fs.analysis.limit_direction(run(net, X, y, 1e3), X, y)
    reference = unique_l1_direction(X, y, nonnegative=True)
    assert_certificate(res)
    assert np.array_equal(res.sign_constraint, np.ones(20))  # detected from the balanced layers
    assert_much_better(res, reference, 1e-9)
    assert res.last_iterate_error > 5e-5
    np.testing.assert_array_equal(res.support, np.flatnonzero(np.abs(reference) > 1e-9))
    assert np.all(res.direction >= 0)
    # the unconstrained LP is a different direction here: the sign constraint matters
    free = unique_l1_direction(X, y, nonnegative=False)
    assert np.linalg.norm(free - reference) > 1e-2
    # an independent KKT check (fs.analysis.kkt_residual, NNLS multipliers) agrees
    assert fs.analysis.kkt_residual(res.rho, X, y, 2, sign="nonnegative") < 1e-9


def test_diagonal_depth2_sign_free_is_l1_lp():
    """Depth-2 diagonal net, last layer zero (sign-free): the limit is the unconstrained ℓ1 max-margin solution
    (unique, checked by perturbation). The last iterate at log t = 10^4 is ~4e-3 away."""
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="last_zero")
    res = fs.analysis.limit_direction(run(net, X, y, 1e4), X, y)
    reference = unique_l1_direction(X, y, nonnegative=False)
    assert_certificate(res)
    assert res.sign_constraint is None
    assert_much_better(res, reference, 1e-9)
    assert res.last_iterate_error > 1e-3
    assert np.any(res.direction < 0)
    assert fs.analysis.kkt_residual(res.rho, X, y, 2) < 1e-9


def test_diagonal_depth3_is_a_kkt_point_and_a_local_minimum():
    """Depth 3: min Σ|ρ_j|^{2/3} s.t. margins ≥ 1 is non-convex. The estimate must be a KKT point (independent
    residual ≲ 1e-9) and a local minimum: SLSQP on the support, started from a perturbed estimate, returns to it."""
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=3, scale=0.1, shape="balanced")
    res = fs.analysis.limit_direction(run(net, X, y, 100.0), X, y)
    assert_certificate(res)
    assert res.q == pytest.approx(2.0 / 3.0)
    assert fs.analysis.kkt_residual(res.rho, X, y, 3) < 1e-9
    S = res.support
    Z = (y[:, None] * X)[:, S]
    sign = np.sign(res.rho[S])
    start = res.rho[S] * (1.0 + 1e-2 * np.random.default_rng(2).standard_normal(S.size))
    start = start / np.min(Z @ start)
    opt = scipy.optimize.minimize(
        lambda r: np.sum(np.abs(r) ** (2.0 / 3.0)), start, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda r: Z @ r - 1.0, "jac": lambda r: Z},
                     {"type": "ineq", "fun": lambda r: sign * r, "jac": lambda r: np.diag(sign)}],
        options=dict(ftol=1e-15, maxiter=1000),
    )
    assert opt.success, opt.message
    np.testing.assert_allclose(opt.x, res.rho[S], rtol=1e-6, atol=1e-8)
    assert res.last_iterate_error > 1e-6
    assert 1.0 - np.dot(opt.x / np.linalg.norm(opt.x), res.direction[S]) < 1e-3 * res.last_iterate_error


def svm_direction(X, y):
    w = cp.Variable(X.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(w)), [cp.multiply(y, X @ w) >= 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == cp.OPTIMAL
    return w.value / np.linalg.norm(w.value)


@pytest.mark.parametrize("make", ["fully_connected_3", "linear"])
def test_fully_connected_and_linear_tend_to_svm(make):
    """Fully connected (depth 3, random init) and linear models: β/‖β‖ → the ℓ2 max-margin (SVM) direction,
    computed here by cvxpy (Clarabel, tolerances 1e-12)."""
    X, y = planted(0)
    if make == "linear":
        net = fs.networks.Linear.init(20, shape="last_zero")
    else:
        net = fs.networks.FullyConnected.init(20, depth=3, width=5, scale=0.1, shape="random",
                                              key=__import__("jax").random.PRNGKey(0))
    res = fs.analysis.limit_direction(run(net, X, y, 1e3), X, y)
    assert_certificate(res)
    assert res.q == 2.0 and res.support.size == 20
    err = assert_much_better(res, svm_direction(X, y), 1e-7)
    assert err < 1e-3 * np.sqrt(res.last_iterate_error)
    np.testing.assert_allclose(res.beta, res.direction)


def test_convolutional_depth2_is_dft_l1_socp():
    """Full-length circular convolution, depth 2, sign-free init: ρ ∝ F β tends to the minimiser of Σ_j |(Fβ)_j|
    s.t. margins ≥ 1 (an SOCP over complex DFT coefficients; cvxpy over real β, so ρ is Hermitian-symmetric
    as the network's is)."""
    X, y = planted(0, n=6, d=8)
    d = 8
    net = fs.networks.Convolutional.init(d, depth=2, scale=0.1, shape="last_zero")
    res = fs.analysis.limit_direction(run(net, X, y, 1e3), X, y)
    F = np.fft.fft(np.eye(d), norm="ortho")
    beta = cp.Variable(d)
    problem = cp.Problem(cp.Minimize(cp.norm1(F @ beta)), [cp.multiply(y, X @ beta) >= 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == cp.OPTIMAL
    reference = F @ beta.value
    reference = reference / np.linalg.norm(reference)
    assert_certificate(res)
    assert np.iscomplexobj(res.direction)
    assert_much_better(res, reference, 1e-6)
    # Hermitian symmetry (ρ is the DFT of a real vector), and β agrees with the reference's β
    np.testing.assert_allclose(res.direction[(-np.arange(d)) % d], np.conj(res.direction), atol=1e-12)
    np.testing.assert_allclose(res.beta, beta.value / np.linalg.norm(beta.value), atol=1e-6)


def test_too_short_trajectory_is_not_certified():
    """At log t = 2 the flow has not separated the data: no estimate may be certified."""
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="balanced")
    res = fs.analysis.limit_direction(run(net, X, y, 2.0), X, y)
    assert not res.certified
    assert "NOT certified" in res.message and "separate" in res.message


def test_wrong_sign_model_is_not_certified():
    """Forcing the sign-free problem on a balanced (sign-locked) trajectory: its limit is not a KKT point of
    the unconstrained problem, so the certificate must fail rather than return a wrong direction."""
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="balanced")
    traj = run(net, X, y, 1e3)
    res = fs.analysis.limit_direction(traj, X, y, sign=None)
    assert not res.certified
    assert "NOT certified" in res.message
    # the same trajectory with the constraint it keeps (explicitly, instead of detected) is certified
    assert fs.analysis.limit_direction(traj, X, y, sign="nonnegative").certified


def test_bad_inputs():
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="balanced")
    traj = run(net, X, y, 5.0, n_save=10)
    with pytest.raises(TypeError, match="Trajectory"):
        fs.analysis.limit_direction(net, X, y)
    failed = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=1e3, max_steps=3)
    with pytest.raises(ValueError, match="traj.ok"):
        fs.analysis.limit_direction(failed, X, y)
    with pytest.raises(ValueError, match="columns"):
        fs.analysis.limit_direction(traj, X[:, :5], y)
    with pytest.raises(ValueError, match="labels"):
        fs.analysis.limit_direction(traj, X, np.where(y > 0, 1.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        fs.analysis.limit_direction(traj, X, y[:5])
    with pytest.raises(ValueError, match="tail"):
        fs.analysis.limit_direction(traj, X, y, tail=0.0)
    with pytest.raises(ValueError, match="tail"):
        fs.analysis.limit_direction(traj, X, y, tail=(1e5, 1e6))
    with pytest.raises(ValueError, match="q must"):
        fs.analysis.limit_direction(traj, X, y, q=1.5)
    with pytest.raises(ValueError, match="depth"):
        fs.analysis.limit_direction(traj, X, y, depth=0)
    with pytest.raises(ValueError, match="sign"):
        fs.analysis.limit_direction(traj, X, y, sign="positive")
    with pytest.raises(ValueError, match="kkt_tol"):
        fs.analysis.limit_direction(traj, X, y, kkt_tol=-1.0)
    with pytest.raises(ValueError, match="search_width"):
        fs.analysis.limit_direction(traj, X, y, search_width=-1)
    with pytest.raises(ValueError, match="sign array"):
        fs.analysis.limit_direction(traj, X, y, sign=np.ones(3))

    # a non-orthogonally-decomposable convolution (kernel 3 < d) has no built-in theory: q must be given
    conv = fs.networks.Convolutional.init(20, depth=2, scale=0.1, shape="balanced", kernel_size=3)
    short = fs.simulate(fs.Problem(conv, X, y, loss="logistic"), log_t1=2.0, n_save=10)
    with pytest.raises(ValueError, match="pass q explicitly"):
        fs.analysis.limit_direction(short, X, y)

    class NoBeta(eqx.Module):
        w: jnp.ndarray

        def __call__(self, x):
            return jnp.dot(self.w, x)

    plain = fs.simulate(fs.Problem(NoBeta(jnp.zeros(20)), X, y, loss="logistic"), log_t1=2.0, n_save=10)
    with pytest.raises(TypeError, match="beta"):
        fs.analysis.limit_direction(plain, X, y)
