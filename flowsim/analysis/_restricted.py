"""Step 2 of `limit_direction`: the KKT system of the max-margin problem restricted to one structure (private).

On a support S with signs σ (phases for complex ρ) and an active set A, the KKT conditions become equations:

    q |ρ_j|^{q−2} ρ_j = Σ_{i∈A} μ_i a_ij  (j ∈ S),     Re⟨a_i, ρ⟩ = 1  (i ∈ A),     ρ_j = 0  (j ∉ S).

q = 1 (real): the linear pair Z ρ_S = 1, Zᵀ μ = σ_S with Z = A_{A,S};  q = 2 (real): ρ_S = Zᵀμ/2, Z Zᵀ μ = 2;
otherwise Levenberg–Marquardt on log-magnitudes (and phases) and μ.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.optimize
from jaxtyping import Float, Shaped

from ._geometry import MarginProblem, phase
from ._structure import Structure


class KKTPoint(NamedTuple):
    """The solution of a restricted KKT system: `rho` (m,), `mu` (n,), whether the solve ran (`ok`), and
    why not (`note`)."""

    rho: Shaped[np.ndarray, " m"]
    mu: Float[np.ndarray, " n"]
    ok: bool
    note: str


def solve_structure(problem: MarginProblem, structure: Structure, guess: np.ndarray) -> KKTPoint:
    """Solve the KKT system on `structure`; `guess` (the last unit iterate) starts the nonlinear solve."""
    S_idx, A_idx = np.flatnonzero(structure.support), np.flatnonzero(structure.active)
    rho, mu = np.zeros(problem.m, dtype=problem.A.dtype), np.zeros(problem.n)
    if S_idx.size == 0 or A_idx.size == 0:
        return KKTPoint(rho, mu, False, "empty support or active set")
    Z = problem.A[np.ix_(A_idx, S_idx)]
    if not problem.is_complex and problem.q in (1.0, 2.0):
        if problem.q == 1.0:
            rho_S = np.linalg.lstsq(Z, np.ones(A_idx.size), rcond=None)[0]
            mu_A = np.linalg.lstsq(Z.T, np.real(structure.signs[S_idx]), rcond=None)[0]
        else:
            mu_A = np.linalg.lstsq(Z @ Z.T, 2.0 * np.ones(A_idx.size), rcond=None)[0]
            rho_S = Z.T @ mu_A / 2.0
        rho[S_idx], mu[A_idx] = rho_S, mu_A
        return KKTPoint(rho, mu, True, "")
    return _newton(problem, structure, S_idx, A_idx, guess)


class _Unknowns(NamedTuple):
    """The nonlinear system's layout: one representative j per conjugate pair (`reps`; ρ_{j'} = conj ρ_j keeps
    ρ the DFT of a real vector, as the dynamics do), which of them are complex (`cplx`) and their partners
    (`pair`), and the fixed signs `sig` of the real ones."""

    reps: np.ndarray
    cplx: np.ndarray
    pair: np.ndarray
    sig: np.ndarray

    def assemble(self, s, th, m, dtype) -> np.ndarray:
        """ρ from log-magnitudes s and phases th."""
        r = np.zeros(m, dtype=dtype)
        e = np.exp(np.clip(s, -700.0, 700.0))
        r[self.reps[~self.cplx]] = self.sig[~self.cplx] * e[~self.cplx]
        if np.any(self.cplx):
            z = e[self.cplx] * np.exp(1j * th)
            r[self.reps[self.cplx]] = z
            r[self.pair] = np.conj(z)
        return r


def _newton(problem: MarginProblem, structure: Structure, S_idx, A_idx, guess) -> KKTPoint:
    """Levenberg–Marquardt on (log|ρ_j|, arg ρ_j for complex pairs, μ_A) from the rescaled guess, μ from NNLS.
    Stationarity is divided by q|ρ_j|^{q−1} to balance the equations."""
    A, q, m = problem.A, problem.q, problem.m
    reps = np.array([j for j in S_idx if problem.partner[j] >= j], dtype=int)
    cplx = np.array([problem.partner[j] != j for j in reps], dtype=bool)
    layout = _Unknowns(reps, cplx, problem.partner[reps[cplx]], np.sign(np.real(structure.signs[reps])))
    nr, nc = reps.size, int(cplx.sum())
    g = guess / max(np.max(np.real(np.conj(A[A_idx]) @ guess)), 1e-300)
    s0 = np.log(np.maximum(np.abs(g[reps]), 1e-8 * np.max(np.abs(g[reps]))))
    th0 = np.angle(np.where(np.abs(g[reps[cplx]]) > 0, g[reps[cplx]], 1.0))
    Z = A[A_idx]
    B = Z[:, reps].T

    def residual(x):
        s, th, mu_A = x[:nr], x[nr : nr + nc], x[nr + nc :]
        v = B @ mu_A
        w = np.exp(np.clip((1.0 - q) * s, -700.0, 700.0)) / q
        out = [1.0 - layout.sig[~cplx] * np.real(v[~cplx]) * w[~cplx]]
        if nc:
            st = np.exp(1j * th) - v[cplx] * w[cplx]
            out += [st.real, st.imag]
        out.append(np.real(np.conj(Z) @ layout.assemble(s, th, m, A.dtype)) - 1.0)
        return np.concatenate(out)

    r0 = layout.assemble(s0, th0, m, A.dtype)[reps]
    Bg = q * np.abs(r0) ** (q - 1.0) * phase(r0)
    mu0 = scipy.optimize.nnls(np.vstack([B.real, B.imag]) if problem.is_complex else np.real(B),
                              np.concatenate([Bg.real, Bg.imag]) if problem.is_complex else np.real(Bg))[0]
    x0 = np.concatenate([s0, th0, mu0])
    rho, mu = np.zeros(m, dtype=A.dtype), np.zeros(problem.n)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            sol = scipy.optimize.least_squares(residual, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                                               max_nfev=100 + 20 * x0.size)
    except (ValueError, np.linalg.LinAlgError) as err:  # reported, not raised
        return KKTPoint(rho, mu, False, f"Newton failed ({err})")
    if not np.all(np.isfinite(sol.x)):
        return KKTPoint(rho, mu, False, "Newton diverged")
    mu[A_idx] = sol.x[nr + nc :]
    return KKTPoint(layout.assemble(sol.x[:nr], sol.x[nr : nr + nc], m, A.dtype), mu, True, "")
