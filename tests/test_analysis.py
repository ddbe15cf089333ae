"""fs.analysis references against independent computations: closed forms, scipy LPs/QPs/NLPs, direct
integration of the layer-wise gradient flow, and the Woodworth et al. (2020) potential."""

import math

import cvxpy as cp
import jax
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.optimize
from conftest import l1_lp, unitary_dft

import flowsim as fs

A_ = fs.analysis


def _separable(n, d, seed, nonnegative_teacher=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = np.sign(X @ (np.abs(w) if nonnegative_teacher else w))
    return X, y


_dft = unitary_dft


def _linprog_l1(X, y, bounds=None):
    """min ‖b‖₁ s.t. y_i x_i·b ≥ 1 by scipy's HiGHS (independent of cvxpy); ``bounds=(0, None)``: b ≥ 0."""
    return l1_lp(X, y, None if bounds is None else np.ones(X.shape[1]))


# ---------------------------------------------------------------- max margin


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_max_margin_closed_form(p):
    # X = diag(1, 2, 4), y = (1, -1, 1): the constraints decouple, rho = (1, -1/2, 1/4) for every p.
    X, y = np.diag([1.0, 2.0, 4.0]), np.array([1.0, -1.0, 1.0])
    rho = np.array([1.0, -0.5, 0.25])
    norm = np.max(np.abs(rho)) if math.isinf(p) else np.sum(np.abs(rho) ** p) ** (1 / p)
    sol = A_.max_margin_solution(X, y, p)
    np.testing.assert_allclose(sol.rho, rho, atol=1e-12)
    np.testing.assert_allclose(A_.max_margin(X, y, p), rho / norm, atol=1e-12)
    assert abs(A_.max_margin_value(X, y, p) - 1 / norm) < 1e-12
    assert sol.active.all()


def test_l1_max_margin_matches_scipy_linprog():
    X, y = _separable(8, 12, 0)
    sol = A_.max_margin_solution(X, y, 1.0)
    b, value = _linprog_l1(X, y)
    assert abs(sol.norm - value) < 1e-10 * value
    np.testing.assert_allclose(sol.rho, b, atol=1e-9)  # generic data: the LP vertex is unique
    assert abs(np.sum(np.abs(sol.direction)) - 1) < 1e-14
    np.testing.assert_array_equal(sol.beta, sol.direction)
    # the reported margin is the normalised l1 margin of the direction, and no random direction beats it
    assert abs(float(A_.normalized_margin(sol.direction, X, y, 1.0)) - sol.margin) < 1e-13
    rand = np.random.default_rng(1).standard_normal((2000, 12))
    assert np.max(np.asarray(A_.normalized_margin(rand, X, y, 1.0))) < sol.margin


def test_l2_max_margin_matches_dual_qp():
    # dual of min ||b||^2/2 s.t. Ab >= 1:  max sum(mu) - ||A^T mu||^2/2, mu >= 0;  b = A^T mu (L-BFGS-B)
    X, y = _separable(10, 6, 2)
    Ay = y[:, None] * X
    f = lambda mu: 0.5 * np.sum((Ay.T @ mu) ** 2) - np.sum(mu)
    g = lambda mu: Ay @ (Ay.T @ mu) - 1.0
    res = scipy.optimize.minimize(f, np.zeros(10), jac=g, method="L-BFGS-B", bounds=[(0, None)] * 10,
                                  options=dict(ftol=1e-16, gtol=1e-13, maxiter=10000))
    b = Ay.T @ res.x
    sol = A_.max_margin_solution(X, y, 2.0)
    np.testing.assert_allclose(sol.rho, b, rtol=0, atol=1e-7 * np.linalg.norm(b))
    assert abs(np.linalg.norm(sol.direction) - 1) < 1e-14
    # KKT to round-off: rho = A_I^T mu with mu >= 0 on the support vectors (non-negative least squares)
    _, resid = scipy.optimize.nnls(Ay[sol.active].T, sol.rho)
    assert resid < 1e-10 * np.linalg.norm(sol.rho)


def test_linf_max_margin_matches_linprog():
    X, y = _separable(7, 5, 3)
    n, d = X.shape
    Ay = y[:, None] * X  # variables (b, t): min t, -t <= b_j <= t, Ay b >= 1
    A_ub = np.vstack([np.hstack([-Ay, np.zeros((n, 1))]), np.hstack([np.eye(d), -np.ones((d, 1))]),
                      np.hstack([-np.eye(d), -np.ones((d, 1))])])
    b_ub = np.concatenate([-np.ones(n), np.zeros(2 * d)])
    res = scipy.optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * (d + 1),
                                 method="highs")
    assert abs(A_.max_margin_value(X, y, math.inf) - 1 / res.fun) < 1e-9


