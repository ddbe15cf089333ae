"""`fs.analysis.limit_direction` against independent references: LPs (scipy HiGHS), QPs and SOCPs (cvxpy),
SLSQP for the non-convex depth-3 problem, and an independent KKT implementation (`fs.analysis.kkt_residual`).

Data: a planted sparse teacher (2 of 20 coordinates), samples kept only when their teacher margin exceeds half
the teacher norm; small problems (n = 10, d = 20; n = 6, d = 8 for convolutions) and log t ≤ 10^4 keep the
file fast.
"""

import math

import cvxpy as cp
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from conftest import planted, run_logistic, svm_direction, unique_l1_direction, unitary_dft

import flowsim as fs

run = run_logistic


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
    reference = unique_l1_direction(X, y, sign_bounds=np.ones(X.shape[1]))
    assert_certificate(res)
    assert np.array_equal(res.sign_constraint, np.ones(20))  # detected from the balanced layers
    assert_much_better(res, reference, 1e-9)
    assert res.last_iterate_error > 5e-5
    np.testing.assert_array_equal(res.support, np.flatnonzero(np.abs(reference) > 1e-9))
    assert np.all(res.direction >= 0)
    # the unconstrained LP is a different direction here: the sign constraint matters
    free = unique_l1_direction(X, y)
    assert np.linalg.norm(free - reference) > 1e-2
    # an independent KKT check (fs.analysis.kkt_residual, NNLS multipliers) agrees
    assert fs.analysis.kkt_residual(res.rho, X, y, 2, sign="nonnegative") < 1e-9


def test_diagonal_depth2_sign_free_is_l1_lp():
    """Depth-2 diagonal net, last layer zero (sign-free): the limit is the unconstrained ℓ1 max-margin solution
    (unique, checked by perturbation). The last iterate at log t = 10^4 is ~4e-3 away."""
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="last_zero")
    res = fs.analysis.limit_direction(run(net, X, y, 1e4), X, y)
    reference = unique_l1_direction(X, y)
    assert_certificate(res)
    assert res.sign_constraint is None
    assert_much_better(res, reference, 1e-9)
    assert res.last_iterate_error > 1e-3
    assert np.any(res.direction < 0)
    assert fs.analysis.kkt_residual(res.rho, X, y, 2) < 1e-9


def test_signed_diagonal_depth2_is_l1_lp():
    """β = u₊² − u₋² from u±(0) = α·1 (Woodworth et al. 2020) states q = 2/D = 1, ρ = β: its limit is the
    unconstrained ℓ1 max-margin solution (HiGHS LP, perturbation-checked unique), ~9e-2 from the last iterate at
    log t = 10^3."""
    X, y = planted(0, n=8, d=10)
    net = fs.networks.SignedDiagonal.init(10, 2, scale=0.1)
    res = fs.analysis.limit_direction(run(net, X, y, 1e3), X, y)
    assert res.certified, res.message
    assert res.q == 1.0 and res.sign_constraint is None
    assert_much_better(res, unique_l1_direction(X, y), 1e-12)


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


@pytest.mark.parametrize("make", ["fully_connected_3", "linear"])
def test_fully_connected_and_linear_tend_to_svm(make):
    """Fully connected (depth 3, random init) and linear models: β/‖β‖ → the ℓ2 max-margin (SVM) direction,
    computed here by cvxpy (Clarabel, tolerances 1e-12)."""
    X, y = planted(0)
    if make == "linear":
        net = fs.networks.Linear.init(20, shape="last_zero")
    else:
        net = fs.networks.FullyConnected.init(20, depth=3, width=5, scale=0.1, shape="random",
                                              key=jax.random.key(0))
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
    F = unitary_dft(d)
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
    reference = unique_l1_direction(X, y)
    assert res.certified, res.message
    assert "convex solver" in res.message and res.repairs > 0
    assert_much_better(res, reference, 1e-12)
    assert res.last_iterate_error > 1e-2


def _complex_l1_point(X, rho, mu):
    """(MarginProblem, Candidate) for samples X (labels +1) under the unitary DFT, at (ρ, μ) with ρ's support."""
    from flowsim.analysis._geometry import margin_problem
    from flowsim.analysis._kkt import INFEASIBLE
    from flowsim.analysis._restricted import KKTPoint
    from flowsim.analysis._search import Candidate
    from flowsim.analysis._structure import Structure

    problem = margin_problem(X, np.ones(len(X)), 1.0, unitary_dft(X.shape[1]))
    structure = Structure(np.abs(rho) > 0, np.sign(np.real(rho)), mu > 0)
    return problem, Candidate(structure, KKTPoint(rho, mu, True, ""), INFEASIBLE)


