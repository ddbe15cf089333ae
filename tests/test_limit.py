"""`fs.analysis.limit_direction` against independent references: LPs (scipy HiGHS), QPs and SOCPs (cvxpy),
SLSQP for the non-convex depth-3 problem, and an independent KKT implementation (`fs.analysis.kkt_residual`).

Data: a planted sparse teacher (2 of 20 coordinates), samples kept only when their teacher margin exceeds half
the teacher norm; small problems (n = 10, d = 20; n = 6, d = 8 for convolutions) and log t ≤ 10^4 keep the
file fast.
"""

import math

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


def complex_l1_kkt_point(A, d, zero=()):
    """min Σ_j |ρ_j| s.t. Re⟨a_i, ρ⟩ ≥ 1, ρ Hermitian-symmetric (the DFT of a real vector), ρ_j = 0 for j in
    `zero`: an SOCP over a complex variable (cvxpy/Clarabel). Returns (ρ/‖ρ‖₂, μ) with μ the constraint duals."""
    rho = cp.Variable(d, complex=True)
    margins = cp.real(np.conj(A) @ rho) >= 1
    constraints = [margins] + [rho[(-j) % d] == cp.conj(rho[j]) for j in range(d)] + [rho[j] == 0 for j in zero]
    problem = cp.Problem(cp.Minimize(cp.sum(cp.abs(rho))), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert problem.status == cp.OPTIMAL
    return rho.value / np.linalg.norm(rho.value), np.asarray(margins.dual_value)


@pytest.fixture(scope="module")
def saddle_run():
    """The classification scenario's convolutional instance: d = 6, seed 0, flat-spectrum last-layer-zero init."""
    X, y = fs.data.separable(12, 6, 0, 0.1, 2)
    net = fs.networks.Convolutional.init(6, depth=2, scale=0.5, shape="last_zero")
    return X, y, net, run(net, X, y, 1e4)


def test_convolutional_depth2_saddle_escape(saddle_run):
    """On this instance the flow first converges to a saddle: the DFT-ℓ1 KKT point with the Nyquist coefficient
    ρ_3 held at 0, where the dual |v_3| ≈ 1.045 > 1. ρ_3/max|ρ| grows like (log t)^{|v_3| − 1} (≈ 10^45 in log t to
    reach the limit), so the last iterate stays 7e-3 from the SOCP minimiser; limit_direction identifies the
    saddle and the escape rate and returns the minimiser. References: cvxpy SOCPs with and without ρ_3 = 0 and the
    SOCP's own duals, independent of the KKT solves in limit_direction."""
    X, y, net, traj = saddle_run
    d = 6
    res = fs.analysis.limit_direction(traj, X, y)
    assert res.certified, res.message
    assert "saddle" in res.message and res.kkt_residual < 1e-10
    A = y[:, None] * (X @ np.asarray(net.transform).T)
    reference, _ = complex_l1_kkt_point(A, d)
    assert np.linalg.norm(res.direction - reference) < 1e-6
    assert res.last_iterate_error > 1e-3  # the last iterate is at the saddle, not at the limit

    saddle = res.saddle
    assert saddle is not None and saddle.coordinates.tolist() == [3]
    restricted, mu = complex_l1_kkt_point(A, d, zero=(3,))
    assert np.linalg.norm(saddle.direction - restricted) < 1e-6
    dual = abs((A.T @ mu)[3]) / np.max(np.abs((A.T @ mu)[[0, 1, 2, 4, 5]]))  # normalised: |v_j| = 1 on the support
    assert dual > 1.01
    np.testing.assert_allclose(saddle.dual, [dual], rtol=1e-5)
    # the escape rate read from the flow against the dual's prediction
    np.testing.assert_allclose(saddle.measured_exponent, saddle.predicted_exponent, rtol=0.05)
    assert saddle.distance[-1] < 1e-4 < saddle.distance[np.argmax(traj.log_t >= 10.0)]
    assert 30 < saddle.log10_escape_log_t < 60


def test_saddle_escape_must_match_its_predicted_rate(saddle_run):
    """The saddle certificate rests on the measured escape rate: demanding agreement to 1e-4 (the flow's slope
    is ~3% off the asymptotic exponent at log t ≤ 10^4) withdraws it."""
    X, y, _, traj = saddle_run
    res = fs.analysis.limit_direction(traj, X, y, escape_rtol=1e-4)
    assert not res.certified and res.saddle is None
    assert "not approaching" in res.message
    for bad in (0.0, -1.0, "x", True, math.inf):
        with pytest.raises(ValueError, match="escape_rtol"):
            fs.analysis.limit_direction(traj, X, y, escape_rtol=bad)


def test_limit_coordinate_started_small_falls_back_to_the_convex_structure():
    """A sign-free depth-2 diagonal net whose coordinate 13 (in the ℓ1 LP's support, share 0.1) starts 100×
    smaller than the others: at log t = 10^3 the trajectory is still 5e-2 away and its support (11 coordinates)
    leads to no KKT point; the structure then comes from the convex solver, and the estimate must equal the
    HiGHS LP (perturbation-checked unique) while the trajectory approaches it."""
    X, y = planted(0)
    direction = np.ones(20)
    direction[13] = 1e-2
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="last_zero", direction=jnp.asarray(direction))
    res = fs.analysis.limit_direction(run(net, X, y, 1e3), X, y)
    reference = unique_l1_direction(X, y, nonnegative=False)
    assert res.certified, res.message
    assert "convex solver" in res.message and res.repairs > 0
    assert_much_better(res, reference, 1e-12)
    assert res.last_iterate_error > 1e-2