def test_sign_constrained_l1():
    X, y = _separable(8, 12, 4)
    sol = A_.max_margin_solution(X, y, 1.0, sign="nonnegative")
    _, value = _linprog_l1(X, y, bounds=(0, None))
    assert abs(sol.norm - value) < 1e-10 * value
    assert np.all(sol.direction >= 0)
    free = A_.max_margin_solution(X, y, 1.0)
    assert free.margin > sol.margin * (1 + 1e-3)  # the constraint binds on this data (the sign pitfall of balanced inits)
    # a mixed pattern: +1 / -1 / free, checked against linprog with the same bounds
    s = np.array([1, -1, 0] * 4)
    mixed = A_.max_margin_solution(X, y, 1.0, sign=s)
    _, value = l1_lp(X, y, s)
    assert abs(mixed.norm - value) < 1e-9 * value
    assert np.all(mixed.direction * s >= 0)


def test_sign_constrained_l2():
    X, y = _separable(8, 5, 6, nonnegative_teacher=True)
    sol = A_.max_margin_solution(X, y, 2.0, sign="nonnegative")
    # independent: projected-gradient-free formulation with scipy SLSQP on the QP
    Ay = y[:, None] * X
    res = scipy.optimize.minimize(lambda b: b @ b, np.ones(5), jac=lambda b: 2 * b, method="SLSQP",
                                  constraints=[dict(type="ineq", fun=lambda b: Ay @ b - 1, jac=lambda b: Ay)],
                                  bounds=[(0, None)] * 5, options=dict(ftol=1e-15, maxiter=500))
    assert abs(sol.norm - math.sqrt(res.fun)) < 1e-7
    assert np.all(sol.direction >= 0)
    assert A_.max_margin_value(X, y, 2.0) > sol.margin * (1 + 1e-3)  # the constraint binds


def test_scaled_dft_gives_the_unitary_direction_and_rescaled_margin():
    # Convolutional networks' transform is d^{(L-1)/2}·DFT; the direction cannot depend on the scale.
    X, y = _separable(6, 8, 31)
    unit = A_.max_margin_solution(X, y, p=1.0, transform=_dft(8))
    scaled = A_.max_margin_solution(X, y, p=1.0, transform=8.0 * _dft(8))
    np.testing.assert_allclose(scaled.direction, unit.direction, atol=1e-10)
    np.testing.assert_allclose(scaled.margin, 8.0 * unit.margin, rtol=1e-10)
    margins = np.real(np.conj((y[:, None] * X) @ (8.0 * _dft(8)).T) @ scaled.rho)
    assert abs(margins.min() - 1.0) < 1e-9


def test_dft_socp_against_free_complex_formulation():
    # Full-length convolutional nets: min sum_j |rho_j| over complex rho (real inner product), S the unitary DFT.
    d = 8
    X, y = _separable(5, d, 6)
    F = _dft(d)
    sol = A_.max_margin_solution(X, y, 1.0, transform=F)
    r = cp.Variable(d, complex=True)
    Ay = y[:, None] * (X @ F.T)
    prob = cp.Problem(cp.Minimize(cp.norm1(r)), [cp.real(np.conj(Ay) @ r) >= 1])
    prob.solve(solver=cp.CLARABEL)
    assert abs(sol.norm - prob.value) < 1e-6 * prob.value
    # rho is the DFT of the real predictor beta: conjugate symmetric, beta real, margins in input space
    assert np.max(np.abs(sol.direction - np.conj(sol.direction[(-np.arange(d)) % d]))) < 1e-12
    np.testing.assert_allclose(F @ sol.beta, sol.direction, atol=1e-14)
    assert abs(np.min(y * (X @ sol.beta)) - sol.margin) < 1e-12
    assert abs(float(A_.normalized_margin(sol.direction, X, y, 1.0, transform=F)) - sol.margin) < 1e-12
    assert A_.kkt_residual(sol.direction, X, y, 2, transform=F) < 1e-9
    # p = inf: max_j |rho_j| over the DFT coefficients, against the free complex formulation
    prob_inf = cp.Problem(cp.Minimize(cp.norm_inf(r)), [cp.real(np.conj(Ay) @ r) >= 1])
    prob_inf.solve(solver=cp.CLARABEL)
    assert abs(1 / A_.max_margin_value(X, y, math.inf, transform=F) - prob_inf.value) < 1e-6 * prob_inf.value
    # p = 2 is transform-invariant for unitary F: same margin as the plain SVM
    assert abs(A_.max_margin_value(X, y, 2.0, transform=F) - A_.max_margin_value(X, y, 2.0)) < 1e-10


