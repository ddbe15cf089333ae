"""The max-margin problem of a linear model in transformed coordinates, as one frozen value (private).

A linear tensor network predicts f(x) = Re⟨S x, ρ⟩ (Yun, Krishnan & Mobahi, ICLR 2021). Its limit on
separable data is a KKT point of

    min_ρ Σ_j |ρ_j|^q   s.t.   Re⟨a_i, ρ⟩ ≥ 1,   a_i = y_i S x_i,

with, possibly, sign constraints on some ρ_j and coordinates the dynamics keep at exactly zero. `MarginProblem`
holds all of it; every step of `limit_direction` and `kkt_certificate` reads it and none changes it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Float, Int, Shaped


class MarginProblem(NamedTuple):
    """min Σ_j |ρ_j|^q s.t. Re⟨a_i, ρ⟩ ≥ 1, sign constraints, frozen coordinates.

    **Fields:**

    - `X` (n, d), `y` (n,): the data.
    - `transform`: S, shape (m, d), real or complex.
    - `A`: rows a_i = y_i S x_i, shape (n, m); the margins of ρ are Re(conj(A) ρ).
    - `q`: the exponent (2/L for an L-layer orthogonally decomposable network, 2 for the SVM).
    - `sign`: +1 (ρ_j ≥ 0), −1 (ρ_j ≤ 0), 0 (free), shape (m,), or None.
    - `frozen`: boolean mask (m,) of coordinates held at exactly zero.
    - `partner`: partner[j] = j' when column a_·j' = conj(a_·j) (the Hermitian pairs of a real signal's
      DFT), else j; conjugate coordinates enter and leave the support together.
    - `is_complex`: whether S (hence ρ) is complex.
    """

    X: Float[np.ndarray, "n d"]
    y: Float[np.ndarray, " n"]
    transform: Shaped[np.ndarray, "m d"]
    A: Shaped[np.ndarray, "n m"]
    q: float
    sign: Float[np.ndarray, " m"] | None
    frozen: Bool[np.ndarray, " m"]
    partner: Int[np.ndarray, " m"]
    is_complex: bool

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[1]

    def margins(self, rho: np.ndarray) -> np.ndarray:
        """Re⟨a_i, ρ⟩ for every sample (ρ of shape (m,) or (T, m))."""
        return np.real(rho @ np.conj(self.A).T)

    def dual(self, mu: np.ndarray) -> np.ndarray:
        """v = Σ_i μ_i a_i, shape (m,)."""
        return self.A.T @ mu

    def freeze(self, mask: np.ndarray) -> MarginProblem:
        """The same problem with the coordinates in `mask` also held at zero."""
        return self._replace(frozen=self.frozen | mask)

    def pairs(self, mask: np.ndarray) -> np.ndarray:
        """`mask` closed under conjugate pairs."""
        return mask | mask[self.partner]


def margin_problem(X, y, q: float, transform, sign=None, frozen=None) -> MarginProblem:
    """Build the `MarginProblem` from checked arrays (X (n, d), y ±1, S (m, d))."""
    S = np.asarray(transform)
    is_complex = bool(np.iscomplexobj(S) and np.max(np.abs(np.imag(S))) > 0)
    if not is_complex:
        S = np.real(S)
    A = y[:, None] * (X @ S.T)
    m = A.shape[1]
    frozen = np.zeros(m, dtype=bool) if frozen is None else np.asarray(frozen, dtype=bool)
    return MarginProblem(X=X, y=y, transform=S, A=A, q=float(q), sign=sign, frozen=frozen,
                         partner=partners(A), is_complex=is_complex)


def partners(A: np.ndarray) -> np.ndarray:
    """partner[j] = j' with column a_·j' = conj(a_·j) (Hermitian pairs of a real signal's DFT), else j."""
    m = A.shape[1]
    partner = np.arange(m)
    if not np.iscomplexobj(A):
        return partner
    scale = np.max(np.abs(A))
    for j in range(m):
        diff = np.max(np.abs(A - np.conj(A[:, [j]])), axis=0)
        diff[j] = math.inf if np.max(np.abs(np.imag(A[:, j]))) > 1e-12 * scale else 0.0
        k = int(np.argmin(diff))
        if diff[k] <= 1e-10 * scale:
            partner[j] = k
    return partner


def phase(z: np.ndarray) -> np.ndarray:
    """z/|z| (the sign, for real z), 0 where z = 0."""
    a = np.abs(z)
    return np.where(a > 0, z / np.where(a > 0, a, 1.0), 0.0)


def cosine_distance(U: np.ndarray, u: np.ndarray) -> np.ndarray:
    """1 − cos(U_t, u) (real inner product on C^m) per row of U; nan where a row is zero."""
    norms = np.linalg.norm(U, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.real(np.conj(U) @ u) / (norms * np.linalg.norm(u))
    return np.where(norms > 0, 1.0 - cos, np.nan)
