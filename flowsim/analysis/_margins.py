"""Max-margin references (convex programs) and normalised margins.

Conventions used throughout `fs.analysis`
-----------------------------------------
A linear model in a transformed input space (an orthogonally decomposable network, Yun, Krishnan & Mobahi,
ICLR 2021) predicts f(x) = <S x, rho>, where S (shape (m, d), real or complex, identity by default) is the
input transform and rho in R^m or C^m. For complex S the inner product is the real one on C^m = R^(2m):
<u, rho> = Re(sum_j conj(u_j) rho_j). The end-to-end predictor in input space is beta = Re(S^H rho)
(= S^T rho for real S), so f(x) = <x, beta>.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from typing import NamedTuple

import cvxpy as cp
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from jaxtyping import Array, ArrayLike, Bool, Float, Shaped

from .._checks import as_labels, as_norm_order, as_real_matrix, as_sign, as_transform, is_traced
from ._geometry import margin_problem
from ._kkt import kkt_parts, nnls_multipliers

_SUPPORTED_P = (1.0, 2.0, math.inf)
_HIGHS_OPTS = dict(primal_feasibility_tolerance=1e-10, dual_feasibility_tolerance=1e-10)
_CLARABEL_TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=400)
_CLARABEL_LOOSE = dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, tol_ktratio=1e-8, max_iter=400)


class MaxMarginSolution(NamedTuple):
    """The solution of  min ||rho||_p  s.t.  y_i <S x_i, rho> >= 1  (optionally sign-constrained).

    Fields:
        direction: rho / ||rho||_p, unit norm in the l_p norm of the optimisation variable, shape (m,)
            (complex when the transform is complex). This is what `max_margin` returns.
        beta: Re(S^H direction), the same predictor in input space, shape (d,) (not renormalised; for
            S = I it equals `direction`).
        rho: the minimiser itself (smallest margin exactly 1), shape (m,).
        margin: the max normalised margin gamma = max_{||rho||_p = 1} min_i y_i <S x_i, rho> = 1 / ||rho||_p.
        norm: ||rho||_p = 1 / margin.
        active: boolean mask (n,) of the support vectors, margins within 1e-7 (relative) of 1.
        p: the norm order.
        status: the solver status (and whether the active-set polish was accepted).
    """

    direction: Shaped[np.ndarray, " m"]
    beta: Float[np.ndarray, " d"]
    rho: Shaped[np.ndarray, " m"]
    margin: float
    norm: float
    active: Bool[np.ndarray, " n"]
    p: float
    status: str


def _pnorm_np(v: np.ndarray, p: float) -> float:
    a = np.abs(v)
    if math.isinf(p):
        return float(a.max())
    return float(np.sum(a**p) ** (1.0 / p))


def _signed_rows(X: np.ndarray, y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Rows a_i = y_i S x_i, so that the margins are Re(conj(A) @ rho)."""
    return y[:, None] * (X @ S.T)