def test_complex_l1_uniqueness_check():
    """One sample whose spectrum ties at DC and Nyquist (x̂ = (1, 0.3e^{0.7i}, −1, conj)) has a segment of DFT-ℓ1
    minimisers ρ = (t, 0, −(1 − t), 0), t ∈ [0, 1]: not unique. The check must say so; with a second sample that
    breaks the tie it must accept the vertex."""
    from flowsim.analysis._limit import _unique_complex_l1

    d = 4
    spectrum = np.array([1.0, 0.3 * np.exp(0.7j), -1.0, 0.3 * np.exp(-0.7j)])
    x = np.real(np.fft.ifft(spectrum, norm="ortho"))
    A = np.fft.fft(x, norm="ortho")[None, :]  # rows a_i = y_i S x_i, S the unitary DFT
    rho, mu = np.array([0.5, 0.0, -0.5, 0.0], dtype=complex), np.array([1.0])
    assert np.allclose(np.real(np.conj(A) @ rho), 1.0)
    np.testing.assert_allclose((A.T @ mu)[[0, 2]], [1.0, -1.0], atol=1e-12)  # stationarity on the support
    unique, why = _unique_complex_l1(A, rho, mu, np.array([0, 2]), np.zeros(d, dtype=bool), None)
    assert not unique and "support pairs" in why
    # two samples with (DC, Nyquist) parts (2, 1) and (1, 2): the vertex ρ = (1/3, 0, 1/3, 0) with μ = (1/3, 1/3)
    # is the unique minimiser
    A2 = np.fft.fft(np.real(np.fft.ifft([[2.0, 0.1j, 1.0, -0.1j], [1.0, 0.2, 2.0, 0.2]], norm="ortho")),
                    norm="ortho")
    rho2, mu2 = np.array([1.0, 0.0, 1.0, 0.0], dtype=complex) / 3.0, np.array([1.0, 1.0]) / 3.0
    assert np.allclose(np.real(np.conj(A2) @ rho2), 1.0)
    np.testing.assert_allclose((A2.T @ mu2)[[0, 2]], [1.0, 1.0], atol=1e-12)
    unique, why = _unique_complex_l1(A2, rho2, mu2, np.array([0, 2]), np.zeros(d, dtype=bool), None)
    assert unique, why


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