# ---------------------------------------------------------------- normalized margin, stable rank


def test_normalized_margin_batched_and_jittable():
    X, y = _separable(6, 4, 7)
    B = np.random.default_rng(8).standard_normal((2, 5, 4))
    for p in (0.5, 1.0, 2.0, 3.0, math.inf):
        got = np.asarray(A_.normalized_margin(B, X, y, p))
        assert got.shape == (2, 5)
        ref = np.array([[np.min(y * (X @ b)) / (np.max(np.abs(b)) if math.isinf(p) else np.sum(np.abs(b) ** p) ** (1 / p))
                         for b in row] for row in B])
        np.testing.assert_allclose(got, ref, rtol=1e-13)
    jitted = jax.jit(lambda b: A_.normalized_margin(b, X, y, 1.0))(B)
    np.testing.assert_allclose(jitted, A_.normalized_margin(B, X, y, 1.0), rtol=1e-14)
    # scale invariance, and huge/small scales do not overflow
    np.testing.assert_allclose(A_.normalized_margin(1e200 * B, X, y, 3.0), A_.normalized_margin(B, X, y, 3.0), rtol=1e-13)


def test_singular_values_of_wide_tall_and_batched_matrices_match_numpy():
    rng = np.random.default_rng(3)
    for shape in [(4, 300), (300, 4), (5, 5), (6, 3, 200)]:
        W = rng.standard_normal(shape) * np.geomspace(1, 1e-6, shape[-1])  # spread singular values
        ref = np.linalg.svd(W, compute_uv=False)
        np.testing.assert_allclose(A_.singular_values(W), ref, rtol=1e-10, atol=1e-14 * ref.max())
        np.testing.assert_allclose(A_.singular_value_ratios(W), ref / ref[..., :1], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(A_.stable_rank(W), (ref**2).sum(-1) / ref[..., 0] ** 2, rtol=1e-12)


def test_stable_rank():
    W = np.random.default_rng(9).standard_normal((3, 4, 5, 6))
    ref = np.array([[np.linalg.norm(w, "fro") ** 2 / np.linalg.norm(w, 2) ** 2 for w in row] for row in W])
    np.testing.assert_allclose(A_.stable_rank(W), ref, rtol=1e-13)
    u, v = np.arange(1.0, 5.0), np.arange(1.0, 4.0)
    assert abs(float(A_.stable_rank(np.outer(u, v))) - 1) < 1e-14
    assert abs(float(A_.stable_rank(np.eye(7))) - 7) < 1e-13
    assert abs(float(A_.stable_rank(np.diag([2.0, 1.0]))) - 1.25) < 1e-14


# ---------------------------------------------------------------- KKT residual


def test_kkt_l1_solution_and_random_directions():
    X, y = _separable(8, 12, 10)
    rho = A_.max_margin(X, y, 1.0)
    cert = A_.kkt_certificate(rho, X, y, 2)
    assert cert.residual < 1e-10 and np.all(cert.mu >= 0) and cert.mu[~cert.active].sum() == 0
    rng = np.random.default_rng(11)
    for _ in range(5):
        cand = rho + 0.3 * np.abs(rho).max() * rng.standard_normal(12)
        if np.min(y * (X @ cand)) <= 0:
            cand = rho + 0.05 * np.abs(rho).max() * rng.standard_normal(12)
        assert np.min(y * (X @ cand)) > 0
        assert A_.kkt_residual(cand, X, y, 2) > 0.05
    assert A_.kkt_residual(-rho, X, y, 2) == math.inf  # no positive margin
    # the l1 optimum is not a KKT point of the depth-3 problem (l_{2/3})
    assert A_.kkt_residual(rho, X, y, 3) > 1e-2


def test_kkt_sign_constrained():
    X, y = _separable(8, 12, 4)
    rho = A_.max_margin(X, y, 1.0, sign="nonnegative")
    assert A_.kkt_residual(rho, X, y, 2, sign="nonnegative") < 1e-10
    assert A_.kkt_residual(rho, X, y, 2) > 1e-3  # not the unconstrained optimum (test_sign_constrained_l1)


def test_kkt_depth3_against_slsqp():
    # Independent KKT points of min ||rho||_{2/3} s.t. margins >= 1: substitute rho = w^3, so the objective is
    # ||w||^2 (smooth) and the constraints sum_j a_ij w_j^3 >= 1; SLSQP from several starts.
    X, y = _separable(4, 6, 12)
    Ay = y[:, None] * X
    rng = np.random.default_rng(13)
    found = 0
    for _ in range(6):
        w0 = rng.standard_normal(6)
        w0 *= 1.5 / np.min(Ay @ w0**3) ** (1 / 3) if np.min(Ay @ w0**3) > 0 else 1.0
        res = scipy.optimize.minimize(
            lambda w: w @ w, w0, jac=lambda w: 2 * w, method="SLSQP",
            constraints=[dict(type="ineq", fun=lambda w: Ay @ w**3 - 1, jac=lambda w: Ay * 3 * w**2)],
            options=dict(ftol=1e-16, maxiter=2000))
        if np.min(Ay @ res.x**3) < 1 - 1e-8:  # (SLSQP often ends with "positive directional derivative")
            continue
        found += 1
        cert = A_.kkt_certificate(res.x**3, X, y, 3, active_tol=1e-6, support_tol=1e-4)
        assert cert.residual < 1e-6, cert
    assert found >= 3


# ---------------------------------------------------------------- regression references (mirror map)


def _gf_limit(X, y, a0, S=None):
    """Direct gradient flow of the layers, L = (1/2n) sum (f - y)^2, DOP853 at rtol 1e-13 to loss < 1e-28."""
    n = X.shape[0]
    L, m = a0.shape
    Am = X @ (np.eye(X.shape[1]) if S is None else S).T

    def rhs(_t, th):
        a = th.reshape(L, m)
        g = Am.T @ ((Am @ a.prod(0) - y) / n)
        return (-np.stack([np.prod(np.delete(a, l, 0), 0) for l in range(L)]) * g).ravel()

    def small(_t, th):
        return 0.5 * np.mean((Am @ th.reshape(L, m).prod(0) - y) ** 2) - 1e-28

    small.terminal = True
    sol = scipy.integrate.solve_ivp(rhs, (0, 1e7), a0.ravel(), method="DOP853", rtol=1e-13, atol=1e-16, events=small)
    assert sol.status == 1, sol.message
    return sol.y[:, -1].reshape(L, m).prod(0)


def _problem(seed=21):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 6)), rng.standard_normal(3), rng