@contextlib.contextmanager
def quiet_stdout():
    """Silence file descriptor 1 while a solver runs: HiGHS prints its banner from C++ to the process's
    stdout whatever the options say (`verbose=False`, `output_flag=False`), which would corrupt the output
    of programs that print results."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout replaced by an object without a descriptor
        fd = 1
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _solve(problem: cp.Problem, p: float, complex_var: bool) -> tuple[str, str]:
    """(status, solver) of the first attempt that is optimal or infeasible, else of the last attempt.

    A status of `optimal_inaccurate` is returned as such: the caller polishes the point and accepts it only if
    the polished point passes the KKT check to 1e-9 (see `max_margin_solution`).
    """
    if p != 2.0 and not complex_var:
        attempts = [(cp.HIGHS, _HIGHS_OPTS), (cp.CLARABEL, _CLARABEL_TIGHT)]
    else:
        attempts = [(cp.CLARABEL, _CLARABEL_TIGHT), (cp.CLARABEL, _CLARABEL_LOOSE)]
    status, solver = "not run", ""
    for solver, opts in attempts:
        try:
            with warnings.catch_warnings(), quiet_stdout():  # "may be inaccurate": handled through the status
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, **opts)
        except cp.error.SolverError as err:  # pragma: no cover - depends on the installed solver build
            status = f"error ({err})"
            continue
        status = problem.status
        if status in (cp.OPTIMAL, cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            return status, solver
    return status, solver


def _polish(A: np.ndarray, rho: np.ndarray, p: float, sign: np.ndarray | None, active_tol: float = 1e-7):
    """Re-solve the KKT equations on the identified active set and support (real p in {1, 2} only).

    p = 1: the LP optimum is a vertex: A[I, J] rho_J = 1 on the active rows I and support J.
    p = 2: rho_J = A[I, J]^T mu with A[I, J] rho_J = 1, i.e. the minimum-norm solution of A[I, J] rho_J = 1.
    Both are the minimum-norm least-squares solution of A[I, J] rho_J = 1; the candidate is returned only if
    it is feasible, keeps the sign pattern and is no worse than the solver's point (checked by the caller).
    """
    margins = A @ rho
    scale = np.max(np.abs(rho))
    active = margins <= 1.0 + active_tol
    if p == 1.0:
        support = np.abs(rho) > 1e-9 * scale
    else:  # p = 2: free coordinates are those not pinned at zero by a sign constraint
        support = np.ones(rho.shape, dtype=bool) if sign is None else (np.abs(rho) > 1e-9 * scale) | (sign == 0)
    if not active.any() or not support.any():
        return None
    sub = A[np.ix_(active, support)]
    sol, *_ = np.linalg.lstsq(sub, np.ones(sub.shape[0]), rcond=1e-13)
    cand = np.zeros_like(rho)
    cand[support] = sol
    return cand


def _polish_complex_l1(A: np.ndarray, rho: np.ndarray) -> np.ndarray | None:
    """Newton (Levenberg-Marquardt) on the KKT equations of min sum_j |rho_j| over complex rho, on the
    identified support J and active set I:  rho_j/|rho_j| = sum_{i in I} mu_i a_ij (j in J),
    Re(conj(a_iJ) . rho_J) = 1 (i in I). Accepted only if mu >= 0 and the off-support subgradient bound
    |sum_i mu_i a_ij| <= 1 holds (the caller also checks feasibility and the objective)."""
    margins = np.real(np.conj(A) @ rho)
    active = margins <= 1.0 + 1e-6
    support = np.abs(rho) > 1e-6 * np.max(np.abs(rho))
    AI = A[np.ix_(active, support)]
    k = int(support.sum())

    def residual(x):
        r = x[:k] + 1j * x[k : 2 * k]
        mu = x[2 * k :]
        stat = r / np.abs(r) - AI.T @ mu
        return np.concatenate([stat.real, stat.imag, np.real(np.conj(AI) @ r) - 1.0])

    rs = rho[support]
    mu0 = np.linalg.lstsq(AI.T, rs / np.abs(rs), rcond=None)[0].real
    x0 = np.concatenate([rs.real, rs.imag, mu0])
    sol = scipy.optimize.least_squares(residual, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    if not np.all(np.isfinite(sol.x)) or np.max(np.abs(residual(sol.x))) > 1e-12:
        return None
    mu = np.zeros(A.shape[0])
    mu[active] = sol.x[2 * k :]
    if np.min(mu) < -1e-12 or (np.any(~support) and np.max(np.abs(A[:, ~support].T @ mu)) > 1.0 + 1e-9):
        return None
    cand = np.zeros_like(rho)
    cand[support] = sol.x[:k] + 1j * sol.x[k : 2 * k]
    return cand


def max_margin_solution(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    p: float = 1.0,
    transform: Shaped[ArrayLike, "m d"] | None = None,
    sign: str | Float[ArrayLike, " m"] | None = None,
) -> MaxMarginSolution:
    """Solve the max-margin problem  min ||rho||_p  s.t.  y_i <S x_i, rho> >= 1  for all i.

    p = 1 and p = inf (real S) are LPs, solved with HiGHS; p = 2 is a QP and a complex S gives an SOCP, solved
    with Clarabel (tolerances 1e-10 to 1e-12). For p in {1, 2} the solution is then polished by solving the KKT
    equations on the identified active set and support (accepted only if feasible and no worse), which brings
    it to ~1e-13.

    Complex S (e.g. the unitary DFT F = np.fft.fft(np.eye(d)) / sqrt(d): full-length convolutional networks)
    must have orthonormal columns up to a scale (S^H S = c²I; the direction does not depend on c). The variable is then rho = S beta with beta real, the
    coordinates a real network reaches (conjugate-symmetric for the DFT): min sum_j |(F beta)_j| s.t.
    y_i <x_i, beta> >= 1. For the DFT this has the same optimal value as the free problem over all complex rho
    (symmetrising rho keeps the margins and cannot increase sum_j |rho_j|), but a unique, symmetric solution.

    `sign` restricts the sign of each coordinate: None (free), "nonnegative", "nonpositive", or an array of +1
    (rho_j >= 0), -1 (rho_j <= 0), 0 (free). A balanced same-sign initialisation keeps rho_j >= 0 for all
    time, so its limit is the sign-constrained solution, not the unconstrained one (Yun, Krishnan & Mobahi 2021).

    Interpretation: with S = I, p = 2 is the SVM direction (fully connected linear nets, Gunasekar et al. 2018);
    p = 1 the limit of depth-2 diagonal nets with exponential-tailed losses (Yun, Krishnan & Mobahi, ICLR 2021;
    Moroshko et al. 2020 in the small-initialisation regime). The l_1 solution may be non-unique; compare
    `margin` values first, directions only where the solution is unique.

    A solve the solver reports as `optimal_inaccurate` is accepted only after the polish, and only when the
    polished point is a KKT point to 1e-9; HiGHS's banner is kept off stdout.

    **Arguments:** `X` (n, d); `y` (n,) of ±1; `p` ∈ {1, 2, inf}; `transform` S (m, d) or None;
    `sign` None, "nonnegative", "nonpositive" or an array of +1/−1/0.

    **Returns:** a `MaxMarginSolution`. Raises ValueError for bad inputs and for data that are not separable
    (under the sign constraint), and RuntimeError if the solver fails.
    """
    X = as_real_matrix("X", X)
    n, d = X.shape
    y = as_labels("y", y, n)
    p = as_norm_order("p", p, _SUPPORTED_P)
    S = as_transform("transform", transform, d)
    m = S.shape[0]
    is_complex = np.iscomplexobj(S)
    sgn = as_sign("sign", sign, m, np.full(m, is_complex))
    # A scaled unitary S = c·U (e.g. Convolutional.transform = d^{(L-1)/2}·DFT) has the same max-margin
    # direction as U; solve with U and map rho, the norm and the margin back at the end.
    scale = 1.0
    if is_complex:
        gram = np.conj(S).T @ S
        scale = float(np.sqrt(np.real(np.trace(gram)) / d))
        if not (scale > 0 and np.allclose(gram / scale**2, np.eye(d), rtol=0.0, atol=1e-10)):
            raise ValueError(
                "a complex transform must be a multiple of a matrix with orthonormal columns (S^H S = c²I, "
                "e.g. the unitary DFT np.fft.fft(np.eye(d)) / sqrt(d)); the given one is not."
            )
        transform_given, S = S, S / scale
    A = _signed_rows(X, y, S)

    if is_complex:
        # Real networks reach rho = S beta with real beta (conjugate-symmetric for the DFT): optimise over beta.
        beta_var = cp.Variable(d)
        rho_var = S @ beta_var
        constraints = [(y[:, None] * X) @ beta_var >= 1.0]  # = Re(conj(A) rho) since S^H S = I
    else:
        rho_var = cp.Variable(m)
        constraints = [A @ rho_var >= 1.0]
    if sgn is not None:
        if np.any(sgn > 0):
            constraints.append(rho_var[np.flatnonzero(sgn > 0)] >= 0.0)
        if np.any(sgn < 0):
            constraints.append(rho_var[np.flatnonzero(sgn < 0)] <= 0.0)
    if p == 1.0:
        objective = cp.norm1(rho_var)
    elif p == 2.0:
        objective = cp.sum_squares(rho_var)
    else:
        objective = cp.norm_inf(rho_var)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    status, solver = _solve(problem, p, is_complex)
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        what = "linearly separable" if sgn is None else f"separable under the sign constraint sign={sign!r}"
        raise ValueError(f"max_margin: the data (X, y) are not {what}; no rho has y_i <S x_i, rho> >= 1 for all i.")
    if rho_var.value is None or status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(f"max_margin: the solver failed (status {status!r}); no reference computed.")
    inaccurate = status == cp.OPTIMAL_INACCURATE
    status = f"{solver}: {status}"
    rho = np.asarray(rho_var.value)
    rho = rho.astype(np.complex128) if is_complex else rho.astype(np.float64)

    if inaccurate:
        rho, status = _polish_inaccurate(X, y, A, S, rho, p, sgn, status)
    else:
        cand = _polished_candidate(X, y, A, S, rho, p, sgn) if p in (1.0, 2.0) else None
        if cand is not None:
            rho, status = cand, status + " (polished)"

    # Rescale so that the smallest margin is exactly 1 (removes the solver's feasibility slack).
    margins = np.real(np.conj(A) @ rho)
    if not np.min(margins) > 0:
        raise RuntimeError(f"max_margin: the solver returned an infeasible point (min margin {np.min(margins)!r}).")
    rho = rho / np.min(margins)
    norm = _pnorm_np(rho, p)
    direction = rho / norm
    beta = np.real(np.conj(S).T @ direction)
    active = np.real(np.conj(A) @ rho) <= 1.0 + 1e-7
    if scale != 1.0:  # back to the given S = scale·U: <Sx, rho/scale> = <Ux, rho>
        rho, norm = rho / scale, norm / scale
        beta = np.real(np.conj(transform_given).T @ direction)
    return MaxMarginSolution(direction, beta, rho, 1.0 / norm, norm, active, p, status)


def _polished_candidate(X, y, A, S, rho, p: float, sgn, active_tol: float = 1e-7):
    """The KKT polish of the solver's point (p = 1 or 2), or None when it fails or is not feasible, keeps no sign
    constraint, or is worse (in ‖·‖_p) than the solver's point."""
    if not np.iscomplexobj(S):
        cand = _polish(A, rho, p, sgn, active_tol)
    elif p == 2.0:  # rho = S beta, ||rho||_2 = ||beta||_2: the real QP in beta
        cand = _polish(y[:, None] * X, np.real(np.conj(S).T @ rho), p, None, active_tol)
        cand = None if cand is None else S @ cand
    else:  # Newton on the free complex problem, then back to rho = S Re(S^H rho) (for the DFT: symmetrisation,
        # which keeps feasibility and cannot increase sum |rho_j|; checked below)
        cand = _polish_complex_l1(A, rho)
        cand = None if cand is None else S @ np.real(np.conj(S).T @ cand)
    if cand is None:
        return None
    feasible = np.min(np.real(np.conj(A) @ cand)) >= 1.0 - 1e-12
    signs_ok = sgn is None or np.all(cand * sgn >= -1e-14 * np.max(np.abs(cand)))
    better = _pnorm_np(cand, p) <= _pnorm_np(rho, p) * (1.0 + 1e-8)
    return cand if feasible and signs_ok and better else None