def test_complex_l1_uniqueness_check():
    """One sample whose spectrum ties at DC and Nyquist (x̂ = (1, 0.3e^{0.7i}, −1, conj)) has a segment of DFT-ℓ1
    minimisers ρ = (t, 0, −(1 − t), 0), t ∈ [0, 1]: not unique. The check must say so; with a second sample that
    breaks the tie it must accept the vertex."""
    from flowsim.analysis._certificate import unique_complex_l1

    spectrum = np.array([1.0, 0.3 * np.exp(0.7j), -1.0, 0.3 * np.exp(-0.7j)])
    x = np.real(np.fft.ifft(spectrum, norm="ortho"))
    rho, mu = np.array([0.5, 0.0, -0.5, 0.0], dtype=complex), np.array([1.0])
    problem, candidate = _complex_l1_point(x[None, :], rho, mu)
    A = np.fft.fft(x, norm="ortho")[None, :]  # rows a_i = y_i S x_i, S the unitary DFT
    np.testing.assert_allclose(problem.A, A, atol=1e-15)
    assert np.allclose(np.real(np.conj(A) @ rho), 1.0)
    np.testing.assert_allclose((A.T @ mu)[[0, 2]], [1.0, -1.0], atol=1e-12)  # stationarity on the support
    unique, why = unique_complex_l1(problem, candidate)
    assert not unique and "support pairs" in why
    # two samples with (DC, Nyquist) parts (2, 1) and (1, 2): the vertex ρ = (1/3, 0, 1/3, 0) with μ = (1/3, 1/3)
    # is the unique minimiser
    X2 = np.real(np.fft.ifft([[2.0, 0.1j, 1.0, -0.1j], [1.0, 0.2, 2.0, 0.2]], norm="ortho"))
    rho2, mu2 = np.array([1.0, 0.0, 1.0, 0.0], dtype=complex) / 3.0, np.array([1.0, 1.0]) / 3.0
    problem2, candidate2 = _complex_l1_point(X2, rho2, mu2)
    assert np.allclose(problem2.margins(rho2), 1.0)
    np.testing.assert_allclose(problem2.dual(mu2)[[0, 2]], [1.0, 1.0], atol=1e-12)
    unique, why = unique_complex_l1(problem2, candidate2)
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


@pytest.fixture(scope="module")
def short_run():
    X, y = planted(0)
    net = fs.networks.Diagonal.init(20, depth=2, scale=0.1, shape="balanced")
    return X, y, net, run(net, X, y, 5.0, n_save=10)


BAD_ARGUMENTS = [
    ("tail-zero", dict(tail=0.0), ValueError, "tail"),
    ("tail-window-empty", dict(tail=(1e5, 1e6)), ValueError, "tail"),
    ("tail-str", dict(tail="half"), TypeError, "tail"),
    ("q-between", dict(q=1.5), ValueError, "q must"),
    ("q-str", dict(q="two"), TypeError, "q must be a real number"),
    ("q-and-depth", dict(q=1.0, depth=2), ValueError, "q or depth"),
    ("depth-zero", dict(depth=0), ValueError, "depth"),
    ("depth-float", dict(depth=2.0), TypeError, "depth"),
    ("sign-unknown", dict(sign="positive"), ValueError, "sign"),
    ("sign-array-shape", dict(sign=np.ones(3)), ValueError, "sign array"),
    ("sign-array-values", dict(sign=np.full(20, 2.0)), ValueError, "sign array"),
    ("kkt_tol-negative", dict(kkt_tol=-1.0), ValueError, "kkt_tol"),
    ("kkt_tol-bool", dict(kkt_tol=True), TypeError, "kkt_tol"),
    ("kkt_tol-inf", dict(kkt_tol=math.inf), ValueError, "kkt_tol"),
    ("search_width-negative", dict(search_width=-1), ValueError, "search_width"),
    ("max_repairs-float", dict(max_repairs=2.5), TypeError, "max_repairs"),
    ("decay_slope-zero", dict(decay_slope=0.0), ValueError, "decay_slope"),
    ("escape_rtol-zero", dict(escape_rtol=0.0), ValueError, "escape_rtol"),
    ("escape_rtol-negative", dict(escape_rtol=-1.0), ValueError, "escape_rtol"),
    ("escape_rtol-str", dict(escape_rtol="x"), TypeError, "escape_rtol"),
    ("escape_rtol-bool", dict(escape_rtol=True), TypeError, "escape_rtol"),
    ("escape_rtol-inf", dict(escape_rtol=math.inf), ValueError, "escape_rtol"),
    ("transform-shape", dict(transform=np.eye(3)), ValueError, "transform"),
]


@pytest.mark.parametrize("kwargs, error, message", [b[1:] for b in BAD_ARGUMENTS], ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_are_refused(short_run, kwargs, error, message):
    X, y, _, traj = short_run
    with pytest.raises(error, match=message):
        fs.analysis.limit_direction(traj, X, y, **kwargs)


BAD_DATA = [
    ("columns", lambda X, y: (X[:, :5], y), ValueError, "columns"),
    ("labels", lambda X, y: (X, np.where(y > 0, 1.0, 0.0)), ValueError, "labels"),
    ("label-shape", lambda X, y: (X, y[:5]), ValueError, "shape"),
    ("X-complex", lambda X, y: (X * 1j, y), TypeError, "real-valued"),
    ("X-nan", lambda X, y: (np.where(X > 1, np.nan, X), y), ValueError, "non-finite"),
]


@pytest.mark.parametrize("edit, error, message", [b[1:] for b in BAD_DATA], ids=[b[0] for b in BAD_DATA])
def test_bad_data_are_refused(short_run, edit, error, message):
    X, y, _, traj = short_run
    with pytest.raises(error, match=message):
        fs.analysis.limit_direction(traj, *edit(X, y))


def test_bad_trajectories_are_refused(short_run):
    X, y, net, _ = short_run
    with pytest.raises(TypeError, match="Trajectory"):
        fs.analysis.limit_direction(net, X, y)
    failed = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=1e3, max_steps=3)
    with pytest.raises(ValueError, match="traj.ok"):
        fs.analysis.limit_direction(failed, X, y)

    # a short-kernel convolution (kernel 3 < d) is not orthogonally decomposable: no built-in theory, q needed
    conv = fs.networks.Convolutional.init(20, depth=2, scale=0.1, shape="balanced", kernel_size=3)
    assert conv.margin_geometry().q is None
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
