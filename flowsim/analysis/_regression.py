"""Regression references in closed form: minimum-norm interpolants and the limit of a balanced rank-one fully
connected network (squared loss, underdetermined data)."""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
from jaxtyping import ArrayLike, Float

from .._checks import as_int, as_norm_order, as_positive_float, as_real_matrix, as_transform, as_vector
from ._margins import quiet_stdout


def min_norm_interpolant(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    p: float = 2.0,
    transform: Float[ArrayLike, "m d"] | None = None,
) -> Float[np.ndarray, " m"]:
    """argmin ‖ρ‖_p  s.t.  X Sᵀ ρ = y, for p = 2 or p = 1 (real S, identity when None).

    The limits of diagonal networks trained on the squared loss from large (p = 2) and small (p = 1)
    initialisation scales (Woodworth et al., COLT 2020; Yun, Krishnan & Mobahi, ICLR 2021). p = 2: the
    pseudo-inverse solution (XSᵀ)⁺y. p = 1: the linear program min Σ_j (u_j + v_j) s.t. XSᵀ(u − v) = y, u, v ≥ 0
    (HiGHS); coordinates whose columns of XSᵀ are identical (e.g. DFT frequencies j and −j on even data) then
    share their total equally, which keeps the interpolation and the ℓ1 norm (the symmetric minimiser).

    **Arguments:** `X` (n, d), `y` (n,), `p` ∈ {1, 2}, `transform` S (m, d) real.

    **Returns:** ρ, shape (m,). Raises ValueError when no ρ interpolates.
    """
    X = as_real_matrix("X", X)
    n, d = X.shape
    y = as_vector("y", y, n)
    p = as_norm_order("p", p, (1.0, 2.0))
    S = as_transform("transform", transform, d)
    if np.iscomplexobj(S):
        raise ValueError("min_norm_interpolant needs a real transform S")
    A = X @ S.T
    if p == 2.0:
        rho = np.linalg.pinv(A) @ y
    else:
        m = A.shape[1]
        with quiet_stdout():
            lp = scipy.optimize.linprog(np.ones(2 * m), A_eq=np.hstack([A, -A]), b_eq=y, bounds=(0, None),
                                        method="highs")
        if lp.status != 0:
            raise ValueError(f"min_norm_interpolant: no ρ with X Sᵀ ρ = y (the LP says: {lp.message})")
        rho = _share_identical_columns(A, lp.x[:m] - lp.x[m:])
    residual = np.linalg.norm(A @ rho - y) / max(np.linalg.norm(y), 1e-300)
    if not residual <= 1e-9:
        raise ValueError(f"min_norm_interpolant: no ρ with X Sᵀ ρ = y (relative residual {residual:.1e})")
    return rho


def _share_identical_columns(A: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """ρ with the total over every group of identical columns of A (to 1e-12 relative) shared equally."""
    scale = np.max(np.abs(A))
    out = rho.copy()
    done = np.zeros(A.shape[1], dtype=bool)
    for j in range(A.shape[1]):
        if done[j]:
            continue
        group = np.flatnonzero(np.max(np.abs(A - A[:, [j]]), axis=0) <= 1e-12 * scale)
        out[group] = np.mean(rho[group])
        done[group] = True
    return out


def rank_one_limit(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    direction: Float[ArrayLike, " d"],
    scale: float,
    depth: int,
) -> Float[np.ndarray, " d"]:
    """The gradient-flow limit β of a balanced rank-one fully connected linear network on the squared loss.

    The network of `fs.networks.FullyConnected.init(d, depth, scale=α, direction=u, shape="balanced")`:
    W_1 = αûe_1ᵀ, W_l = αe_1e_1ᵀ, w_L = αe_1 (û = u/‖u‖). Only the first unit is ever used, so W_1 = u e_1ᵀ and
    the later layers are s_l e_1e_1ᵀ; balancedness (W_lᵀW_l = W_{l+1}W_{l+1}ᵀ, conserved; Arora et al. 2018)
    gives s_l = ‖u‖ and β = ‖u‖^{L−1}u, and u' = −‖u‖^{L−1}Xᵀr keeps (I − P)u = α(I − P)û (P the projector on
    the row space of X). At an interpolating limit Pβ = X⁺y and (I − P)β = κw, w = (I − P)û, with
    κ = α‖u‖^{L−1} = α‖β‖^{(L−1)/L} and ‖β‖² = ‖X⁺y‖² + κ²‖w‖²: a scalar equation with a unique positive root
    (κ⁻¹·RHS decreases from ∞ to 0), found by Brent's method to machine precision. Any loss normalisation or
    time scaling gives the same limit.

    **Arguments:** `X` (n, d) of full row rank n < d, `y` (n,), `direction` u (d,) non-zero, `scale`
    α > 0, `depth` L ≥ 1.

    **Returns:** β = X⁺y + κ(I − P)û, shape (d,).
    """
    X = as_real_matrix("X", X)
    n, d = X.shape
    y = as_vector("y", y, n)
    u = as_vector("direction", direction, d)
    alpha = as_positive_float("scale", scale)
    depth = as_int("depth", depth, 1)
    if not np.any(u != 0):
        raise ValueError("direction must be non-zero")
    u_hat = u / np.linalg.norm(u)
    pinv = np.linalg.pinv(X)
    beta_l2 = pinv @ y
    w = u_hat - pinv @ (X @ u_hat)
    b2, w2 = beta_l2 @ beta_l2, w @ w

    def gap(k):
        return k - alpha * (b2 + k * k * w2) ** ((depth - 1) / (2 * depth))

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2.0
    kappa = scipy.optimize.brentq(gap, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps)
    beta = beta_l2 + kappa * w
    residual = np.linalg.norm(X @ beta - y) / max(np.linalg.norm(y), 1e-300)
    if not (math.isfinite(kappa) and residual <= 1e-9):
        raise ValueError(f"rank_one_limit: X must have full row rank (the limit misses y by {residual:.1e} relative)")
    return beta