@pytest.mark.parametrize("case", ["L2-random", "L2-small", "L3-tan", "L3-random", "L4-random", "L2-transform"])
def test_interpolation_limit_matches_direct_gradient_flow(case):
    X, y, rng = _problem()
    S = None
    if case == "L2-random":
        a0 = rng.uniform(0.3, 1.0, (2, 6)) * rng.choice([-1, 1], (2, 6))
    elif case == "L2-small":
        a0 = np.vstack([0.1 * np.ones(6), np.zeros(6)])
    elif case == "L3-tan":
        a0 = np.vstack([0.5 * np.ones(6), 0.5 * np.ones(6), np.zeros(6)])
    elif case == "L3-random":
        a0 = rng.uniform(0.3, 1.0, (3, 6)) * rng.choice([-1, 1], (3, 6))
    elif case == "L4-random":
        a0 = rng.uniform(0.5, 1.0, (4, 6)) * rng.choice([-1, 1], (4, 6))
    else:
        S = np.linalg.qr(rng.standard_normal((6, 6)))[0]
        a0 = 0.3 * rng.standard_normal((2, 6))
    ref = _gf_limit(X, y, a0, S)
    res = A_.interpolation_limit(X, y, a0, S)
    assert np.max(np.abs(res.rho - ref)) < 1e-9 * np.max(np.abs(ref))
    np.testing.assert_allclose(res.beta, (np.eye(6) if S is None else S).T @ res.rho, atol=1e-15)
    assert res.residual < 1e-12
    if case in ("L2-random", "L3-tan"):  # the ODE route agrees with the closed forms
        ode = A_.interpolation_limit(X, y, a0, S, method="ode")
        assert np.max(np.abs(ode.rho - res.rho)) < 1e-10 * np.max(np.abs(ref))
        assert abs(ode.potential - res.potential) < 1e-10 * abs(res.potential)