def _polish_inaccurate(X, y, A, S, rho, p: float, sgn, status: str):
    """(ρ, status) for a point the solver called `optimal_inaccurate`: polished on the active sets read at
    tolerances 1e-7, 1e-5 and 1e-3 (of the point rescaled to smallest margin 1), accepting the first polished
    point that is a KKT point to 1e-9 (multipliers by NNLS, `kkt_parts`); RuntimeError when none is."""
    margins = np.real(np.conj(A) @ rho)
    residual = math.inf
    if p in (1.0, 2.0) and np.min(margins) > 0:
        rho = rho / np.min(margins)
        problem = margin_problem(X, y, p, S, sgn)
        for active_tol in (1e-7, 1e-5, 1e-3):
            cand = _polished_candidate(X, y, A, S, rho, p, sgn, active_tol)
            if cand is None:
                continue
            cand = cand / np.min(problem.margins(cand))
            scale = np.max(np.abs(cand))
            support = np.abs(cand) > 1e-9 * scale if p == 1.0 else (
                np.ones(cand.shape, bool) if sgn is None else (np.abs(cand) > 1e-9 * scale) | (sgn == 0))
            active = problem.margins(cand) <= 1.0 + 1e-9
            residual = kkt_parts(problem, cand, nnls_multipliers(problem, cand, active, support), support).residual
            if residual <= 1e-9:
                return cand, f"{status} (polished; KKT residual {residual:.1e})"
    raise RuntimeError(
        f"max_margin: the solver stopped at {status!r} and polishing did not reach a KKT point to 1e-9 (best "
        f"residual {residual:.1e}); no reference computed (the promised accuracy is 1e-10)."
    )


