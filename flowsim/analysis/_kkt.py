"""KKT conditions of the ℓ_q max-margin problem: the one residual, and the public certificate.

With a_i = y_i S x_i and the objective Σ_j |ρ_j|^q, a point ρ (smallest margin 1) with multipliers μ is a KKT
point when

    q |ρ_j|^{q−2} ρ_j = Σ_i μ_i a_ij  on the support,     μ ≥ 0,     Re⟨a_i, ρ⟩ ≥ 1,     μ_i (Re⟨a_i, ρ⟩ − 1) = 0,

and off the support |Σ_i μ_i a_ij| ≤ 1 (q = 1; one-sided under a sign constraint), = 0 (q = 2), nothing
(q < 1: the slope of |ρ_j|^q is infinite at 0). See Yun, Krishnan & Mobahi (ICLR 2021) and Lyu & Li (2020)
for why gradient-flow limits are such points. `kkt_parts` is the one implementation of these residuals;
`kkt_certificate` (public) and `limit_direction` both use it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.optimize
from jaxtyping import ArrayLike, Bool, Float, Shaped

from .._checks import as_int, as_labels, as_positive_float, as_real_matrix, as_sign, as_transform, as_vector
from ._geometry import MarginProblem, margin_problem


class KKTParts(NamedTuple):
    """Relative violations of the KKT conditions at (ρ, μ), and where they are worst (private).

    `residual` is the largest of the parts. Indices are −1 when nothing is violated: `worst_sample` the
    sample with the smallest margin below 1, `worst_mu` the most negative multiplier, `worst_coord` the
    off-support coordinate with the largest dual violation, `wrong_sign` a support coordinate whose sign
    disagrees with the expected pattern.
    """

    residual: float
    stationarity: float
    dual: float
    mu_negative: float
    primal: float
    complementarity: float
    signs: float
    frozen: float
    worst_sample: int
    worst_mu: int
    worst_coord: int
    wrong_sign: int


INFEASIBLE = KKTParts(*([math.inf] * 8), -1, -1, -1, -1)


def kkt_parts(problem: MarginProblem, rho, mu, support, signs=None) -> KKTParts:
    """The KKT residuals of (ρ, μ) for `problem` (ρ scaled to smallest margin ≈ 1).

    - stationarity: ‖q|ρ_S|^{q−2}ρ_S − (Σ_i μ_i a_i)_S‖₂ / ‖q|ρ_S|^{q−2}ρ_S‖₂ on the support S (a boolean mask);
    - dual: off the support and the frozen coordinates, the largest violation of |v_j| ≤ 1 (q = 1) or v_j = 0
      (q = 2), one-sided under a sign constraint, relative to the largest gradient on the support; 0 for q < 1;
    - mu_negative: max(0, −min μ) / max|μ|;  primal: max(0, 1 − min_i margin_i);
    - complementarity: max |margin_i − 1| over the samples with μ_i ≠ 0;
    - signs: sign-constraint violation relative to max|ρ|, and (`signs` given, real ρ) a support coordinate
      whose sign disagrees with `signs`;  frozen: max |ρ_j| on the frozen coordinates relative to max|ρ|.
    """
    mag = np.abs(rho)
    if not (np.all(np.isfinite(rho)) and np.all(np.isfinite(mu))) or mag.max() == 0:
        return INFEASIBLE
    q = problem.q
    margins, v = problem.margins(rho), problem.dual(mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        grad = q * mag[support] ** (q - 2.0) * rho[support]
    gscale = max(np.max(np.abs(grad), initial=0.0), 1e-300)
    stationarity = float(np.linalg.norm(grad - v[support]) / max(np.linalg.norm(grad), 1e-300))
    dual, worst_coord = _dual(problem, v, support, gscale)
    i_mu = int(np.argmin(mu))
    mu_negative = float(max(0.0, -mu[i_mu]) / max(np.max(np.abs(mu)), 1e-300))
    i_pr = int(np.argmin(margins))
    primal = float(max(0.0, 1.0 - margins[i_pr]))
    complementarity = float(np.max(np.abs(margins[mu != 0] - 1.0), initial=0.0))
    sign_err, wrong_sign = 0.0, -1
    if signs is not None and not problem.is_complex:  # phases are solved for; only real signs can flip
        agreement = np.where(support, np.real(signs) * np.real(rho) / mag.max(), 1.0)
        if np.min(agreement) <= 0:
            wrong_sign = int(np.argmin(agreement))
            sign_err = float(-np.min(agreement)) if np.min(agreement) < 0 else 1.0
    if problem.sign is not None:
        sign_err = max(sign_err, float(max(0.0, np.max(-problem.sign * np.real(rho)) / mag.max())))
    frozen = float(np.max(mag[problem.frozen], initial=0.0) / mag.max())
    residual = max(stationarity, dual, mu_negative, primal, complementarity, sign_err, frozen)
    return KKTParts(residual, stationarity, dual, mu_negative, primal, complementarity, sign_err, frozen,
                    i_pr if margins[i_pr] < 1.0 else -1, i_mu if mu[i_mu] < 0 else -1, worst_coord, wrong_sign)


def _dual(problem: MarginProblem, v, support, gscale) -> tuple[float, int]:
    """(relative dual violation off the support, the worst coordinate or −1)."""
    off = ~support & ~problem.frozen
    if problem.q < 1.0 or not np.any(off):
        return 0.0, -1
    bound = 1.0 if problem.q == 1.0 else 0.0
    vo = v[off]
    if problem.sign is None:
        viol = np.abs(vo) - bound
    else:
        sc, vr = problem.sign[off], np.real(vo)
        viol = np.where(sc > 0, vr - bound, np.where(sc < 0, -vr - bound, np.abs(vo) - bound))
    j = int(np.argmax(viol))
    return float(max(0.0, viol[j]) / gscale), (int(np.flatnonzero(off)[j]) if viol[j] > 0 else -1)


def nnls_multipliers(problem: MarginProblem, rho, active, support) -> np.ndarray:
    """μ ≥ 0 on the active samples by non-negative least squares of Σ_{i∈I} μ_i a_ij = q|ρ_j|^{q−2}ρ_j (j ∈ S),
    real and imaginary parts for complex ρ; zero off the active set."""
    q = problem.q
    mag = np.abs(rho[support])
    g = q * mag ** (q - 1.0) * (rho[support] / mag)
    B = problem.A[np.ix_(active, support)].T
    if problem.is_complex:
        B, g = np.vstack([B.real, B.imag]), np.concatenate([g.real, g.imag])
    mu_active, _ = scipy.optimize.nnls(np.real(B), np.real(g), maxiter=50 * max(B.shape))
    mu = np.zeros(problem.n)
    mu[active] = mu_active
    return mu


class KKTCertificate(NamedTuple):
    """The pieces of `kkt_residual` (see `kkt_certificate` for the definitions).

    residual = max(stationarity, dual, complementarity, primal); `rho` is the input rescaled to smallest
    margin 1; `mu` (n,) the multipliers found by non-negative least squares (zero off the active set);
    `active` (n,) and `support` (m,) the boolean masks used; `margins` (n,) the margins of `rho`.
    """

    residual: float
    stationarity: float
    dual: float
    complementarity: float
    primal: float
    mu: Float[np.ndarray, " n"]
    active: Bool[np.ndarray, " n"]
    support: Bool[np.ndarray, " m"]
    rho: Shaped[np.ndarray, " m"]
    margins: Float[np.ndarray, " n"]


def kkt_certificate(
    rho: Shaped[ArrayLike, " m"],
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    depth: int,
    transform: Shaped[ArrayLike, "m d"] | None = None,
    sign: str | Float[ArrayLike, " m"] | None = None,
    *,
    active_tol: float = 1e-4,
    support_tol: float = 1e-4,
) -> KKTCertificate:
    """KKT certificate of a candidate direction for  min ‖ρ‖_{2/L}  s.t.  y_i⟨S x_i, ρ⟩ ≥ 1.

    Yun, Krishnan & Mobahi (ICLR 2021): the limit direction of an L-layer orthogonally decomposable network
    trained by gradient flow on an exponential-tailed loss is a KKT point of this problem. With
    a_i = y_i S x_i and the objective Σ_j |ρ_j|^{2/L}:

    1. rescale ρ to smallest margin 1: ρ ← ρ / min_i ⟨a_i, ρ⟩, margins m_i = ⟨a_i, ρ⟩;
    2. active set I = {i : m_i ≤ 1 + active_tol}; support J = {j : |ρ_j| > support_tol · max_k |ρ_k|};
    3. μ ≥ 0 on I by non-negative least squares of Σ_{i∈I} μ_i a_ij = (2/L)|ρ_j|^{2/L−2}ρ_j (j ∈ J);
    4. stationarity = ‖Σ_i μ_i a_iJ − g_J‖₂ / ‖g_J‖₂; dual (L = 2 only, the convex ℓ1 case) the largest
       violation off the support of |Σ_i μ_i a_ij| ≤ 1 (one-sided under a sign constraint); complementarity
       = max |m_i − 1| over the i with μ_i > 0 (at most active_tol); primal = the largest sign-constraint
       violation relative to max |ρ_j| (margins ≥ 1 hold after step 1);
    5. residual = max of the four. A ρ with no positive margin gets residual = primal = inf.

    **Arguments:** `rho` (m,), real or complex; `X` (n, d); `y` (n,) of ±1; `depth` L ≥ 2 (L = 2: ℓ1,
    convex, so residual ≈ 0 certifies the global optimum); `transform` S (m, d) (identity when None);
    `sign` None, "nonnegative", "nonpositive" or an array of +1/−1/0; `active_tol`, `support_tol`:
    for a direction read off a trajectory choose them from the gap between active and inactive margins and
    between support and off-support magnitudes.

    **Returns:** a `KKTCertificate`.
    """
    X = as_real_matrix("X", X)
    n, d = X.shape
    y = as_labels("y", y, n)
    L = as_int("depth", depth, 2)
    S = as_transform("transform", transform, d)
    m = S.shape[0]
    rho = as_vector("rho", rho, m, complex_ok=np.iscomplexobj(S))
    sgn = as_sign("sign", sign, m, np.max(np.abs(np.imag(S)), axis=1) > 0)
    active_tol = as_positive_float("active_tol", active_tol)
    support_tol = as_positive_float("support_tol", support_tol)
    if not np.any(rho != 0):
        raise ValueError("rho is identically zero; a direction is needed")
    problem = margin_problem(X, y, 2.0 / L, S, sgn)
    margins = problem.margins(rho)
    if not np.min(margins) > 0:
        inf = math.inf
        return KKTCertificate(inf, inf, inf, inf, inf, np.zeros(n), np.zeros(n, bool), np.abs(rho) > 0, rho, margins)
    rho = rho / np.min(margins)
    margins = problem.margins(rho)
    active = margins <= 1.0 + active_tol
    support = np.abs(rho) > support_tol * np.abs(rho).max()
    mu = nnls_multipliers(problem, rho, active, support)
    parts = kkt_parts(problem, rho, mu, support)
    primal = max(parts.primal, parts.signs)
    residual = max(parts.stationarity, parts.dual, parts.complementarity, primal, parts.mu_negative)
    return KKTCertificate(residual, parts.stationarity, parts.dual, parts.complementarity, primal, mu, active,
                          support, rho, margins)


def kkt_residual(
    rho: Shaped[ArrayLike, " m"],
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    depth: int,
    transform: Shaped[ArrayLike, "m d"] | None = None,
    sign: str | Float[ArrayLike, " m"] | None = None,
    *,
    active_tol: float = 1e-4,
    support_tol: float = 1e-4,
) -> float:
    """Relative KKT residual of `rho` for  min ‖ρ‖_{2/L} s.t. y_i⟨S x_i, ρ⟩ ≥ 1  (0 at a KKT point).

    The maximum of the stationarity, dual-feasibility (L = 2), complementary-slackness and sign-feasibility
    residuals defined in `kkt_certificate`, which returns the pieces and the multipliers.
    """
    return kkt_certificate(
        rho, X, y, depth, transform, sign, active_tol=active_tol, support_tol=support_tol
    ).residual
