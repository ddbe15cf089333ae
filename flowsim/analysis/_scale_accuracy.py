"""Initialisation scale vs training accuracy: references for β = u₊^D − u₋^D, u±(0) = α·1.

Moroshko, Gunasekar, Woodworth, Lee, Srebro & Soudry, "Implicit bias in deep linear classification:
initialization scale vs training accuracy", NeurIPS 2020; Woodworth et al., "Kernel and rich regimes in
overparametrized models", COLT 2020.

Conventions. X̃ has rows y_i x_i, margins m = X̃β. The paper's accuracy ε is the **summed** exponential loss
Σ_i exp(−m_i) (ε = n at β = 0); flowsim's loss is the mean, so log ε = log L + log n (`summed_log_loss`,
`mean_log_loss`). A gradient flow of the summed loss is the mean-loss flow run n times faster: the same path,
so the state at a given loss level does not depend on the normalisation.

The flow (`fs.networks.SignedDiagonal`) with ν(t) = ∫₀ᵗ w, w_i = exp(−m_i), z = X̃ᵀν:

    D = 2:  β = 2α² sinh(4z);    D > 2:  β = α^D h_D(D(D−2) α^{D−2} z),  h_D(s) = (1−s)^{−D/(D−2)} − (1+s)^{−D/(D−2)}.

So the whole flow is the n-dimensional ODE ν' = exp(−X̃β(X̃ᵀν)) (`reduced_scale_flow`). For D = 2 the state
is the KKT point of min Q_{α²}(β) s.t. X̃β ≥ m(t) with multipliers 4ν, Q_μ(β) = μ Σ_j q(β_j/μ),
q(z) = 2 − √(4+z²) + z asinh(z/2) (Woodworth et al. 2020); replacing the margins by their minimum γ and
rescaling β = γb gives b = argmin Q_μ(b) s.t. X̃b ≥ 1 with μ = α²/γ, γ ≈ log(1/ε) (`q_minimizer`,
`log_regime_parameter`).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special
from jaxtyping import ArrayLike, Float

from .._checks import as_int, as_labels, as_positive_float, as_real_matrix, as_real_scalar
from .._problem import Problem
from .._simulate import simulate
from .._trajectory import Status
from ..networks import SignedDiagonal

_MAX_LOG_INV_MU = 1e8


class ReducedScaleFlow(NamedTuple):
    """The gradient flow of β = u₊^D − u₋^D at given accuracies, from the reduced ODE (`reduced_scale_flow`).

    Fields (k = number of accuracies): `log_inv_eps` (k,) log(1/ε) with ε the summed loss;
    `beta` (k, d); `nu` (k, n) ν = ∫ w; `margins` (k, n) X̃β; `loss_residual` (k,) |log Σ exp(−X̃β) + log(1/ε)|,
    a check of the integration (the loss level is the ODE's independent variable); `num_steps`,
    `status` (scipy's message).
    """

    log_inv_eps: Float[np.ndarray, " k"]
    beta: Float[np.ndarray, "k d"]
    nu: Float[np.ndarray, "k n"]
    margins: Float[np.ndarray, "k n"]
    loss_residual: Float[np.ndarray, " k"]
    num_steps: int
    status: str


class QMinimizer(NamedTuple):
    """b = argmin Q_μ(b) s.t. y_i⟨x_i, b⟩ ≥ 1 (`q_minimizer`).

    Fields: `beta` (d,) the minimiser (smallest margin 1); `multipliers` (n,) λ ≥ 0 with
    b = 2μ sinh(X̃ᵀλ); `log_inv_mu` log(1/μ); `potential` Q_μ(b); `kkt_residual` the largest of the
    primal infeasibility max(0, 1 − X̃b), the dual infeasibility max(0, −λ) and complementarity |λ_i (X̃b − 1)_i|;
    `iterations` (Newton steps, all continuation stages).
    """

    beta: Float[np.ndarray, " d"]
    multipliers: Float[np.ndarray, " n"]
    log_inv_mu: float
    potential: float
    kkt_residual: float
    iterations: int


# ------------------------------------------------------------------------------------------------ arguments


def _as_alpha(alpha) -> float:
    return as_positive_float("the initialisation scale alpha", alpha)


def _as_scale_depth(depth) -> int:
    return as_int("depth D (β = u₊^D − u₋^D; D = 1 is a linear model)", depth, minimum=2)


def _signed_rows(X, y) -> np.ndarray:
    X = as_real_matrix("X", X)
    y = as_labels("y", y, X.shape[0])
    return y[:, None] * X


# ------------------------------------------------------------------------------------------------ closed forms


def signed_diagonal_beta(
    z: Float[ArrayLike, "*batch d"], alpha: float, depth: int
) -> Float[np.ndarray, "*batch d"]:
    """β(z) for β = u₊^D − u₋^D, u±(0) = α·1, after the gradient flow has accumulated z = X̃ᵀ∫₀ᵗ w.

    D = 2: β = 2α² sinh(4z). D > 2: β = α^D h_D(D(D−2) α^{D−2} z), h_D(s) = (1−s)^{−D/(D−2)} − (1+s)^{−D/(D−2)},
    from d(u±^{2−D})/dt = ∓D(D−2)(X̃ᵀw) (Moroshko et al., NeurIPS 2020). Defined for |D(D−2)α^{D−2}z| < 1
    (the flow never leaves that range: it would take infinite time); NaN outside it.
    """
    return _beta_and_slopes(np.asarray(z, dtype=np.float64), _as_alpha(alpha), _as_scale_depth(depth))[0]


def _beta_and_slopes(z: np.ndarray, alpha: float, D: int):
    """β(z), β'(z), β''(z) elementwise."""
    if D == 2:
        a2 = alpha * alpha
        sh, ch = np.sinh(4 * z), np.cosh(4 * z)
        return 2 * a2 * sh, 8 * a2 * ch, 32 * a2 * sh
    c = D * (D - 2) * alpha ** (D - 2)
    s = c * z
    p = D / (D - 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = 1.0 - s, 1.0 + s
        inside = (lo > 0) & (hi > 0)
        lo, hi = np.where(inside, lo, np.nan), np.where(inside, hi, np.nan)
        scale = alpha**D
        beta = scale * (lo**-p - hi**-p)
        d1 = scale * c * p * (lo ** (-p - 1) + hi ** (-p - 1))
        d2 = scale * c * c * p * (p + 1) * (lo ** (-p - 2) - hi ** (-p - 2))
    return beta, d1, d2


# ------------------------------------------------------------------------------------------------ loss units


def summed_log_loss(log_loss: Float[ArrayLike, "..."], n: int) -> Float[np.ndarray, "..."]:
    """log ε of the paper's summed loss Σ_i ℓ_i from flowsim's mean loss: log ε = log L + log n."""
    n = _as_count(n)
    return np.asarray(log_loss, dtype=np.float64) + math.log(n)


def mean_log_loss(log_eps: Float[ArrayLike, "..."], n: int) -> Float[np.ndarray, "..."]:
    """flowsim's log L = log((1/n) Σ ℓ_i) for the paper's summed loss ε: log L = log ε − log n
    (`fs.simulate(..., target_log_loss=mean_log_loss(log ε, n))` trains to the paper's ε)."""
    n = _as_count(n)
    return np.asarray(log_eps, dtype=np.float64) - math.log(n)


def _as_count(n, name: str = "n (the number of samples)") -> int:
    return as_int(name, n, minimum=1)


def log_regime_parameter(
    alpha: Float[ArrayLike, "..."], depth: int, log_inv_eps: Float[ArrayLike, "..."]
) -> Float[np.ndarray, "..."]:
    """log μ for μ = α^D / log(1/ε) (ε the summed loss): log μ = D log α − log log(1/ε).

    The D = 2 derivation: the flow at accuracy ε is close to argmin Q_μ s.t. margins ≥ 1, rescaled by the
    smallest margin γ ≈ log(1/ε); μ → ∞ is the kernel (ℓ2) regime, μ → 0 the rich (ℓ1) one. Needs ε < 1.
    """
    D = _as_scale_depth(depth)
    alpha = np.asarray(alpha, dtype=np.float64)
    log_inv_eps = np.asarray(log_inv_eps, dtype=np.float64)
    if np.any(~(alpha > 0)) or np.any(~np.isfinite(alpha)):
        raise ValueError(f"alpha must be positive and finite; got {alpha[~(alpha > 0) | ~np.isfinite(alpha)][:3]}.")
    if np.any(~(log_inv_eps > 0)):
        raise ValueError(
            f"log(1/ε) must be positive (ε < 1) for μ = α^D/log(1/ε); got {log_inv_eps[~(log_inv_eps > 0)][:3]}."
        )
    return D * np.log(alpha) - np.log(log_inv_eps)


# ------------------------------------------------------------------------------------------------ reduced ODE


def reduced_scale_flow(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    alpha: float,
    depth: int,
    log_inv_eps: Float[ArrayLike, " k"],
    *,
    rtol: float = 1e-12,
    atol: float = 1e-14,
) -> ReducedScaleFlow:
    """The gradient flow of β = u₊^D − u₋^D (u±(0) = α·1, exponential loss) at the accuracies ε, from the
    reduced n-dimensional ODE of Moroshko et al. (NeurIPS 2020), solved with scipy (Radau, exact Jacobian).

    The flow is ν' = w, w = exp(−X̃β(X̃ᵀν)), β(z) from `signed_diagonal_beta`. It is integrated with the loss
    level λ = −log Σ_i exp(−m_i) = log(1/ε) as the independent variable (the path does not depend on how it is
    timed): dλ/dt = wᵀKw / Σw with K = X̃ diag(β'(z)) X̃ᵀ, so

        dν/dλ = p / (pᵀ K p),   p = softmax(−X̃β),

    in σ = log(1 + λ − λ₀), λ₀ = −log n (β = 0), so that steps grow geometrically with λ. Neither t nor
    exp(−m) is formed: λ = 10^6 (ε = e^(−10^6)) costs about as much as λ = 10^3 (~3 s). Margins are ~λ, so
    the softmax resolves their differences only to λ·10^-16: the loss-level residual (`loss_residual`) grows
    from ~10^-8 at λ = 10^8 to ~10^-4 at λ = 10^9 (measured, D = 2, n = 6), where Radau also slows down; use
    λ ≲ 10^8. For D > 2 the closed form needs 1 − s, which loses digits sooner (loss residual ~10^-4 at
    λ = 10^6 for α = 10^-2, D = 3).

    **Arguments:** `X` (n, d), `y` (n,) labels ±1 (separable), `alpha` > 0, `depth` D ≥ 2,
    `log_inv_eps` the accuracies as log(1/ε) with ε the *summed* loss (each > −log n, i.e. ε < n);
    `rtol`, `atol` for the integrator.

    **Returns:** a `ReducedScaleFlow` (states in the order of `log_inv_eps`).
    """
    A = _signed_rows(X, y)
    n, _ = A.shape
    alpha = _as_alpha(alpha)
    D = _as_scale_depth(depth)
    rtol = as_positive_float("rtol", rtol)
    atol = as_positive_float("atol", atol)
    targets = np.atleast_1d(np.asarray(log_inv_eps, dtype=np.float64))
    if targets.ndim != 1 or targets.size == 0:
        raise ValueError(f"log_inv_eps must be a number or a 1-d array of them; got shape {targets.shape}.")
    lam0 = -math.log(n)
    bad = ~np.isfinite(targets) | (targets <= lam0)
    if np.any(bad):
        raise ValueError(
            f"log_inv_eps must be finite and above log(1/n) = {lam0:.6g} (the summed loss starts at ε = n = {n}); "
            f"got {targets[bad][:3].tolist()}."
        )
    order = np.argsort(targets)
    sigma_targets = np.log1p(targets[order] - lam0)

    def parts(nu):
        beta, d1, d2 = _beta_and_slopes(A.T @ nu, alpha, D)
        m = A @ beta
        p = scipy.special.softmax(-m)
        K = (A * d1) @ A.T
        Kp = K @ p
        denom = p @ Kp
        return beta, d1, d2, m, p, K, Kp, denom

    def field(sigma, nu):
        *_, p, _, _, denom = parts(nu)
        return math.exp(sigma) * p / denom  # dλ/dσ = e^σ

    def jacobian(sigma, nu):
        _, _, d2, _, p, K, Kp, denom = parts(nu)
        dp = -(np.diag(p) - np.outer(p, p)) @ K  # ∂p/∂ν
        g = A.T @ p
        ddenom = 2.0 * dp.T @ Kp + A @ (d2 * g * g)
        return math.exp(sigma) * (dp / denom - np.outer(p, ddenom) / denom**2)

    sol = scipy.integrate.solve_ivp(
        field, (0.0, float(sigma_targets[-1])), np.zeros(n), method="Radau", t_eval=sigma_targets,
        jac=jacobian, rtol=rtol, atol=atol,
    )
    if sol.status != 0 or sol.y.shape[1] != targets.size:
        raise RuntimeError(f"reduced_scale_flow: the integration failed (alpha={alpha}, D={D}): {sol.message}")
    nu = np.empty((targets.size, n))
    nu[order] = sol.y.T
    beta = signed_diagonal_beta(nu @ A, alpha, D)
    margins = beta @ A.T
    residual = np.abs(scipy.special.logsumexp(-margins, axis=1) + targets)
    return ReducedScaleFlow(targets, beta, nu, margins, residual, int(sol.nfev), str(sol.message))


# ------------------------------------------------------------------------------------------------ Q_mu


def woodworth_q(z: Float[ArrayLike, "..."]) -> Float[np.ndarray, "..."]:
    """q(z) = 2 − √(4+z²) + z asinh(z/2) (Woodworth et al., COLT 2020): q(z) ≈ z²/4 for small z,
    ≈ |z| log|z| − |z| for large z. Computed without cancellation for small |z| (series) and without overflow
    for large |z| (q = |z| log|z| − |z| + 2 − 1/|z| + O(|z|^{−3}) beyond 10^8)."""
    z = np.asarray(z, dtype=np.float64)
    a = np.abs(z)
    small, large = a < 1e-3, a > 1e8
    zs = np.where(small, z, 0.0)
    series = zs**2 / 4 - zs**4 / 192 + zs**6 / 3840
    zl = np.where(small | large, 1.0, z)
    direct = 2.0 - np.sqrt(4.0 + zl * zl) + zl * np.arcsinh(zl / 2.0)
    ab = np.where(large, a, 1e8)
    asymptotic = ab * (np.log(ab) - 1.0) + 2.0 - 1.0 / ab  # + O(|z|^-3)
    return np.where(small, series, np.where(large, asymptotic, direct))


def q_potential(beta: Float[ArrayLike, "*batch d"], mu: float) -> Float[np.ndarray, "*batch"]:
    """Q_μ(β) = μ Σ_j q(β_j/μ) (Woodworth et al., COLT 2020): ≈ ‖β‖₂²/(4μ) for μ → ∞ (kernel regime),
    ≈ ‖β‖₁ log(1/μ) for μ → 0 (rich regime)."""
    mu = as_positive_float("mu", mu)
    return mu * np.sum(woodworth_q(np.asarray(beta, dtype=np.float64) / mu), axis=-1)


def _log_safe_q_potential(beta: np.ndarray, tau: float) -> float:
    """μ Σ q(β_j/μ) with μ = e^{−τ}; for |β_j/μ| > 10^8, q(z) = |z| log|z| − |z| + 2 − 1/|z| + O(|z|^{−3})."""
    a = np.abs(beta)
    log_z = np.log(np.where(a > 0, a, 1.0)) + tau
    large = (a > 0) & (log_z > math.log(1e8))
    mu = math.exp(-tau) if tau < 700 else 0.0
    safe = np.where(large, 1.0, beta)
    direct = mu * woodworth_q(safe / mu) if mu > 0 else np.zeros_like(beta)
    asymptotic = a * (log_z - 1.0) + 2.0 * mu - mu * mu / np.where(large, a, 1.0)
    return float(np.sum(np.where(large, asymptotic, direct)))


def q_minimizer(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    mu: float | None = None,
    *,
    log_inv_mu: float | None = None,
    tol: float = 1e-12,
    max_iterations: int = 500,
) -> QMinimizer:
    """b = argmin Q_μ(b)  s.t.  y_i⟨x_i, b⟩ ≥ 1, the margin-constrained minimiser of Woodworth's potential.

    Solved through the smooth convex dual (q*(v) = 2cosh v − 2):

        min_{λ ≥ 0}  Σ_j 2μ(cosh((X̃ᵀλ)_j) − 1) − Σ_i λ_i,    b = 2μ sinh(X̃ᵀλ),

    by projected Newton with an Armijo search (Bertsekas 1982) and continuation in log(1/μ) (doubling it from 1),
    with 2μ cosh v = e^{v − log(1/μ)} + e^{−v − log(1/μ)} so that μ far below float64's range works. The exponent
    v − log(1/μ) loses about log(1/μ)·10^-16 to round-off, so log(1/μ) ≤ 10^8 is accepted (relative accuracy
    of b about 10^-16·log(1/μ)).
    Give `mu` or `log_inv_mu` = log(1/μ) (for μ below float64's range). μ → ∞ gives the ℓ2 max-margin
    solution scaled to margin 1, μ → 0 the ℓ1 one (Woodworth et al. 2020; Moroshko et al. 2020).
    """
    A = _signed_rows(X, y)
    n, d = A.shape
    if (mu is None) == (log_inv_mu is None):
        raise ValueError(f"give exactly one of mu and log_inv_mu; got mu={mu!r}, log_inv_mu={log_inv_mu!r}.")
    if mu is not None:
        tau = -math.log(as_positive_float("mu", mu))
    else:
        tau = float(as_real_scalar("log_inv_mu", log_inv_mu))
    if tau > _MAX_LOG_INV_MU:
        raise ValueError(
            f"log(1/μ) = {tau:.6g} is beyond {_MAX_LOG_INV_MU:g}: round-off in the exponent (log(1/μ)·10^-16) "
            "would leave no correct digit; use the ℓ1 max-margin solution (the μ → 0 limit) there."
        )
    tol = as_positive_float("tol", tol)

    max_iterations = _as_count(max_iterations, "max_iterations")
    # Continuation in τ = log(1/μ): μ ≥ 1 is solved directly from λ = 0; smaller μ from the solution at
    # twice μ's log (λ scales like τ: the ℓ1 limit has λ ≈ τκ with κ the LP's dual solution).
    stages = [min(tau, 0.0)]
    while stages[-1] < tau:
        stages.append(min(tau, max(1.0, 2.0 * stages[-1])))
    lam = np.zeros(n)
    iterations = 0
    for k, stage in enumerate(stages):
        if k > 0 and stages[k - 1] > 0:
            lam = lam * (stage / stages[k - 1])
        # round-off in the exponent v − τ grows like τ·10^-16: the attainable residual with it
        stage_tol = max(tol, 1e-14 * abs(stage))
        lam, beta, converged, used = _q_dual_newton(A, stage, lam, stage_tol, max_iterations - iterations)
        iterations += used
        if not converged:
            raise RuntimeError(
                f"q_minimizer: projected Newton did not converge at log(1/μ) = {stage:.6g} after {iterations} "
                f"iterations (max_iterations={max_iterations})."
            )
    margins = A @ beta
    kkt = max(
        float(np.max(np.maximum(0.0, 1.0 - margins))),
        float(np.max(np.abs(lam * (margins - 1.0)))) / max(1.0, float(np.max(lam))),
    )
    potential = _log_safe_q_potential(beta, tau)
    return QMinimizer(beta, lam, tau, potential, kkt, iterations)


def _q_dual_newton(A: np.ndarray, tau: float, lam: np.ndarray, tol: float, budget: int):
    """Projected, damped Newton (Bertsekas 1982; Levenberg–Marquardt) on F(λ) = Σ_j 2μ(cosh v_j − 1) − Σ λ_i, v = X̃ᵀλ, over λ ≥ 0."""
    mu = math.exp(-tau) if tau < 700 else 0.0

    def parts(lam):
        v = A.T @ lam
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: the candidate is rejected
            ep, em = np.exp(v - tau), np.exp(-v - tau)
            small = np.abs(v) < 1.0
            # 2μ(cosh v − 1) = 4μ sinh²(v/2): no cancellation against the constant 2μ for small v
            excess = np.where(small, 4.0 * mu * np.sinh(np.where(small, v, 0.0) / 2.0) ** 2, ep + em - 2.0 * mu)
            objective = np.sum(excess) - np.sum(lam)
            vs = np.where(small, v, 0.0)  # 2μ sinh v without cancelling e^{v−τ} against e^{−v−τ}
            beta = np.where(small, 2.0 * mu * np.sinh(vs), ep - em)
            curvature = np.where(small, 2.0 * mu * np.cosh(vs), ep + em)
            grad = A @ beta - 1.0
        return objective, grad, beta, curvature

    def kkt(lam, grad):
        return float(np.max(np.abs(np.minimum(lam, grad))))

    n = A.shape[0]
    objective, grad, beta, curv = parts(lam)
    if not np.isfinite(objective):
        lam = np.zeros(n)
        objective, grad, beta, curv = parts(lam)
    damping = 1e-16
    for used in range(budget + 1):
        residual = kkt(lam, grad)
        if residual < tol:
            return lam, beta, True, used
        if used == budget:
            break
        fixed = (lam <= 0.0) & (grad > 0)
        free = ~fixed
        H = (A[free] * curv) @ A[free].T
        # Levenberg–Marquardt damping: the Hessian is singular to round-off where coordinates are
        # off the support (their curvature e^{|v|−τ} underflows); ρ grows until the step is accepted.
        scale = float(np.max(np.diag(H))) if H.size else 1.0
        accepted = False
        while damping < 1e20:
            step = np.zeros(n)
            step[free] = -np.linalg.solve(H + damping * scale * np.eye(H.shape[0]), grad[free])
            step[fixed] = -grad[fixed]
            cand = np.maximum(lam + step, 0.0)
            c_obj, c_grad, c_beta, c_curv = parts(cand)
            decrease = grad @ (cand - lam)
            if np.isfinite(c_obj) and (
                c_obj < objective + 1e-4 * min(decrease, 0.0)  # Armijo, strictly better
                or kkt(cand, c_grad) < 0.5 * residual  # near the optimum F is flat to round-off
            ):
                accepted = True
                damping = max(damping / 10.0, 1e-16)
                break
            damping *= 10.0
        if not accepted:
            return lam, beta, residual < 1e3 * tol, used
        lam, objective, grad, beta, curv = cand, c_obj, c_grad, c_beta, c_curv
    return lam, beta, False, budget


# ------------------------------------------------------------------------------------------------ the sweep


class ScaleAccuracySweep(NamedTuple):
    """The flow of β = u₊^D − u₋^D over a grid of (ε, α) (`scale_accuracy_sweep`).

    Fields (k accuracies × a scales): `alphas` (a,); `log_inv_eps` (k,) the paper's log(1/ε) (summed loss);
    `beta` (k, a, d) β when the summed loss first reaches ε; `log_inv_eps_reached` (k, a) the summed log
    loss there, negated; `ok` (k, a) whether the target was reached; `num_steps` (k, a);
    `wall_time_s` (k,) per row (the first row includes compilation).
    """

    alphas: Float[np.ndarray, " a"]
    log_inv_eps: Float[np.ndarray, " k"]
    beta: Float[np.ndarray, "k a d"]
    log_inv_eps_reached: Float[np.ndarray, "k a"]
    ok: np.ndarray
    num_steps: np.ndarray
    wall_time_s: Float[np.ndarray, " k"]


def scale_accuracy_sweep(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    depth: int,
    alphas: Float[ArrayLike, " a"],
    log_inv_eps: Float[ArrayLike, " k"],
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 100_000,
    progress=None,
) -> ScaleAccuracySweep:
    """Train β = u₊^D − u₋^D from u±(0) = α·1 by gradient flow (`fs.simulate`, exponential loss) to each
    accuracy ε, for every α: the experiment of Moroshko et al. (NeurIPS 2020), exactly.

    Each row (one ε) is ONE batched solve, `eqx.filter_vmap` over α and over `target_log_loss`
    (traced, like the horizon), all rows through the same compiled function. flowsim's loss is the mean, so the
    target is log L = −log(1/ε) − log n (`mean_log_loss`); the horizon is log t = 2 log(1/ε) + 100, beyond the
    crossing (the loss falls like 1/t once the data are fitted), and a member that does not reach its target
    comes back with `ok` False.

    **Arguments:** `X` (n, d), `y` (n,) labels ±1; `depth` D ≥ 2; `alphas` (a,) > 0; `log_inv_eps`
    (k,) > 0; `rtol`, `atol`, `max_steps` for `fs.simulate`; `progress`: None, or a function that
    wraps the iterable of rows (e.g. `lambda rows: fs.sweep(rows, desc="ε")`) to show progress.
    """
    A = _signed_rows(X, y)
    n, d = A.shape
    D = _as_scale_depth(depth)
    alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    lams = np.atleast_1d(np.asarray(log_inv_eps, dtype=np.float64))
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas) & (alphas > 0)):
        raise ValueError(f"alphas must be a 1-d array of positive finite scales; got {alphas.tolist()[:5]}.")
    if lams.ndim != 1 or not np.all(np.isfinite(lams) & (lams > 0)):
        raise ValueError(f"log_inv_eps must be a 1-d array of positive finite numbers (ε < 1); got {lams.tolist()[:5]}.")
    X = jnp.asarray(as_real_matrix("X", X))
    y = jnp.asarray(as_labels("y", y, n))

    def one(alpha, target, horizon):
        problem = Problem(SignedDiagonal.init(d, D, alpha), X, y, loss="exponential")
        traj = simulate(problem, log_t1=horizon, target_log_loss=target, n_save=2, rtol=rtol, atol=atol,
                        max_steps=max_steps)
        return traj.final.beta(), traj.log_loss[-1], traj.status, traj.stats["num_steps"]

    row_solve = eqx.filter_jit(eqx.filter_vmap(one))
    k, a = lams.size, alphas.size
    beta = np.empty((k, a, d))
    reached = np.empty((k, a))
    status = np.empty((k, a), dtype=np.int64)
    steps = np.empty((k, a), dtype=np.int64)
    wall = np.empty(k)
    for row in (range(k) if progress is None else progress(range(k))):
        start = time.perf_counter()
        targets = jnp.full(a, float(mean_log_loss(-lams[row], n)))
        horizons = jnp.full(a, 2.0 * lams[row] + 100.0)
        b, log_loss, st, ns = row_solve(jnp.asarray(alphas), targets, horizons)
        beta[row], reached[row] = np.asarray(b), -summed_log_loss(np.asarray(log_loss), n)
        status[row], steps[row] = np.asarray(st), np.asarray(ns)
        wall[row] = time.perf_counter() - start
    ok = status == int(Status.TARGET_REACHED)
    return ScaleAccuracySweep(alphas, lams, beta, reached, ok, steps, wall)


# ------------------------------------------------------------------------------------------------ reading the sweep


def phase_coordinate(
    beta: Float[ArrayLike, "*batch d"],
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    q: float,
    rich: Float[ArrayLike, " d"],
) -> Float[np.ndarray, "*batch"]:
    """Where β sits between the kernel and the rich limit, by its normalised ℓ_q margin γ_q (q = 2/D):

        c(β) = (γ_q(β) − γ_q(β_ℓ2)) / (γ_q(β_rich) − γ_q(β_ℓ2)),

    with β_ℓ2 the ℓ2 max-margin direction (the kernel regime of Woodworth et al. 2020 / Moroshko et al. 2020)
    and `rich` the rich limit (D = 2: the ℓ1 max-margin solution; D > 2: an ℓ_{2/D} KKT point). c = 0 at the
    kernel limit, 1 at the rich one; early in training c can be negative (β is neither yet).
    """
    from ._margins import max_margin, normalized_margin

    q = as_positive_float("q", q)
    l2 = max_margin(X, y, 2.0)
    g_kernel = float(normalized_margin(l2, X, y, q))
    g_rich = float(normalized_margin(np.asarray(rich, dtype=np.float64), X, y, q))
    if not g_rich > g_kernel:
        raise ValueError(
            f"the rich reference's ℓ_{q:g} margin {g_rich:.6g} is not above the ℓ2 direction's {g_kernel:.6g}: "
            "no interval to place β in."
        )
    return (np.asarray(normalized_margin(beta, X, y, q)) - g_kernel) / (g_rich - g_kernel)


class VertexKKTPoint(NamedTuple):
    """A vertex of {b : X̃b ≥ 1} read off a flow state and certified as a KKT point of min ‖b‖_{2/D}
    (`vertex_kkt_point`). Fields: `beta` (d,) with smallest margin 1; `support` (d,), `active` (n,)
    boolean masks; `kkt_residual` from `fs.analysis.kkt_certificate`."""

    beta: Float[np.ndarray, " d"]
    support: np.ndarray
    active: np.ndarray
    kkt_residual: float


def vertex_kkt_point(
    beta: Float[ArrayLike, " d"],
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    depth: int,
    *,
    tol: float = 1e-3,
) -> VertexKKTPoint:
    """The KKT point of  min ‖b‖_{2/D}^{2/D}  s.t.  X̃b ≥ 1  that a rich-regime flow state β approaches.

    For D > 2 the objective Σ|b_j|^{2/D} is concave on each orthant, so its local minima over the polyhedron
    are vertices (Moroshko et al. 2020; Lyu & Li 2020 for the KKT characterisation of the limit). Read the
    support J = {|β_j| > tol·max|β|} and the active set I = {margins ≤ (1 + tol)·min margin} off β, solve
    X̃_{IJ} b_J = 1 (least squares; exact at a vertex, |I| = |J|) and certify b with
    `fs.analysis.kkt_certificate(b, X, y, depth)`.
    """
    from ._kkt import kkt_certificate

    A = _signed_rows(X, y)
    D = _as_scale_depth(depth)
    tol = as_positive_float("tol", tol)
    beta = np.asarray(beta, dtype=np.float64)
    margins = A @ beta
    if not np.min(margins) > 0:
        raise ValueError(f"beta does not separate the data (smallest margin {np.min(margins):.3g}); no vertex to read.")
    support = np.abs(beta) > tol * np.max(np.abs(beta))
    active = margins <= (1.0 + tol) * np.min(margins)
    sub, *_ = np.linalg.lstsq(A[np.ix_(active, support)], np.ones(int(active.sum())), rcond=None)
    vertex = np.zeros_like(beta)
    vertex[support] = sub
    vertex /= np.min(A @ vertex)
    residual = kkt_certificate(vertex, np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), D).residual
    return VertexKKTPoint(vertex, support, active, float(residual))


def l1_dual_slack(X: Float[ArrayLike, "n d"], y: Float[ArrayLike, " n"]) -> Float[np.ndarray, " d"]:
    """1 − |X̃ᵀκ|_j for the ℓ1 max-margin LP's dual certificate κ (|X̃ᵀκ|_j = 1 on the support, 0 slack there).

    With b = 2μ sinh(X̃ᵀλ), λ ≈ log(1/μ)·κ, the Q_μ minimiser's off-support coordinates are ≈ μ^{slack_j}: the
    ℓ1 limit is approached like a power of μ whose exponent is the smallest off-support slack (derived here from
    the dual of `q_minimizer`; checked numerically in the scenario).
    """
    from ._kkt import kkt_certificate
    from ._margins import max_margin_solution

    Xr = as_real_matrix("X", X)
    yr = as_labels("y", y, Xr.shape[0])
    sol = max_margin_solution(Xr, yr, 1.0)
    cert = kkt_certificate(sol.rho, Xr, yr, 2, active_tol=1e-7, support_tol=1e-9)
    return 1.0 - np.abs(_signed_rows(Xr, yr).T @ cert.mu)