def test_mirror_map_closed_forms_against_ode():
    rng = np.random.default_rng(22)
    # L = 3, a1 = a2 = alpha, a3 = 0: Phi = alpha^3 tan(alpha z) sec^2(alpha z)  (closed form, checked here)
    alpha = np.array([0.3, 1.0, 2.0, 0.05])
    z = np.array([1.2, -0.9, 0.7, 25.0])  # |alpha z| < pi/2
    a0 = np.vstack([alpha, alpha, np.zeros(4)])
    th = alpha * z
    closed = alpha**3 * np.tan(th) / np.cos(th) ** 2
    for method in ("auto", "ode"):
        phi, dphi, psi = A_.mirror_map(a0, z, method)
        np.testing.assert_allclose(phi, closed, rtol=1e-11)
        np.testing.assert_allclose(psi, alpha**2 * np.tan(th) ** 2 / 2, rtol=1e-11)
    # L = 2, any init: Phi = c sinh(phi0 + 2 z) with c = |a1^2 - a2^2|/2, phi0 = asinh(rho(0)/c)
    a0 = rng.standard_normal((2, 5))
    z = rng.uniform(-2, 2, 5)
    c = np.abs(a0[0] ** 2 - a0[1] ** 2) / 2
    sinh_form = c * np.sinh(np.arcsinh(a0[0] * a0[1] / c) + 2 * z)
    for method in ("auto", "ode"):
        np.testing.assert_allclose(A_.mirror_map(a0, z, method)[0], sinh_form, rtol=1e-11)
    # L = 4, generic init: Phi' and psi*' = Phi by central differences
    a0 = rng.uniform(0.5, 1.0, (4, 3)) * rng.choice([-1, 1], (4, 3))
    z, h = np.array([0.3, -0.2, 0.1]), 1e-5
    phi, dphi, psi = A_.mirror_map(a0, z)
    phi_p, _, psi_p = A_.mirror_map(a0, z + h)
    phi_m, _, psi_m = A_.mirror_map(a0, z - h)
    np.testing.assert_allclose((phi_p - phi_m) / (2 * h), dphi, rtol=1e-8)
    np.testing.assert_allclose((psi_p - psi_m) / (2 * h), phi, rtol=1e-8)
    assert np.all(dphi > 0)


def _woodworth(X, y, alpha):
    """argmin Q_alpha(b) s.t. Xb = y by damped Newton in null-space coordinates (primal, independent of the
    dual mirror-map solve); Q_alpha(b) = alpha^2 sum q(b_j / alpha^2), q(z) = 2 - sqrt(4 + z^2) + z asinh(z/2)."""
    s = alpha**2
    b0, N = np.linalg.pinv(X) @ y, scipy.linalg.null_space(X)
    Q = lambda b: s * np.sum(2 - np.sqrt(4 + (b / s) ** 2) + (b / s) * np.arcsinh(b / (2 * s)))
    w = np.zeros(N.shape[1])
    for _ in range(200):
        b = b0 + N @ w
        g = N.T @ np.arcsinh(b / (2 * s))
        H = N.T @ (N / np.sqrt(4 * s * s + b * b)[:, None])
        step = -np.linalg.solve(H, g)
        if -g @ step < 1e-28:
            break
        t = 1.0
        while Q(b0 + N @ (w + t * step)) > Q(b) + 1e-4 * t * (g @ step) and t > 1e-12:
            t /= 2
        w = w + t * step
    b = b0 + N @ w
    return b, Q(b)


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 1.0, 10.0])
def test_woodworth_closed_form(alpha):
    X, y, _ = _problem(23)
    b_ref, Q = _woodworth(X, y, alpha)
    # beta = u^2 - v^2 = (u + v)(u - v), u(0) = v(0) = alpha  ->  a0 = (2 alpha, 0)
    res = A_.interpolation_limit(X, y, np.vstack([2 * alpha * np.ones(6), np.zeros(6)]))
    assert np.max(np.abs(res.beta - b_ref)) < 1e-8 * np.max(np.abs(b_ref))
    assert abs(2 * res.potential - Q) < 1e-9 * Q