def max_margin(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    p: float = 1.0,
    transform: Shaped[ArrayLike, "m d"] | None = None,
    sign: str | Float[ArrayLike, " m"] | None = None,
) -> Shaped[np.ndarray, " m"]:
    """Reference max-margin direction: rho* / ||rho*||_p for  rho* = argmin ||rho||_p s.t. y_i <S x_i, rho> >= 1.

    Unit norm in the l_p norm of the optimisation variable rho (coordinates in the transformed space; equal to
    the input-space predictor when `transform` is None). See `max_margin_solution` for the full result (input-
    space `beta`, the margin value, the support vectors) and for the conventions, solvers and errors.

    **Arguments:** as `max_margin_solution`. **Returns:** the direction, shape (m,).
    """
    return max_margin_solution(X, y, p, transform, sign).direction


def max_margin_value(
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    p: float = 1.0,
    transform: Shaped[ArrayLike, "m d"] | None = None,
    sign: str | Float[ArrayLike, " m"] | None = None,
) -> float:
    """The max normalised margin gamma_p = max_{||rho||_p <= 1} min_i y_i <S x_i, rho> = 1 / min ||rho||_p.

    **Arguments:** as `max_margin_solution`. **Returns:** gamma_p, a float.
    """
    return max_margin_solution(X, y, p, transform, sign).margin


