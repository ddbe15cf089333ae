"""Step 5 of `limit_direction`: the certificate that a KKT point is the trajectory's limit (private).

A KKT point solved on the structure the trajectory shows is the limit when the trajectory approaches it and the
structure needed no correction, or when it is provably the unique minimiser of the (convex) problem: the flow
converges in direction to a KKT point (Yun, Krishnan & Mobahi, ICLR 2021; Ji & Telgarsky 2020), so a unique
one is it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float

from ._geometry import MarginProblem, cosine_distance
from ._kkt import kkt_certificate
from ._search import Candidate
from ._structure import Tail, slopes


class Approach(NamedTuple):
    """1 − cos of every save to a direction (`distance`), its log-log slope over the tail, and whether the
    tail approaches the direction."""

    distance: Float[np.ndarray, " n_save"]
    slope: float
    approaching: bool


def approach(coords: np.ndarray, direction: np.ndarray, tail: Tail) -> Approach:
    """How the saves `coords` (n_save, m) move relative to `direction` over the tail."""
    distance = cosine_distance(coords, direction) if np.any(direction != 0) else np.full(coords.shape[0], np.nan)
    d_tail = distance[tail.index]
    slope = float(slopes(tail.tau, np.maximum(np.nan_to_num(d_tail, nan=1.0), 1e-300)[:, None])[0])
    approaching = bool(np.all(np.isfinite(d_tail))) and (d_tail[-1] <= 1e-13 or (d_tail[-1] < d_tail[0] and slope < 0))
    return Approach(distance, slope, approaching)


def cross_check(problem: MarginProblem, candidate: Candidate, kkt_tol: float) -> str:
    """An empty string when `kkt_certificate` (its own multipliers, by NNLS) agrees that the point is a KKT point
    of the ℓ_{2/L} problem (orthogonally decomposable networks, q = 2/L, L ≥ 2); else why not."""
    q, rho = problem.q, candidate.point.rho
    depth = 2.0 / q
    if q >= 2.0 or abs(depth - round(depth)) > 1e-12 or (problem.is_complex and problem.sign is not None):
        return ""
    margins = problem.margins(rho)
    inactive = margins[~candidate.structure.active]
    active_tol = min(0.5 * (np.min(inactive) - 1.0), 1e-2) if inactive.size else 1e-6
    if not active_tol > 0:
        return "an inactive sample has margin exactly 1: the active set is ambiguous"
    support = candidate.structure.support
    other = kkt_certificate(
        rho, problem.X, problem.y, round(depth), problem.transform,
        None if problem.is_complex else problem.sign, active_tol=active_tol,
        support_tol=0.5 * np.min(np.abs(rho[support])) / np.max(np.abs(rho)),
    )
    if not other.residual <= max(kkt_tol, 1e-8):
        return f"fs.analysis.kkt_certificate disagrees (residual {other.residual:.2e})"
    return ""


def unique(problem: MarginProblem, candidate: Candidate) -> tuple[bool, str]:
    """Whether a KKT point of the convex problem (q = 1 or 2) is its unique minimiser, and why.

    q = 2: strictly convex, always. q = 1 (real): the LP optimum is unique when the vertex is non-degenerate and
    strictly complementary: Z_{A,S} square and well conditioned, μ_A > 0, and the dual bound strict off the
    support (|v_j| < 1, or v_j < 1 one-sided) — then no direction keeps optimality. q < 1: not decided (False).
    """
    if problem.q == 2.0:
        return True, "strictly convex"
    if problem.q != 1.0:
        return False, "q < 1 is non-convex"
    if problem.is_complex:
        return unique_complex_l1(problem, candidate)
    mu = candidate.point.mu
    S_idx, A_idx = np.flatnonzero(candidate.structure.support), np.flatnonzero(candidate.structure.active)
    Z = problem.A[np.ix_(A_idx, S_idx)]
    if Z.shape[0] != Z.shape[1]:
        return False, f"degenerate vertex ({Z.shape[0]} active samples, {Z.shape[1]} support coordinates)"
    if np.linalg.cond(Z) > 1e10:
        return False, "ill-conditioned vertex"
    if np.min(mu[A_idx]) <= 1e-9 * np.max(mu[A_idx]):
        return False, "a zero multiplier (not strictly complementary)"
    off = ~candidate.structure.support & ~problem.frozen
    v = problem.dual(mu)
    if np.any(off):
        if problem.sign is None:
            slack = 1.0 - np.abs(v[off])
        else:
            sc = problem.sign[off]
            slack = np.where(sc > 0, 1.0 - v[off], np.where(sc < 0, 1.0 + v[off], 1.0 - np.abs(v[off])))
        if np.min(slack) <= 1e-9:
            return False, "the dual bound is tight off the support (not strictly complementary)"
    return True, "non-degenerate LP vertex"


def unique_complex_l1(problem: MarginProblem, candidate: Candidate) -> tuple[bool, str]:
    """Uniqueness for complex q = 1 (a group ℓ1 over conjugate pairs).

    With v = Σ_i μ_i a_i, every minimiser ρ' has ρ'_j/|ρ'_j| = v_j on its support, so when |v_j| < 1 off the
    support ρ' = Σ_{pairs p ⊆ S} t_p v_p with t ≥ 0 (ρ' Hermitian-symmetric, as a real network's is) and, by
    complementary slackness, Re⟨a_i, ρ'⟩ = 1 for every i with μ_i > 0. That linear system in t,
    M_{ip} = Σ_{j∈p} Re(conj(a_ij) v_j), has only the solution t of ρ when M has full column rank: then ρ is
    the unique minimiser.
    """
    if problem.sign is not None and np.any(problem.sign != 0):
        return False, "uniqueness is not checked for sign-constrained complex coordinates"
    A, partner, mu = problem.A, problem.partner, candidate.point.mu
    positive = mu > 1e-9 * max(np.max(mu), 1e-300)
    if not np.any(positive):
        return False, "no positive multiplier"
    v = problem.dual(mu)
    off = ~candidate.structure.support & ~problem.frozen
    if np.any(off) and np.max(np.abs(v[off])) >= 1.0 - 1e-9:
        return False, "the dual bound is tight off the support (|v_j| = 1 at a zero coordinate)"
    reps = [j for j in np.flatnonzero(candidate.structure.support) if partner[j] >= j]
    M = np.stack([np.real(np.conj(A[positive, j]) * v[j]) + (np.real(np.conj(A[positive, partner[j]]) * v[partner[j]])
                                                             if partner[j] != j else 0.0) for j in reps], axis=1)
    if M.shape[0] < M.shape[1]:
        return False, f"more support pairs ({M.shape[1]}) than support vectors with μ_i > 0 ({M.shape[0]})"
    sv = np.linalg.svd(M, compute_uv=False)
    if sv[-1] <= 1e-10 * sv[0]:
        return False, "the margin map on the support is not injective (a face of minimisers)"
    return True, ("strictly complementary complex ℓ1 point with an injective margin map on its support "
                  f"({M.shape[1]} conjugate pairs, {M.shape[0]} support vectors)")