def test_scale_limits_l2_and_l1():
    X, y, _ = _problem(24)
    pinv = np.linalg.pinv(X) @ y
    b = cp.Variable(6)
    cp.Problem(cp.Minimize(cp.norm1(b)), [X @ b == y]).solve(solver=cp.HIGHS)
    l1 = b.value
    errs = []
    for alpha in (1e-2, 1e-4, 1e-6):
        res = A_.interpolation_limit(X, y, np.vstack([2 * alpha * np.ones(6), np.zeros(6)]))
        errs.append(np.max(np.abs(res.beta - l1)) / np.max(np.abs(l1)))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3  # slow (data-dependent) approach to l1
    big = A_.interpolation_limit(X, y, np.vstack([200.0 * np.ones(6), np.zeros(6)]))
    assert np.max(np.abs(big.beta - pinv)) < 1e-7 * np.max(np.abs(pinv))
    # depth 3 with small init also approaches the min-l1 interpolator
    d3 = A_.interpolation_limit(X, y, np.vstack([0.01 * np.ones(6), 0.01 * np.ones(6), np.zeros(6)]))
    assert np.max(np.abs(d3.beta - l1)) < 1e-3 * np.max(np.abs(l1))


# ---------------------------------------------------------------- regression references in closed form


def _fc_gradient_flow_limit(X, y, net, t1=2e3):
    """β of a fully connected net after the layer-wise gradient flow of L = (1/2n) Σ (f − y)², integrated with
    scipy's DOP853 at rtol 1e-12 (independent of rank_one_limit's reduction to a scalar equation)."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    theta0, unravel = ravel_pytree(net)

    @jax.jit
    def rhs(theta):
        def loss(th):
            return 0.5 * jnp.mean((jax.vmap(unravel(th))(X) - y) ** 2)

        return -jax.grad(loss)(theta)

    sol = scipy.integrate.solve_ivp(lambda t, th: np.asarray(rhs(jnp.asarray(th))), (0.0, t1), np.asarray(theta0),
                                    method="DOP853", rtol=1e-12, atol=1e-14)
    assert sol.success, sol.message
    final = unravel(jnp.asarray(sol.y[:, -1]))
    assert float(0.5 * jnp.mean((jax.vmap(final)(X) - y) ** 2)) < 1e-24  # converged to an interpolator
    return np.asarray(final.beta())


@pytest.mark.parametrize("depth", [2, 3])
def test_rank_one_limit_matches_the_layerwise_flow(depth):
    """The balanced rank-one fully connected net (width 2, only the first unit used) from α·û, û ∝ u: the flow's
    limit, integrated layer by layer, equals rank_one_limit's closed form up to a scalar root."""
    rng = np.random.default_rng(40)
    X, y = rng.standard_normal((2, 4)), rng.standard_normal(2)
    u = np.array([1.0, -2.0, 0.5, 1.0])
    net = fs.networks.FullyConnected.init(4, depth, width=2, scale=1.0, direction=u)
    beta = A_.rank_one_limit(X, y, u, 1.0, depth)
    np.testing.assert_allclose(beta, _fc_gradient_flow_limit(X, y, net), rtol=0, atol=1e-8)
    # not the minimum-norm interpolant: the initialisation's null-space part survives
    assert np.linalg.norm(beta - np.linalg.pinv(X) @ y) > 1e-2


def test_min_norm_interpolants_against_cvxpy():
    """ℓ2: the minimum-norm solution of numpy's lstsq; ℓ1: cvxpy (Clarabel) on min ‖ρ‖₁ s.t. Aρ = y. With a
    duplicated column the ℓ1 minimisers form a segment; the returned one splits the weight equally."""
    rng = np.random.default_rng(41)
    X, y = rng.standard_normal((3, 7)), rng.standard_normal(3)
    np.testing.assert_allclose(A_.min_norm_interpolant(X, y, 2.0), np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-12)
    rho = cp.Variable(7)
    problem = cp.Problem(cp.Minimize(cp.norm1(rho)), [X @ rho == y])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    l1 = A_.min_norm_interpolant(X, y, 1.0)
    np.testing.assert_allclose(l1, rho.value, atol=1e-8)
    # a transform with two equal rows: coordinates 0 and 7 see the same column of X Sᵀ
    S = np.vstack([np.eye(7), np.eye(7)[:1]])
    shared = A_.min_norm_interpolant(X, y, 1.0, transform=S)
    np.testing.assert_allclose(shared[[0, 7]], [l1[0] / 2, l1[0] / 2], atol=1e-10)
    np.testing.assert_allclose(np.sum(np.abs(shared)), np.sum(np.abs(l1)), rtol=1e-10)
    with pytest.raises(ValueError, match="no ρ"):
        A_.min_norm_interpolant(np.ones((2, 3)), np.array([1.0, -1.0]), 1.0)


