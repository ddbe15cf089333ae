import math
import os
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

jax.config.update("jax_enable_x64", True)
# A persistent compilation cache keeps repeated CI runs and local re-runs fast.
_cache = pathlib.Path(os.environ.get("FLOWSIM_JAX_CACHE", pathlib.Path.home() / ".cache" / "flowsim" / "jax"))
_cache.mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", str(_cache))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop in-memory compiled programs after each test module. Hundreds of XLA programs kept alive in one
    process ended in a segfault inside XLA's CPU compiler late in the full suite (never in a module run
    alone); the persistent cache above makes the recompiles cheap."""
    yield
    jax.clear_caches()


# ----------------------------------------------------------------------------------------------------------
# Shared helpers for the analysis and network tests: data, runs on a fixed save grid, and the independent
# convex references (scipy's HiGHS LPs, cvxpy/Clarabel QPs). Imported with `from conftest import ...`.

_HIGHS_TIGHT = dict(primal_feasibility_tolerance=1e-10, dual_feasibility_tolerance=1e-10)


def planted(seed, n=10, d=20, k=2, gap=0.5):
    """Separable data from a k-sparse teacher; samples kept only when their teacher margin exceeds gap·‖teacher‖."""
    rng = np.random.default_rng(seed)
    teacher = np.zeros(d)
    teacher[:k] = rng.standard_normal(k)
    X = rng.standard_normal((4 * n, d))
    keep = np.abs(X @ teacher) > gap * np.linalg.norm(teacher)
    X = X[keep][:n]
    return X, np.sign(X @ teacher)


def uniform_log_t(log_t1, n_save):
    """t = 0, then n_save − 1 saves uniform in log t from 3 decades below t = 1 up to log t1 (a fixed grid, so
    tests do not depend on the engine's default save grid)."""
    return np.concatenate([[-np.inf], np.linspace(-3.0 * math.log(10.0), log_t1, n_save - 1)])


def run_logistic(net, X, y, log_t1, n_save=40):
    """fs.simulate on the logistic loss to log t1, asserting the horizon was reached."""
    import flowsim as fs

    traj = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=log_t1,
                       save_log_t=uniform_log_t(log_t1, n_save))
    assert bool(traj.ok), traj.message
    return traj


def l1_lp(X, y, sign_bounds=None, cost=None):
    """min Σ|ρ_j| (+ cost·ρ) s.t. y_i⟨x_i, ρ⟩ ≥ 1 by HiGHS (scipy) on ρ = p − q, p, q ≥ 0. ``sign_bounds`` (d,) of
    +1 (ρ_j ≥ 0), −1 (ρ_j ≤ 0), 0 (free). Returns (ρ, optimal value)."""
    n, d = X.shape
    Z = y[:, None] * X
    s = np.zeros(d) if sign_bounds is None else np.asarray(sign_bounds)
    bounds = [(0, None) if sj >= 0 else (0, 0) for sj in s] + [(0, None) if sj <= 0 else (0, 0) for sj in s]
    c = np.ones(2 * d) + (0.0 if cost is None else np.concatenate([cost, -cost]))
    res = scipy.optimize.linprog(c, A_ub=np.hstack([-Z, Z]), b_ub=-np.ones(n), bounds=bounds, method="highs",
                                 options=_HIGHS_TIGHT)
    assert res.status == 0, res.message
    rho = res.x[:d] - res.x[d:]
    return rho, float(np.sum(np.abs(rho)))


def unique_l1_direction(X, y, sign_bounds=None):
    """The ℓ1 LP solution (unit ℓ2), after checking it is unique: small random perturbations of the objective
    (which would select other vertices of a non-unique optimal face) must not move it."""
    rho, _ = l1_lp(X, y, sign_bounds)
    rng = np.random.default_rng(1)
    for _ in range(3):
        other, _ = l1_lp(X, y, sign_bounds, cost=1e-5 * rng.standard_normal(X.shape[1]))
        assert np.max(np.abs(other - rho)) < 1e-7 * np.max(np.abs(rho)), "the LP solution is not unique"
    return rho / np.linalg.norm(rho)


def svm_direction(X, y):
    """The ℓ2 max-margin direction (unit ℓ2) by cvxpy/Clarabel at tolerances 1e-12."""
    import cvxpy as cp

    w = cp.Variable(X.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(w)), [cp.multiply(y, X @ w) >= 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == cp.OPTIMAL
    return w.value / np.linalg.norm(w.value)


def unitary_dft(d):
    """F[k, j] = e^{−2πi kj/d}/√d from numpy.fft."""
    return np.fft.fft(np.eye(d), axis=0, norm="ortho")


# ----------------------------------------------------------------------------------------------------------
# Shared builders for the kink and sliding tests (tests/test_kinks*.py, tests/test_nonsmooth.py, tests/test_sliding.py).


class OwnReLU(eqx.Module):
    """A user's bias-free ReLU net x ↦ w₂ᵀ max(W₁x, 0) (jnp.maximum against a constant)."""

    W1: jax.Array
    w2: jax.Array

    def __call__(self, x):
        return self.w2 @ jnp.maximum(self.W1 @ x, 0.0)


class OwnLeaky(eqx.Module):
    """A user's two-layer leaky-ReLU net Σ_j a_j max(γ z_j, z_j) (jnp.maximum between traced values); subclasses
    write the same kink other ways by overriding `__call__`."""

    W: jax.Array
    a: jax.Array
    leak: float = eqx.field(static=True)

    def __call__(self, x):
        z = self.W @ x
        return self.a @ jnp.maximum(self.leak * z, z)


def linear_phase_to_kink(X, y, w0, n):
    """The single-neuron flow's first phase (every sample on the identity side of the kink): the linear ODE
    w' = (b − Aw)/n, A = XᵀX, b = Xᵀy, solved as w(t) = w* + e^{−At/n}(w0 − w*), and the time t1 where w₁
    reaches 0 (the kink of sample 1), by Brent's method to 1e-15. Returns (phase1, t1)."""
    A, b = X.T @ X, X.T @ y
    w_star = np.linalg.solve(A, b)

    def phase1(t):
        return w_star + scipy.linalg.expm(-A * t / n) @ (w0 - w_star)

    return phase1, scipy.optimize.brentq(lambda t: phase1(t)[0], 0.0, 50.0, xtol=1e-15)
