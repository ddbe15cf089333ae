"""KKT certificate for the l_{2/L} max-margin problem of linear tensor networks."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.optimize
from jaxtyping import ArrayLike, Bool, Float, Shaped

from ._checks import as_depth, as_labels, as_positive, as_real_matrix, as_sign, as_transform, as_vector


class KKTCertificate(NamedTuple):
    """The pieces of `kkt_residual` (see there for the definitions).

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
    """KKT certificate of a candidate direction for  min ||rho||_{2/L}  s.t.  y_i <S x_i, rho> >= 1.

    Yun, Krishnan & Mobahi (ICLR 2021): the limit direction of an L-layer orthogonally decomposable network
    trained by gradient flow on an exponential-tailed loss is a KKT point of this problem (science.md §2).
    With a_i = y_i S x_i and the objective sum_j |rho_j|^{2/L}:

    1. rescale rho to smallest margin 1: rho <- rho / min_i <a_i, rho>, margins m_i = <a_i, rho>;
    2. active set I = {i : m_i <= 1 + active_tol}; support J = {j : |rho_j| > support_tol * max_k |rho_k|};
    3. g_j = (2/L) |rho_j|^{2/L - 1} rho_j/|rho_j| on J; mu >= 0 on I by non-negative least squares of
       sum_{i in I} mu_i a_ij = g_j (j in J) (real and imaginary parts for complex S);
    4. stationarity = ||sum_i mu_i a_iJ - g_J||_2 / ||g_J||_2;
       dual = (L = 2 only, the convex l_1 case) the largest violation off the support of the subgradient bound
       |sum_i mu_i a_ij| <= 1 (<= 1 one-sided under a sign constraint); for L > 2 the slope of |rho_j|^{2/L}
       is infinite at 0, so off-support coordinates impose nothing and dual = 0;
       complementarity = sum_i mu_i (m_i - 1) / sum_i mu_i m_i (at most active_tol);
       primal = the largest sign-constraint violation, relative to max |rho_j| (0 without `sign`);
    5. residual = max of the four. A rho with no positive margin gets residual = primal = inf.

    `depth` is L >= 2 (L = 2: l_1, convex, so residual ~ 0 certifies the global optimum). For a direction read
    off a trajectory choose the tolerances from the gap between active and inactive margins and between
    support and off-support magnitudes.
    """
    X = as_real_matrix(X)
    n, d = X.shape
    y = as_labels(y, n)
    L = as_depth(depth)
    S = as_transform(transform, d)
    m = S.shape[0]
    is_complex = np.iscomplexobj(S)
    rho = as_vector(rho, m, "rho", complex_ok=is_complex)
    sgn = as_sign(sign, m, is_complex)
    active_tol = as_positive(active_tol, "active_tol")
    support_tol = as_positive(support_tol, "support_tol")
    if not np.any(rho != 0):
        raise ValueError("rho is identically zero; a direction is needed.")

    A = y[:, None] * (X @ S.T)
    margins = np.real(np.conj(A) @ rho)
    empty_mu = np.zeros(n)
    if not np.min(margins) > 0:
        inf = float("inf")
        return KKTCertificate(inf, inf, inf, inf, inf, empty_mu, np.zeros(n, bool), np.abs(rho) > 0, rho, margins)
    rho = rho / np.min(margins)
    margins = np.real(np.conj(A) @ rho)
    mag = np.abs(rho)
    active = margins <= 1.0 + active_tol
    support = mag > support_tol * mag.max()

    q = 2.0 / L
    g = q * mag[support] ** (q - 1.0) * (rho[support] / mag[support])
    B = A[np.ix_(active, support)].T  # columns a_i restricted to the support
    if is_complex:
        B_real, g_real = np.vstack([B.real, B.imag]), np.concatenate([g.real, g.imag])
    else:
        B_real, g_real = B, g
    mu_active, _ = scipy.optimize.nnls(B_real, g_real, maxiter=50 * max(B_real.shape))
    mu = np.zeros(n)
    mu[active] = mu_active
    stationarity = float(np.linalg.norm(B_real @ mu_active - g_real) / np.linalg.norm(g_real))

    dual = 0.0
    if L == 2 and np.any(~support):
        v = (np.conj(A).T @ mu)[~support] if is_complex else (A.T @ mu)[~support]
        if sgn is None:
            viol = np.abs(v) - 1.0
        else:
            s = sgn[~support]
            viol = np.where(s > 0, v - 1.0, np.where(s < 0, -v - 1.0, np.abs(v) - 1.0))
        dual = float(max(0.0, np.max(viol)))
    weight = float(np.sum(mu * margins))
    complementarity = float(np.sum(mu * (margins - 1.0)) / weight) if weight > 0 else 0.0
    primal = 0.0 if sgn is None else float(max(0.0, np.max(-sgn * np.real(rho))) / mag.max())
    residual = max(stationarity, dual, complementarity, primal)
    return KKTCertificate(residual, stationarity, dual, complementarity, primal, mu, active, support, rho, margins)


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
    """Relative KKT residual of `rho` for  min ||rho||_{2/L} s.t. y_i <S x_i, rho> >= 1  (0 at a KKT point).

    The maximum of the relative stationarity, dual-feasibility (L = 2), complementary-slackness and
    sign-feasibility residuals defined in `kkt_certificate`, which returns the pieces and the multipliers.
    """
    return kkt_certificate(
        rho, X, y, depth, transform, sign, active_tol=active_tol, support_tol=support_tol
    ).residual