def test_directions_helpers():
    """coordinates over a trajectory equal each save's own margin_geometry().rho; unit and log_log_grid by
    definition."""
    X, y = _separable(6, 4, 42)
    net = fs.networks.Diagonal.init(4, 2, scale=0.3, shape="last_zero")
    grid = A_.log_log_grid(0.5, 50.0, 6)
    np.testing.assert_allclose(np.diff(np.log(grid)), np.log(100.0) / 5, rtol=1e-12)  # even in log(log t)
    traj = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=50.0, save_log_t=grid)
    rho = A_.coordinates(traj)
    assert rho.shape == (traj.log_t.shape[0], 4)
    for k in range(rho.shape[0]):
        model = jax.tree_util.tree_map(lambda leaf, k=k: leaf[k], traj.params)
        np.testing.assert_allclose(rho[k], np.prod(np.stack(model.layers), axis=0), rtol=1e-14)
    np.testing.assert_allclose(A_.coordinates(net), net.beta())
    u = A_.unit(np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(u, [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(TypeError, match="fs.networks"):
        A_.coordinates(np.ones(3))
    for bad, error in ((dict(first_log_t=0.0), ValueError), (dict(log_t1=0.1), ValueError), (dict(n=1), ValueError),
                       (dict(n=2.0), TypeError)):
        args = dict(first_log_t=0.5, log_t1=50.0, n=6) | bad
        with pytest.raises(error):
            A_.log_log_grid(**args)


# ---------------------------------------------------------------- solver status and output


def test_max_margin_polishes_or_refuses_an_inaccurate_solve(monkeypatch):
    """A solver that says optimal_inaccurate: accepted only after the active-set polish reaches a KKT point to
    1e-9 (checked against scipy's LP), refused (RuntimeError) when nothing can be polished (p = inf)."""
    from flowsim.analysis import _margins

    real_solve = _margins._solve

    def inaccurate(problem, p, complex_var):
        _, solver = real_solve(problem, p, complex_var)
        var = problem.variables()[0]
        var.value = var.value * (1.0 + 1e-5 * np.random.default_rng(0).standard_normal(var.value.shape))
        return cp.OPTIMAL_INACCURATE, solver

    monkeypatch.setattr(_margins, "_solve", inaccurate)
    X, y = _separable(8, 12, 0)
    sol = A_.max_margin_solution(X, y, 1.0)
    assert "polished" in sol.status and "KKT residual" in sol.status
    _, value = _linprog_l1(X, y)
    assert abs(sol.norm - value) < 1e-10 * value
    with pytest.raises(RuntimeError, match="optimal_inaccurate"):
        A_.max_margin_solution(X, y, math.inf)


def test_highs_banner_does_not_reach_stdout(capfd):
    """HiGHS prints its banner from C++ to file descriptor 1; max_margin must keep stdout clean."""
    X, y = _separable(6, 5, 43)
    A_.max_margin(X, y, p=1.0)
    A_.min_norm_interpolant(X[:3], y[:3], 1.0)
    assert capfd.readouterr().out == ""


# ---------------------------------------------------------------- bad inputs


_X, _Y = _separable(5, 4, 30)
BAD_INPUTS = [
    ("X-1d", lambda: A_.max_margin(_X[0], _Y), ValueError, "shape"),
    ("y-shape", lambda: A_.max_margin(_X, _Y[:3]), ValueError, r"shape \(5,\)"),
    ("X-nan", lambda: A_.max_margin(np.where(_X > 1, np.nan, _X), _Y), ValueError, "non-finite"),
    ("X-complex", lambda: A_.max_margin(_X * 1j, _Y), TypeError, "real-valued"),
    ("X-str", lambda: A_.max_margin(np.full((5, 4), "a"), _Y), TypeError, "numeric"),
    ("y-labels", lambda: A_.max_margin(_X, np.where(_Y > 0, 2.0, -1.0)), ValueError, r"\+1 or -1"),
    ("p-unsupported", lambda: A_.max_margin(_X, _Y, p=3), ValueError, "p = 3"),
    ("p-bool", lambda: A_.max_margin(_X, _Y, p=True), TypeError, "p must be a number"),
    ("sign-unknown", lambda: A_.max_margin(_X, _Y, sign="positive"), ValueError, "'positive' is unknown"),
    ("sign-values", lambda: A_.max_margin(_X, _Y, sign=[1, 2, 0, 0]), ValueError, r"\+1 \(ρ_j ≥ 0\)"),
    ("sign-shape", lambda: A_.max_margin(_X, _Y, sign=[1, 0]), ValueError, r"shape \(4,\)"),
    ("transform-shape", lambda: A_.max_margin(_X, _Y, transform=np.eye(3)), ValueError, "transform must have shape"),
    ("transform-not-unitary", lambda: A_.max_margin(_X, _Y, transform=_dft(4) * np.array([1.0, 2.0, 1.0, 1.0])),
     ValueError, "orthonormal columns"),
    ("sign-complex", lambda: A_.max_margin(_X, _Y, transform=_dft(4), sign="nonnegative"), ValueError,
     "real coordinates"),
    ("not-separable", lambda: A_.max_margin(np.array([[1.0], [1.0]]), np.array([1.0, -1.0])), ValueError,
     "not linearly separable"),
    ("not-separable-2d", lambda: A_.max_margin(np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([1.0, -1.0])),
     ValueError, "not linearly separable"),
    ("not-separable-sign", lambda: A_.max_margin(np.array([[1.0, 1.0]]), np.array([-1.0]), sign="nonnegative"),
     ValueError, "sign constraint"),
    ("margin-shape", lambda: A_.normalized_margin(np.ones(3), _X, _Y), ValueError, r"shape \(\.\.\., 4\)"),
    ("margin-p-zero", lambda: A_.normalized_margin(np.ones(4), _X, _Y, p=0), ValueError, "p must be > 0"),
    ("margin-p-str", lambda: A_.normalized_margin(np.ones(4), _X, _Y, p="two"), TypeError, "must be a number"),
    ("stable-rank-1d", lambda: A_.stable_rank(np.ones(3)), ValueError, "at least 2 dimensions"),
    ("kkt-depth-1", lambda: A_.kkt_residual(np.ones(4), _X, _Y, 1), ValueError, "depth must be an integer ≥ 2"),
    ("kkt-depth-float", lambda: A_.kkt_residual(np.ones(4), _X, _Y, 2.5), TypeError, "depth"),
    ("kkt-zero", lambda: A_.kkt_residual(np.zeros(4), _X, _Y, 2), ValueError, "identically zero"),
    ("kkt-rho-shape", lambda: A_.kkt_residual(np.ones(5), _X, _Y, 2), ValueError, r"rho must have shape \(4,\)"),
    ("kkt-active-tol", lambda: A_.kkt_residual(np.ones(4), _X, _Y, 2, active_tol=-1), ValueError, "active_tol"),
    ("kkt-support-tol-bool", lambda: A_.kkt_residual(np.ones(4), _X, _Y, 2, support_tol=True), TypeError,
     "support_tol"),
    ("interp-overdetermined", lambda: A_.interpolation_limit(_X, _Y, np.ones((2, 4))), ValueError, "underdetermined"),
    ("interp-depth-1", lambda: A_.interpolation_limit(_X.T, np.ones(4), np.ones((1, 5))), ValueError, "L >= 2"),
    ("interp-a0-shape", lambda: A_.interpolation_limit(_X.T, np.ones(4), np.ones((2, 4))), ValueError,
     r"shape \(L, 5\)"),
    ("interp-method", lambda: A_.interpolation_limit(_X.T, np.ones(4), np.ones((2, 5)), method="fsolve"),
     ValueError, "unknown method 'fsolve'"),
    ("interp-complex-transform", lambda: A_.interpolation_limit(_X.T, np.ones(4), np.ones((2, 5)), transform=_dft(5)),
     ValueError, "real transform"),
    ("interp-y-inf", lambda: A_.interpolation_limit(_X.T, np.full(4, np.inf), np.ones((2, 5))), ValueError,
     "non-finite"),
    ("interp-max-iter", lambda: A_.interpolation_limit(_X.T, np.ones(4), np.ones((2, 5)), max_iter=0), ValueError,
     "max_iter"),
    ("mirror-z-shape", lambda: A_.mirror_map(np.ones((2, 3)), np.ones(2)), ValueError, r"shape \(3,\)"),
    ("mirror-rtol", lambda: A_.mirror_map(np.ones((2, 3)), np.ones(3), rtol=0.0), ValueError, "rtol"),
]


@pytest.mark.parametrize("build, error, message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_refused(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_unreachable_targets_raise():
    # balanced same-sign depth-3 init keeps rho_j > 0 forever; targets needing a negative coordinate fail.
    X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with pytest.raises(RuntimeError, match="not reachable|range of Phi"):
        A_.interpolation_limit(X, np.array([1.0, -1.0]), 0.5 * np.ones((3, 3)))