def normalized_margin(
    beta: Shaped[ArrayLike, "*batch m"],
    X: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, " n"],
    p: float = 2.0,
    transform: Shaped[ArrayLike, "m d"] | None = None,
) -> Float[Array, "*batch"]:
    """Normalised margin  min_i y_i <x_i, beta> / ||beta||_p,  over any leading batch/time axes of `beta`.

    With `transform` S, `beta` is read as transformed coordinates rho and the margin is
    min_i y_i Re<S x_i, rho> / ||rho||_p (so the l_1 DFT margin of a convolutional net is
    normalized_margin(net.rho(), X, y, 1.0, transform=S)). p > 0 or inf; p < 1 gives the quasi-norm
    (sum |beta_j|^p)^(1/p), e.g. p = 2/L for depth-L networks. A zero `beta` gives nan.
    Pure JAX: works under jit/vmap (value checks are skipped for traced inputs).

    **Arguments:** `beta` (..., m); `X` (n, d); `y` (n,) of ±1; `p` > 0 or inf; `transform` S (m, d).

    **Returns:** the margins, shape `beta.shape[:-1]`.
    """
    p = as_norm_order("p", p)
    if not (is_traced(X) or is_traced(y)):
        X = as_real_matrix("X", X)
        y = as_labels("y", y, X.shape[0])
    X = jnp.asarray(X, dtype=jnp.float64)
    y = jnp.asarray(y, dtype=jnp.float64)
    S = None if transform is None else jnp.asarray(as_transform("transform", transform, X.shape[1]))
    beta = jnp.asarray(beta)
    m = X.shape[1] if S is None else S.shape[0]
    if beta.ndim < 1 or beta.shape[-1] != m:
        raise ValueError(f"beta must have shape (..., {m}) (last axis = number of coordinates); got shape {beta.shape}.")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has shape {y.shape}.")
    if jnp.iscomplexobj(beta) and (S is None or not jnp.iscomplexobj(S)):
        raise ValueError("beta is complex but the transform is real; pass the complex transform it belongs to.")
    if S is None:
        margins = (beta @ X.T) * y
    else:
        margins = jnp.real(beta @ jnp.conj(S @ X.T)) * y
    a = jnp.abs(beta)
    amax = jnp.max(a, axis=-1)
    if math.isinf(p):
        norm = amax
    else:  # scaled to avoid overflow/underflow for large or small p
        norm = amax * jnp.sum((a / amax[..., None]) ** p, axis=-1) ** (1.0 / p)
    return jnp.min(margins, axis=-1) / norm
