"""Limit directions of gradient-flow trajectories, estimated from the late trajectory and certified by KKT.

For separable classification with an exponential-tailed loss, the direction of an L-layer linear tensor network
converges, but only logarithmically in t (science.md §2: 1 − cos ≈ 1e-3 at log t = 10^4). The last saved state
is therefore a poor estimate of the limit. `limit_direction` reads the *structure* of the limit off the late
trajectory (support, signs or phases, active set), solves the KKT system of the max-margin problem restricted to
that structure (exact up to rounding), and certifies the result.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np
import scipy.optimize
from jaxtyping import Bool, Float, Int, Shaped

from .._trajectory import Trajectory
from ..networks import AbstractOrthogonallyDecomposableNetwork, FullyConnected
from ._checks import as_labels, as_positive, as_real_matrix
from ._kkt import kkt_certificate
from ._margins import max_margin_solution

__all__ = ["LimitDirection", "SaddleEscape", "limit_direction"]

# Coordinates below this fraction of the largest are at the noise floor of the solve.
_NOISE = 1e-9


class LimitDirection(NamedTuple):
    """The estimated limit direction of a trajectory and its certificate (see `limit_direction`).

    Fields:
        direction: the limit ρ̂/‖ρ̂‖₂ in the network's coordinates (ρ for orthogonally decomposable networks,
            complex for `Convolutional`; β for `FullyConnected` and other models), shape (m,).
        beta: the same predictor in input space, Re(Sᴴ ρ̂) / ‖·‖₂, shape (d,).
        rho: the KKT point itself, scaled so that the smallest margin is exactly 1, shape (m,).
        margin: its normalised ℓ_q margin min_i y_i⟨S x_i, ρ̂⟩ / ‖ρ̂‖_q = 1/‖ρ̂‖_q.
        q: the exponent of the max-margin problem, 2/L for ODNs, 2 for fully connected networks.
        support: indices j of the non-zero coordinates of ρ̂.
        signs: ρ̂_j/|ρ̂_j| on the support (±1, or unit-modulus phases for complex ρ), 0 elsewhere, shape (m,).
        active_set: indices i of the support vectors (margin exactly 1).
        multipliers: μ, shape (n,), μ_i ≥ 0 on the active set and 0 elsewhere.
        kkt_residual: the largest violation of the KKT conditions (stationarity, dual feasibility off the
            support, μ ≥ 0, primal feasibility of all samples, sign constraints), relative.
        last_iterate_error: 1 − cos between the last saved iterate and `direction`.
        log_t: log t of every save, shape (n_save,).
        distance: 1 − cos of each saved iterate to `direction`, shape (n_save,) (nan where the iterate is 0).
        distance_slope: d log(distance) / d log(log t) over the tail (negative: the trajectory approaches).
        sign_constraint: the sign constraints of the problem solved: +1 (ρ_j ≥ 0), −1 (ρ_j ≤ 0), 0 (free),
            shape (m,), or None; coordinates frozen at zero by the dynamics are not in the problem (`frozen`).
        frozen: boolean mask (m,) of coordinates the dynamics keep at exactly zero.
        repairs: active-set corrections needed after reading the structure off the trajectory (0 when the
            trajectory identified it).
        certified: True when every check passed (see `limit_direction`).
        message: what was checked, and in words what failed.
        saddle: a `SaddleEscape` when the trajectory was certified by escaping a saddle (step 6 of
            `limit_direction`), else None.
    """

    direction: Shaped[np.ndarray, " m"]
    beta: Float[np.ndarray, " d"]
    rho: Shaped[np.ndarray, " m"]
    margin: float
    q: float
    support: Int[np.ndarray, " k"]
    signs: Shaped[np.ndarray, " m"]
    active_set: Int[np.ndarray, " a"]
    multipliers: Float[np.ndarray, " n"]
    kkt_residual: float
    last_iterate_error: float
    log_t: Float[np.ndarray, " n_save"]
    distance: Float[np.ndarray, " n_save"]
    distance_slope: float
    sign_constraint: Float[np.ndarray, " m"] | None
    frozen: Bool[np.ndarray, " m"]
    repairs: int
    certified: bool
    message: str
    saddle: "SaddleEscape | None" = None


class SaddleEscape(NamedTuple):
    """A saddle the trajectory is passing on its way to the limit (q = 1; see `limit_direction`, step 6).

    Fields:
        direction: the saddle ρ_s/‖ρ_s‖₂, the max-margin KKT point with the escaping coordinates held at zero.
        rho: the saddle scaled to smallest margin 1.
        multipliers: its μ, shape (n,).
        coordinates: the escaping coordinates J (with their conjugate partners).
        dual: |v_j| = |Σ_i μ_i a_ij| on J (one per conjugate pair), all > 1: the saddle is not a minimiser.
        predicted_exponent: |v_j| − 1, the power of log t at which ρ_j/max|ρ| grows near the saddle.
        measured_exponent: the trajectory's log-log slope of |ρ_j|/max|ρ| over the tail.
        distance: 1 − cos of each saved iterate to the saddle, shape (n_save,).
        kkt_residual: the saddle's KKT residual (of the problem with ρ_J = 0).
        log10_escape_log_t: log10 of the log t at which ρ_J would reach its share in the limit at this rate.
    """

    direction: Shaped[np.ndarray, " m"]
    rho: Shaped[np.ndarray, " m"]
    multipliers: Float[np.ndarray, " n"]
    coordinates: Int[np.ndarray, " k"]
    dual: Float[np.ndarray, " e"]
    predicted_exponent: Float[np.ndarray, " e"]
    measured_exponent: Float[np.ndarray, " e"]
    distance: Float[np.ndarray, " n_save"]
    kkt_residual: float
    log10_escape_log_t: float


# ----------------------------------------------------------------------------------------------------------
# Input handling


def _positive(value, name: str) -> float:
    """`as_positive`, refusing booleans (True would read as 1.0)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return as_positive(value, name)


def _coordinates(traj: Trajectory, q, transform):
    """(coords (T, m), S (m, d), q, odn_layers (T0 coordinates a, (L, m)) or None, kind)."""
    model = traj.final
    if not callable(getattr(model, "beta", None)):
        raise TypeError(
            f"limit_direction needs a linear network with a `beta()` method (fs.networks.Diagonal, "
            f"FullyConnected, Convolutional, Linear, ...); the trajectory's model is {type(model).__name__}"
        )
    is_odn = isinstance(model, AbstractOrthogonallyDecomposableNetwork)
    if is_odn and getattr(model, "full_length", True) is False:
        is_odn = False
    d = int(model.input_dim) if hasattr(model, "input_dim") else int(np.asarray(model.beta()).shape[-1])
    first = jax.tree_util.tree_map(lambda leaf: leaf[0] if eqx.is_array(leaf) else leaf, traj.params)
    if is_odn:
        coords = np.asarray(eqx.filter_vmap(lambda m: m.rho())(traj.params))
        S = np.asarray(model.transform if transform is None else transform)
        default_q = 2.0 / model.depth
        a0 = np.asarray(first.odn_coordinates())
        kind = type(model).__name__
    else:
        coords = np.asarray(eqx.filter_vmap(lambda m: m.beta())(traj.params))
        S = np.eye(d) if transform is None else np.asarray(transform)
        a0 = None
        kind = type(model).__name__
        if q is None and not isinstance(model, FullyConnected):
            raise ValueError(
                f"limit_direction: no max-margin theory is built in for {kind} (not orthogonally decomposable, "
                "not fully connected); pass q explicitly (e.g. q=2.0 for the ℓ2 max-margin direction of β)"
            )
        default_q = 2.0
    if S.ndim != 2 or S.shape[0] != coords.shape[-1] or S.shape[1] != d:
        raise ValueError(
            f"transform must have shape ({coords.shape[-1]}, {d}) (coordinates × input dimension); got {S.shape}"
        )
    if q is None:
        q = default_q
    else:
        try:
            q = float(q)
        except (TypeError, ValueError):
            raise ValueError(f"q must be a number in (0, 2]; got {q!r}") from None
        if not (0.0 < q <= 2.0) or (1.0 < q < 2.0):
            raise ValueError(f"q must be 2/L for an integer depth L >= 1 (q in (0, 1] or q = 2); got q = {q!r}")
    return coords, S, q, a0, kind


def _as_tail(tail, log_t: np.ndarray) -> np.ndarray:
    """Indices of the saves used to read the structure: the last fraction `tail` of the finite saves, or the
    saves with log t in the window (lo, hi)."""
    finite = np.flatnonzero(np.isfinite(log_t))
    if isinstance(tail, tuple):
        if len(tail) != 2:
            raise ValueError(f"tail must be a fraction in (0, 1] or a window (lo, hi) of log t; got {tail!r}")
        lo, hi = (float(v) for v in tail)
        idx = finite[(log_t[finite] >= lo) & (log_t[finite] <= hi)]
    else:
        try:
            frac = float(tail)
        except (TypeError, ValueError):
            raise ValueError(f"tail must be a fraction in (0, 1] or a window (lo, hi) of log t; got {tail!r}") from None
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"tail must be a fraction in (0, 1] or a window (lo, hi) of log t; got {tail!r}")
        count = max(3, int(math.ceil(frac * finite.size)))
        idx = finite[-count:]
    if idx.size < 3:
        raise ValueError(
            f"tail={tail!r} selects {idx.size} saves with finite log t; at least 3 are needed to read trends "
            "(save more points, n_save, or widen the tail)"
        )
    return idx


def _sign_constraint(sign, a0, m: int, S: np.ndarray, q: float):
    """(sign array or None, frozen mask) from the `sign` argument and the conservation laws of the flow.

    "auto": per coordinate j, the flow of an ODN conserves |a_lj|² − |a_kj|² (science.md §2). If two or more
    a_lj vanish, ρ_j ≡ 0 (frozen). If all a_lj are real with equal magnitudes and ρ_j ≠ 0 (a balanced
    initialisation) and row j of S is real (so the flow of a_·j stays real: frequencies 0 and d/2 of the DFT),
    no a_lj can cross zero, so the sign of ρ_j is locked: the limit is a KKT point of the sign-constrained
    problem. Read from the first save; the laws make any save equivalent.
    """
    frozen = np.zeros(m, dtype=bool)
    if isinstance(sign, str) and sign == "auto":
        if a0 is None or a0.shape[0] < 2:
            return None, frozen
        mag2 = np.abs(a0) ** 2
        scale = np.max(mag2, axis=0)
        frozen = np.sum(np.abs(a0) == 0, axis=0) >= 2
        # a real coordinate needs a real row of S (g_j real), not only real values at one time
        real_row = np.max(np.abs(np.imag(S)), axis=1) <= 1e-12 * np.max(np.abs(S))
        real = real_row & np.all(np.abs(np.imag(a0)) <= 1e-12 * np.sqrt(np.maximum(scale, 1e-300)), axis=0)
        balanced = (np.max(mag2, axis=0) - np.min(mag2, axis=0)) <= 1e-10 * scale
        lock = real & balanced & (scale > 0) & ~frozen
        if not np.any(lock):
            return None, frozen
        rho0 = np.real(np.prod(a0, axis=0))
        return np.where(lock, np.sign(rho0), 0.0), frozen
    if sign is None:
        return None, frozen
    if isinstance(sign, str):
        if sign == "nonnegative":
            s = np.ones(m)
        elif sign == "nonpositive":
            s = -np.ones(m)
        else:
            raise ValueError(
                f"sign = {sign!r} is unknown; valid: 'auto', None, 'nonnegative', 'nonpositive', or an array of +1/-1/0"
            )
    else:
        s = np.asarray(sign)
        if s.shape != (m,) or not np.issubdtype(s.dtype, np.number) or not np.all(np.isin(s, (-1, 0, 1))):
            raise ValueError(f"sign array must have shape ({m},) with entries +1, -1 or 0; got {sign!r}")
        s = s.astype(np.float64)
    if np.iscomplexobj(S):
        complex_rows = np.max(np.abs(np.imag(S)), axis=1) > 0
        if np.any((s != 0) & complex_rows):
            raise ValueError("sign constraints apply to real coordinates only; this transform has complex rows")
    return s, frozen


# ----------------------------------------------------------------------------------------------------------
# Trends over the tail


def _slopes(tau: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares slope of log(values) against log(tau), per column (nan where a value is 0)."""
    x = np.log(tau) if np.all(tau > 0) else tau
    x = x - x.mean()
    with np.errstate(divide="ignore"):
        lv = np.log(values)
    ok = np.all(np.isfinite(lv), axis=0)
    slope = np.full(values.shape[1], np.nan)
    if np.any(ok):
        lv = lv[:, ok] - lv[:, ok].mean(axis=0)
        slope[ok] = (x @ lv) / (x @ x)
    return slope


# ----------------------------------------------------------------------------------------------------------
# Restricted KKT solves


class _Sol(NamedTuple):
    rho: np.ndarray  # (m,)
    mu: np.ndarray  # (n,)
    ok: bool
    note: str


def _phase(z: np.ndarray) -> np.ndarray:
    a = np.abs(z)
    return np.where(a > 0, z / np.where(a > 0, a, 1.0), 0.0)


def _solve_restricted(A, S_idx, signs, A_idx, q, rho_guess, is_complex, partner) -> _Sol:
    """Solve the KKT system of  min Σ_j |ρ_j|^q  s.t.  Re⟨a_i, ρ⟩ ≥ 1  on (support, signs, active set):

        q |ρ_j|^{q−2} ρ_j = Σ_{i∈A} μ_i a_ij  (j ∈ support),   Re⟨a_i, ρ⟩ = 1  (i ∈ A),   ρ_j = 0 off the support.

    q = 1 (real): the linear pair Z ρ_S = 1, Zᵀ μ = σ_S;  q = 2 (real): ρ_S = Zᵀμ/2, Z Zᵀ μ = 2;  otherwise
    Levenberg–Marquardt on log-magnitudes (and phases, complex) and μ, from the rescaled last iterate with μ
    from non-negative least squares.
    """
    n, m = A.shape
    k, a = len(S_idx), len(A_idx)
    rho = np.zeros(m, dtype=A.dtype)
    mu = np.zeros(n)
    if k == 0 or a == 0:
        return _Sol(rho, mu, False, "empty support or active set")
    Z = A[np.ix_(A_idx, S_idx)]
    if not is_complex and q == 1.0:
        sigma = np.real(signs[S_idx])
        rho_S, *_ = np.linalg.lstsq(Z, np.ones(a), rcond=None)
        mu_A, *_ = np.linalg.lstsq(Z.T, sigma, rcond=None)
        rho[S_idx] = rho_S
        mu[A_idx] = mu_A
        return _Sol(rho, mu, True, "")
    if not is_complex and q == 2.0:
        mu_A, *_ = np.linalg.lstsq(Z @ Z.T, 2.0 * np.ones(a), rcond=None)
        rho[S_idx] = Z.T @ mu_A / 2.0
        mu[A_idx] = mu_A
        return _Sol(rho, mu, True, "")

    # Nonlinear: one representative j per conjugate pair (ρ_{j'} = conj ρ_j keeps ρ the DFT of a real vector,
    # as the dynamics do); unknowns s = log|ρ_j|, θ = arg ρ_j (complex pairs only; real coordinates keep their
    # sign) and μ_A. Stationarity is divided by q|ρ_j|^{q−1} to balance the equations.
    reps = np.array([j for j in S_idx if partner[j] >= j], dtype=int)
    cplx = np.array([partner[j] != j for j in reps], dtype=bool)
    pair = partner[reps[cplx]]
    nr, nc = reps.size, int(cplx.sum())
    g = rho_guess / max(np.max(np.real(np.conj(A[A_idx]) @ rho_guess)), 1e-300)
    mag = np.maximum(np.abs(g[reps]), 1e-8 * np.max(np.abs(g[reps])))
    s0 = np.log(mag)
    th0 = np.angle(np.where(np.abs(g[reps[cplx]]) > 0, g[reps[cplx]], 1.0))
    sig = np.sign(np.real(signs[reps]))

    def assemble(s, th):
        r = np.zeros(m, dtype=A.dtype)
        e = np.exp(np.clip(s, -700.0, 700.0))
        r[reps[~cplx]] = sig[~cplx] * e[~cplx]
        if nc:
            z = e[cplx] * np.exp(1j * th)
            r[reps[cplx]] = z
            r[pair] = np.conj(z)
        return r

    Zfull = A[A_idx]

    def residual(x):
        s, th, mu_A = x[:nr], x[nr : nr + nc], x[nr + nc :]
        v = Zfull[:, reps].T @ mu_A
        w = np.exp(np.clip((1.0 - q) * s, -700.0, 700.0)) / q
        out = [1.0 - sig[~cplx] * np.real(v[~cplx]) * w[~cplx]]
        if nc:
            st = np.exp(1j * th) - v[cplx] * w[cplx]
            out += [st.real, st.imag]
        out.append(np.real(np.conj(Zfull) @ assemble(s, th)) - 1.0)
        return np.concatenate(out)

    r0 = assemble(s0, th0)[reps]
    Bg = q * np.abs(r0) ** (q - 1.0) * _phase(r0)
    B = Zfull[:, reps].T
    mu0, _ = scipy.optimize.nnls(np.vstack([B.real, B.imag]) if is_complex else np.real(B),
                                 np.concatenate([Bg.real, Bg.imag]) if is_complex else np.real(Bg))
    x0 = np.concatenate([s0, th0, mu0])
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            sol = scipy.optimize.least_squares(residual, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                                               max_nfev=100 + 20 * x0.size)
    except Exception as err:  # pragma: no cover - scipy failures are reported, not raised
        return _Sol(rho, mu, False, f"Newton failed ({err})")
    if not np.all(np.isfinite(sol.x)):
        return _Sol(rho, mu, False, "Newton diverged")
    rho = assemble(sol.x[:nr], sol.x[nr : nr + nc])
    mu[A_idx] = sol.x[nr + nc :]
    return _Sol(rho, mu, True, "")


class _Check(NamedTuple):
    residual: float
    stationarity: float
    dual: float
    mu_negative: float
    primal: float
    signs: float
    worst_sample: int  # most violated sample (primal), -1 if none
    worst_mu: int  # most negative multiplier, -1 if none
    worst_coord: int  # most violated off-support coordinate (dual), -1 if none
    wrong_sign: int  # support coordinate whose sign flipped, -1 if none


def _check(A, rho, mu, S_idx, signs, q, sign_constraint, frozen, is_complex) -> _Check:
    """Relative KKT violations of (ρ, μ), ρ at smallest margin ≈ 1 (see `limit_direction`)."""
    n, m = A.shape
    margins = np.real(np.conj(A) @ rho)
    v = A.T @ mu
    in_S = np.zeros(m, dtype=bool)
    in_S[S_idx] = True
    mag = np.abs(rho)
    if not np.all(np.isfinite(rho)) or not np.all(np.isfinite(mu)) or mag.max() == 0:
        inf = math.inf
        return _Check(inf, inf, inf, inf, inf, inf, -1, -1, -1, -1)
    gscale = 1.0
    # stationarity on the support, relative to the size of the gradient there
    with np.errstate(divide="ignore", invalid="ignore"):
        grad = q * mag[in_S] ** (q - 2.0) * rho[in_S]
    gscale = max(np.max(np.abs(grad)), 1e-300)
    stationarity = float(np.max(np.abs(grad - v[in_S])) / gscale)
    # dual feasibility off the support (q = 1: |v_j| ≤ 1; q = 2: v_j = 0; one-sided under sign constraints)
    off = ~in_S & ~frozen
    dual, worst_coord = 0.0, -1
    if q >= 1.0 and np.any(off):
        bound = 1.0 if q == 1.0 else 0.0
        vo = v[off]
        if sign_constraint is None:
            viol = np.abs(vo) - bound
        else:
            sc = sign_constraint[off]
            vr = np.real(vo)
            viol = np.where(sc > 0, vr - bound, np.where(sc < 0, -vr - bound, np.abs(vo) - bound))
        j = int(np.argmax(viol))
        dual = float(max(0.0, viol[j]) / gscale)
        if viol[j] > 0:
            worst_coord = int(np.flatnonzero(off)[j])
    mu_scale = max(np.max(np.abs(mu)), 1e-300)
    i_mu = int(np.argmin(mu))
    mu_negative = float(max(0.0, -mu[i_mu]) / mu_scale)
    worst_mu = i_mu if mu[i_mu] < 0 else -1
    i_pr = int(np.argmin(margins))
    primal = float(max(0.0, 1.0 - margins[i_pr], np.max(np.abs(margins[mu != 0] - 1.0), initial=0.0)))
    worst_sample = i_pr if margins[i_pr] < 1.0 else -1
    # sign pattern on the support (the trajectory's) and the sign constraints the dynamics keep
    sign_err, wrong_sign = 0.0, -1
    if is_complex:
        # phases are solved for; only real-constrained coordinates can flip
        agreement = np.ones(m)
    else:
        agreement = np.where(in_S, np.real(signs) * np.real(rho) / mag.max(), 1.0)
    if np.min(agreement) <= 0:
        wrong_sign = int(np.argmin(agreement))
        sign_err = float(-np.min(agreement)) if np.min(agreement) < 0 else 1.0
    if sign_constraint is not None:
        viol = np.max(-sign_constraint * np.real(rho)) / mag.max()
        sign_err = max(sign_err, float(max(0.0, viol)))
    frozen_err = float(np.max(mag[frozen], initial=0.0) / mag.max())
    residual = max(stationarity, dual, mu_negative, primal, sign_err, frozen_err)
    return _Check(residual, stationarity, dual, mu_negative, primal, sign_err, worst_sample, worst_mu,
                  worst_coord, wrong_sign)


# ----------------------------------------------------------------------------------------------------------


def _unique(A, rho, mu, S_idx, A_idx, q, sign_constraint, frozen, is_complex) -> tuple[bool, str]:
    """Whether a KKT point of the convex problem (q = 1 or 2) is its unique minimiser.

    q = 2: strictly convex, always. q = 1 (real): the LP optimum is unique when the vertex is non-degenerate and
    strictly complementary: Z_{A,S} square and well conditioned, μ_A > 0, and the dual bound strict off the
    support (|v_j| < 1, or v_j < 1 one-sided) — then no direction keeps optimality. q < 1: not decided (False).

    Complex q = 1 (a group ℓ1 over conjugate pairs): with v = Σ_i μ_i a_i, every minimiser ρ' has
    ρ'_j/|ρ'_j| = v_j on its support, so when |v_j| < 1 off the support ρ' = Σ_{pairs p ⊆ S} t_p v_p with t ≥ 0
    (ρ' Hermitian-symmetric, as a real network's is) and, by complementary slackness, Re⟨a_i, ρ'⟩ = 1 for
    every i with μ_i > 0. That linear system in t, M_{ip} = Σ_{j∈p} Re(conj(a_ij) v_j), has only the solution
    t of ρ when M has full column rank: then ρ is the unique minimiser.
    """
    if q == 2.0:
        return True, "strictly convex"
    if q != 1.0:
        return False, "q < 1 is non-convex"
    if is_complex:
        return _unique_complex_l1(A, rho, mu, S_idx, frozen, sign_constraint)
    Z = A[np.ix_(A_idx, S_idx)]
    if Z.shape[0] != Z.shape[1]:
        return False, f"degenerate vertex ({Z.shape[0]} active samples, {Z.shape[1]} support coordinates)"
    if np.linalg.cond(Z) > 1e10:
        return False, "ill-conditioned vertex"
    if np.min(mu[A_idx]) <= 1e-9 * np.max(mu[A_idx]):
        return False, "a zero multiplier (not strictly complementary)"
    off = np.ones(A.shape[1], dtype=bool)
    off[S_idx] = False
    off &= ~frozen
    v = A.T @ mu
    if np.any(off):
        if sign_constraint is None:
            slack = 1.0 - np.abs(v[off])
        else:
            sc = sign_constraint[off]
            slack = np.where(sc > 0, 1.0 - v[off], np.where(sc < 0, 1.0 + v[off], 1.0 - np.abs(v[off])))
        if np.min(slack) <= 1e-9:
            return False, "the dual bound is tight off the support (not strictly complementary)"
    return True, "non-degenerate LP vertex"


def _unique_complex_l1(A, rho, mu, S_idx, frozen, sign_constraint) -> tuple[bool, str]:
    """The complex q = 1 branch of `_unique` (see there)."""
    if sign_constraint is not None and np.any(sign_constraint != 0):
        return False, "uniqueness is not checked for sign-constrained complex coordinates"
    m = A.shape[1]
    positive = mu > 1e-9 * max(np.max(mu), 1e-300)
    if not np.any(positive):
        return False, "no positive multiplier"
    v = A.T @ mu
    in_S = np.zeros(m, dtype=bool)
    in_S[S_idx] = True
    off = ~in_S & ~frozen
    if np.any(off) and np.max(np.abs(v[off])) >= 1.0 - 1e-9:
        return False, "the dual bound is tight off the support (|v_j| = 1 at a zero coordinate)"
    partner = _partners(A)
    reps = [j for j in S_idx if partner[j] >= j]
    M = np.stack([np.real(np.conj(A[positive, j]) * v[j]) + (np.real(np.conj(A[positive, partner[j]]) * v[partner[j]])
                                                             if partner[j] != j else 0.0) for j in reps], axis=1)
    if M.shape[0] < M.shape[1]:
        return False, f"more support pairs ({M.shape[1]}) than support vectors with μ_i > 0 ({M.shape[0]})"
    sv = np.linalg.svd(M, compute_uv=False)
    if sv[-1] <= 1e-10 * sv[0]:
        return False, "the margin map on the support is not injective (a face of minimisers)"
    return True, ("strictly complementary complex ℓ1 point with an injective margin map on its support "
                  f"({M.shape[1]} conjugate pairs, {M.shape[0]} support vectors)")


def _partners(A: np.ndarray) -> np.ndarray:
    """partner[j] = j' with column a_{·j'} = conj(a_{·j}) (Hermitian pairs of a real signal's DFT), else j."""
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


def _cosine_distance(U: np.ndarray, u: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(U, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.real(np.conj(U) @ u) / (norms * np.linalg.norm(u))
    return np.where(norms > 0, 1.0 - cos, np.nan)


def limit_direction(
    traj: Trajectory,
    X: Float[np.ndarray, "n d"],
    y: Float[np.ndarray, " n"],
    *,
    q: float | None = None,
    depth: int | None = None,
    transform=None,
    sign="auto",
    tail: float | tuple[float, float] = 0.5,
    kkt_tol: float = 1e-8,
    max_repairs: int | None = None,
    search_width: int = 6,
    decay_slope: float = 0.2,
    escape_rtol: float = 0.25,
) -> LimitDirection:
    """Estimate the limit direction of a classification trajectory from its late part, with a KKT certificate.

    **Theory.** For separable data and an exponential-tailed loss (logistic, exponential), gradient flow on an
    L-layer orthogonally decomposable network f(x) = ⟨S x, ρ⟩ (`Diagonal`, full-length `Convolutional`,
    `Linear`) converges in direction to a KKT point of

        min_ρ Σ_j |ρ_j|^q   s.t.   y_i Re⟨S x_i, ρ⟩ ≥ 1,   q = 2/L

    (Yun, Krishnan & Mobahi, ICLR 2021; Lyu & Li 2020 for homogeneous models; Gunasekar et al. 2018), and a fully
    connected linear network's β converges to the ℓ2 max-margin (SVM) direction at any depth (q = 2, S = I;
    Ji & Telgarsky 2020). With a_i = y_i S x_i the KKT conditions are

        q |ρ_j|^{q−2} ρ_j = Σ_i μ_i a_ij  on the support,   μ ≥ 0,  μ_i (Re⟨a_i, ρ⟩ − 1) = 0,  Re⟨a_i, ρ⟩ ≥ 1,

    and off the support |Σ_i μ_i a_ij| ≤ 1 (q = 1), = 0 (q = 2), nothing (q < 1, the slope of |ρ_j|^q is
    infinite at 0).

    **Algorithm.** Over the tail of the saves (`tail`), with τ = log t and u = ρ/‖ρ‖₂ (science.md §2):

    1. support: coordinates that keep their share of ‖u‖: log-log slope d log(|u_j|/max|u|)/d log τ above
       −`decay_slope` (off the support |u_j| decays like a power of log t, slope ≈ −(1 − |Σ_i μ_i a_ij|) for
       q = 1), above the noise floor 1e-9·max|u| and not frozen by the dynamics; conjugate pairs together;
    2. signs: the sign (the phase, for complex ρ) of u_j at the last save, or the locked sign;
    3. active set: the relative margin gaps g_i = m_i / min_k m_k − 1 decay like 1/τ for support vectors
       (slope −1) and tend to a positive constant otherwise (slope 0): active when the slope is below −1/2;
    4. solve the KKT system on (support, signs, active set): linear for real q = 1 (Z_{A,S} ρ_S = 1,
       Z_{A,S}ᵀ μ = σ_S) and q = 2 (ρ_S = Z_{A,S}ᵀ μ / 2, Z Zᵀ μ = 2); Levenberg–Marquardt otherwise (on
       log|ρ_j|, phases and μ, from the rescaled last iterate with μ from NNLS; ρ kept Hermitian-symmetric).
       If the KKT checks fail, structures within two edits of the one read (the `search_width` most borderline
       coordinates and samples) are tried, then greedy active-set repairs (add the most violated sample or
       off-support coordinate, drop a negative multiplier or a flipped sign), at most `max_repairs`. If still no
       KKT point is found and the problem is convex (q = 1 or 2, no frozen coordinate), the structure of the
       convex solver's minimiser (`max_margin_solution`) is used instead (said in `message`);
    5. certificate (`certified`): `kkt_residual` ≤ `kkt_tol` (stationarity, dual feasibility off the support,
       μ ≥ 0, primal feasibility of *every* sample, sign constraints), agreed by the independent
       `kkt_certificate` for ODNs; the data separated at the last save; the trajectory's distance 1 − cos to
       the estimate decreasing over the tail; and either the structure was read off the trajectory unchanged
       (`repairs` = 0) or the problem is convex with a provably unique minimiser (q = 2; q = 1 real at a
       non-degenerate, strictly complementary vertex; complex q = 1 strictly complementary with an injective
       margin map on the support), which by the theorem is then the limit. Otherwise `certified=False` and
       `message` says in words which check failed; the best point found is returned.
    6. saddle escape (q = 1, unique minimiser): when some support coordinates J of the estimate have at the last
       save less than half their share of max|ρ| in the estimate, the KKT point with ρ_J held at zero is solved.
       If the trajectory approaches it, its duals |v_j| = |Σ_i μ_i a_ij| exceed 1 on J and ρ_J/max|ρ| grows over
       the tail at the rate they predict, (log t)^(|v_j| − 1) (within `escape_rtol`, relative), the flow is
       passing that saddle: it cannot be the limit (ρ_J would outgrow the support), so the unique minimiser is,
       even when the trajectory is not yet approaching it (which may take until log t ~ 10^45: the rate is a
       power of log t). Reported in `saddle`; it can stand in for the "approaching" check of step 5.

    **Sign constraints** (`sign`): a balanced same-sign initialisation keeps the sign of ρ_j forever (science.md
    §2), so its limit is a KKT point of the *sign-constrained* problem (which matters for q = 1). ``"auto"``
    (default) detects this from the conservation laws |a_lj|² − |a_kj|² = const at the first save: coordinates
    with real, equal-magnitude layers are sign-locked, coordinates with two zero layers frozen at 0. Pass None
    (free), ``"nonnegative"``, ``"nonpositive"`` or an array of +1/−1/0 to override.

    **Arguments:** `traj` from `fs.simulate` or `fs.gradient_descent` (one run, `traj.ok`); the training data
    `X` (n, d), `y` (n,) of ±1; `q` or `depth` (q = 2/depth) to override the exponent; `transform` to override S;
    `tail` a fraction of the finite saves (at least 3 saves) or a (lo, hi) window of log t; `kkt_tol`;
    `max_repairs` (greedy repairs, default 2(n + m)); `search_width` (borderline coordinates and samples each
    in the two-edit search); `decay_slope` (the support threshold of step 1); `escape_rtol` (step 6).

    For a fully connected network `depth` still means q = 2/depth; leave it unset (q = 2 is the theory there).
    """
    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj must be a flowsim.Trajectory (from fs.simulate or fs.gradient_descent); got {type(traj).__name__}")
    if np.ndim(traj.status) != 0:
        raise ValueError(
            f"traj is a batch of {np.shape(traj.status)} trajectories; pass one (e.g. jax.tree.map(lambda x: x[i], traj))"
        )
    if not bool(traj.ok):
        raise ValueError(f"traj did not reach its horizon (traj.ok is False): {traj.message}")
    if depth is not None:
        if q is not None:
            raise ValueError(f"give q or depth, not both; got q={q!r}, depth={depth!r}")
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1 (q = 2/depth); got {depth!r}")
        q = 2.0 / int(depth)
    coords, S, q, a0, kind = _coordinates(traj, q, transform)
    X = as_real_matrix(X)
    n, d = X.shape
    if S.shape[1] != d:
        raise ValueError(f"X has {d} columns but the network's input dimension is {S.shape[1]}")
    y = as_labels(y, n)
    try:
        kkt_tol = float(kkt_tol)
    except (TypeError, ValueError):
        raise ValueError(f"kkt_tol must be a positive number; got {kkt_tol!r}") from None
    if not kkt_tol > 0:
        raise ValueError(f"kkt_tol must be a positive number; got {kkt_tol!r}")
    m = coords.shape[-1]
    if max_repairs is None:
        max_repairs = 2 * (n + m)
    for name, value in (("max_repairs", max_repairs), ("search_width", search_width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
    decay_slope = _positive(decay_slope, "decay_slope")
    escape_rtol = _positive(escape_rtol, "escape_rtol")
    is_complex = np.iscomplexobj(S) and np.max(np.abs(np.imag(S))) > 0
    if not is_complex:
        S = np.real(S)
        coords = np.real(coords)
    sign_constraint, frozen = _sign_constraint(sign, a0, m, S, q)
    A = y[:, None] * (X @ S.T)  # rows a_i = y_i S x_i; margins Re(conj(A) @ ρ)

    log_t = np.asarray(traj.log_t, dtype=np.float64)
    idx = _as_tail(tail, log_t)
    tau = log_t[idx]
    C = coords[idx]
    if not np.all(np.isfinite(C)):
        raise ValueError("the trajectory's tail contains non-finite parameters")
    norms = np.linalg.norm(C, axis=1)
    notes = []
    if np.any(norms == 0):
        raise ValueError("the network's coordinates are identically zero on the tail; nothing to read a direction from")
    U = C / norms[:, None]
    last = U[-1]
    margins_tail = np.real(U @ np.conj(A).T)  # (T, n)
    separated = bool(np.all(margins_tail[-1] > 0))

    # (1) support, (2) signs: a coordinate of the limit's support keeps its share of ‖u‖ (log-log slope → 0);
    # one off the support decays like a power of log t (slope ≈ −(1 − |Σ μ_i a_ij|) for q = 1)
    mag = np.abs(U)
    rel = mag / np.max(mag, axis=1, keepdims=True)
    slope_c = np.nan_to_num(_slopes(tau, np.maximum(rel, 1e-300)), nan=-math.inf)
    movable = (rel[-1] > _NOISE) & ~frozen
    in_S = movable & (slope_c > -decay_slope)
    signs = _phase(last) if is_complex else np.sign(last)
    if sign_constraint is not None:
        signs = np.where(sign_constraint != 0, sign_constraint, signs)
    coord_edit = np.where(movable, np.abs(slope_c + decay_slope), math.inf)
    partner = _partners(A)  # conjugate coordinates (j, d − j for the DFT) enter and leave the support together
    in_S |= in_S[partner]
    coord_edit = np.where(partner < np.arange(m), math.inf, coord_edit)
    if q == 2.0:  # no sparsity at q = 2: every coordinate the dynamics can move is free
        in_S = ~frozen if sign_constraint is None else (~frozen & ((sign_constraint == 0) | in_S))
        if sign_constraint is None:
            coord_edit[:] = math.inf

    # (3) active set: relative margin gaps g_i = m_i / min_k m_k − 1 decay like 1/log t for support vectors
    # (slope −1) and tend to a positive constant otherwise (slope 0)
    if separated:
        gmin = np.min(margins_tail, axis=1, keepdims=True)
        gaps = np.maximum(margins_tail / gmin - 1.0, 0.0)
        slope_s = np.nan_to_num(_slopes(tau, np.maximum(gaps, 1e-300)), nan=-math.inf)
        in_A = (gaps[-1] <= 1e-12) | (slope_s < -0.5)
        sample_edit = np.where(gaps[-1] <= 1e-12, math.inf, np.abs(slope_s + 0.5))
    else:
        in_A = margins_tail[-1] <= np.min(margins_tail[-1]) + 1e-12
        sample_edit = margins_tail[-1] - np.min(margins_tail[-1])
        notes.append(
            f"the last save does not separate the data (smallest margin {np.min(margins_tail[-1]):.3g}); "
            "the trajectory is not in the max-margin regime"
        )
    read_S, read_A, read_signs = in_S.copy(), in_A.copy(), signs.copy()

    # (4) solve the restricted KKT system on the structure read off the trajectory; if it fails, search the
    # structures within two edits of it (borderline coordinates and samples first), then repair greedily
    def evaluate(S_mask, A_mask, fixed=frozen):
        S_idx, A_idx = np.flatnonzero(S_mask), np.flatnonzero(A_mask)
        sol = _solve_restricted(A, S_idx, signs, A_idx, q, last, is_complex, partner)
        mrg = np.real(np.conj(A) @ sol.rho)
        if sol.ok and np.all(np.isfinite(sol.rho)) and np.min(mrg) > 0:
            chk = _check(A, sol.rho, sol.mu, S_idx, signs, q, sign_constraint, fixed, is_complex)
        else:
            chk = _Check(math.inf, math.inf, math.inf, math.inf, math.inf, math.inf, -1, -1, -1, -1)
        return sol, chk, S_idx, A_idx

    best = evaluate(in_S, in_A)
    if best[1].residual > kkt_tol:
        # the most borderline coordinates and samples (distance of their score to the split), ranked
        coord_edits = sorted((coord_edit[j], "c", j) for j in np.flatnonzero(np.isfinite(coord_edit)))
        sample_edits = sorted((sample_edit[i], "s", i) for i in np.flatnonzero(np.isfinite(sample_edit)))
        width = int(search_width)
        edits = [(rank, kind_e, index) for part in (coord_edits[:width], sample_edits[:width])
                 for rank, (_, kind_e, index) in enumerate(part)]
        trials = [(e[0], (e,)) for e in edits]
        trials += [(e[0] + f[0], (e, f)) for k, e in enumerate(edits) for f in edits[k + 1 :]]
        trials.sort(key=lambda t: t[0])
        for _, combo in trials:
            S_mask, A_mask = read_S.copy(), read_A.copy()
            for _, kind_e, index in combo:
                if kind_e == "c":
                    S_mask[[index, partner[index]]] = not S_mask[index]
                else:
                    A_mask[index] = not A_mask[index]
            cand = evaluate(S_mask, A_mask)
            if cand[1].residual < best[1].residual:
                best = cand
            if cand[1].residual <= kkt_tol:
                break

    def repair(current, fixed=frozen):
        """Greedy active-set repairs from `current`; coordinates in `fixed` stay at zero. The best point found."""
        best = current
        steps = 0
        visited = set()
        while current[1].residual > kkt_tol and steps < max_repairs:
            sol, chk, S_idx, A_idx = current
            in_S = np.zeros(m, dtype=bool)
            in_S[S_idx] = True
            in_A = np.zeros(n, dtype=bool)
            in_A[A_idx] = True
            key = (tuple(S_idx), tuple(A_idx))
            if key in visited:
                break
            visited.add(key)
            if chk.worst_sample >= 0 and chk.primal > kkt_tol:
                in_A[chk.worst_sample] = True
            elif chk.worst_mu >= 0 and chk.mu_negative > kkt_tol:
                in_A[chk.worst_mu] = False
            elif chk.wrong_sign >= 0:
                in_S[[chk.wrong_sign, partner[chk.wrong_sign]]] = False
            elif chk.worst_coord >= 0 and chk.dual > kkt_tol:
                j = chk.worst_coord
                in_S[[j, partner[j]]] = True
                v = A.T @ sol.mu
                signs[[j, partner[j]]] = _phase(v[[j, partner[j]]]) if is_complex else np.sign(np.real(v[j]))
            else:
                break
            steps += 1
            current = evaluate(in_S, in_A, fixed)
            if not current[1].residual < math.inf:
                break
            if current[1].residual < best[1].residual:
                best = current
        return best

    best = repair(best)
    notes_structure = []
    if best[1].residual > kkt_tol and q in (1.0, 2.0) and separated and not np.any(frozen):
        # The trajectory's structure led to no KKT point (typically: it is still far from the limit, e.g. at a
        # saddle). The problem is convex: take the structure of its minimiser from a convex solver instead; the
        # certificate then rests on uniqueness and on the trajectory's behaviour (steps 5 and 6).
        try:
            convex = max_margin_solution(X, y, p=q, transform=S, sign=sign_constraint)
        except (ValueError, RuntimeError):
            convex = None
        if convex is not None:
            signs[:] = _phase(convex.rho) if is_complex else np.sign(np.real(convex.rho))
            cand = evaluate(np.abs(convex.rho) > 1e-9 * np.max(np.abs(convex.rho)), convex.active)
            cand = repair(cand)
            if cand[1].residual < best[1].residual:
                best = cand
                notes_structure.append("the structure was taken from a convex solver (fs.analysis.max_margin), as "
                                       "none near the trajectory's gave a KKT point")

    sol, chk, S_idx, A_idx = best
    final_S, final_A = np.zeros(m, dtype=bool), np.zeros(n, dtype=bool)
    final_S[S_idx], final_A[A_idx] = True, True
    repairs = int(np.sum(final_S ^ read_S) + np.sum(final_A ^ read_A))
    rho, mu, residual = sol.rho, sol.mu, chk.residual
    fallback = not (np.all(np.isfinite(rho)) and np.any(rho != 0))
    if fallback:  # every restricted solve failed: report the last iterate (scaled to margin 1 when separating)
        rho, mu = last.copy(), np.zeros(n)
        if np.min(np.real(np.conj(A) @ rho)) > 0:
            rho = rho / np.min(np.real(np.conj(A) @ rho))
    mrg = np.real(np.conj(A) @ rho)

    # (5) certificate
    ok_kkt = residual <= kkt_tol
    msgs = []
    n_read = f"support {int(read_S.sum())}, active set {int(read_A.sum())}"
    if not ok_kkt:
        parts = {k: getattr(chk, k) for k in ("stationarity", "dual", "mu_negative", "primal", "signs")}
        worst = max(parts, key=parts.get)
        msgs.append(
            f"no KKT point found on or near the structure read from the trajectory ({n_read}; two-edit search "
            f"and active-set repairs tried): best residual {residual:.2e} > kkt_tol = {kkt_tol:.1e}, worst part "
            f"{worst} = {parts[worst]:.2e}"
        )
    # Cross-check with the independent implementation fs.analysis.kkt_certificate (ODNs, q = 2/L with L >= 2).
    L_equiv = 2.0 / q
    if ok_kkt and q < 2.0 and abs(L_equiv - round(L_equiv)) < 1e-12 and (not is_complex or sign_constraint is None):
        inactive = np.delete(mrg, A_idx)
        active_tol = min(0.5 * (np.min(inactive) - 1.0), 1e-2) if inactive.size else 1e-6
        if active_tol > 0:
            other = kkt_certificate(
                rho, X, y, int(round(L_equiv)), S, None if is_complex else sign_constraint,
                active_tol=active_tol, support_tol=0.5 * np.min(np.abs(rho[S_idx])) / np.max(np.abs(rho)),
            )
            if not other.residual <= max(kkt_tol, 1e-8):
                ok_kkt = False
                msgs.append(f"fs.analysis.kkt_certificate disagrees (residual {other.residual:.2e})")
        else:
            ok_kkt = False
            msgs.append("an inactive sample has margin exactly 1: the active set is ambiguous")

    direction = rho / np.linalg.norm(rho) if np.any(rho != 0) else rho
    beta = np.real(np.conj(S).T @ direction)
    beta = beta / np.linalg.norm(beta) if np.any(beta != 0) else beta
    distance = _cosine_distance(coords, direction) if np.any(direction != 0) else np.full(log_t.shape, np.nan)
    dist_tail = distance[idx]
    last_err = float(distance[idx[-1]])  # the tail's last save (a window may end before the trajectory does)
    dslope = float(_slopes(tau, np.maximum(np.nan_to_num(dist_tail, nan=1.0), 1e-300)[:, None])[0])
    approaching = bool(np.all(np.isfinite(dist_tail))) and (
        dist_tail[-1] <= 1e-13 or (dist_tail[-1] < dist_tail[0] and dslope < 0)
    )
    structure_read = repairs == 0
    unique, why = _unique(A, rho, mu, S_idx, A_idx, q, sign_constraint, frozen, is_complex) if ok_kkt else (False, "")

    # (6) saddle escape: a trajectory whose share of some support coordinates J of the unique minimiser is far
    # below their share there may be passing a saddle, the KKT point with ρ_J held at zero. There v_j = Σ_i μ_i a_ij has
    # |v_j| > 1 on J, so ρ_J grows relative to the support like (log t)^{|v_j| − 1}; the limit cannot be the
    # saddle, and the unique minimiser is the only candidate left.
    saddle = None
    if ok_kkt and unique and separated and q == 1.0 and not fallback:
        share_last = rel[-1]
        share_est = np.abs(rho) / np.max(np.abs(rho))
        lagging = sorted((share_last[j] / share_est[j], j) for j in S_idx
                         if partner[j] >= j and share_last[j] < 0.5 * share_est[j])
        signs[:] = read_signs
        for count in range(1, min(3, len(lagging)) + 1):
            escaping = np.array([j for _, j in lagging[:count]], dtype=int)
            J = np.zeros(m, dtype=bool)
            J[escaping] = True
            J[partner[escaping]] = True
            fixed = frozen | J
            s_sol, s_chk, s_S, s_A = repair(evaluate(final_S & ~J, read_A, fixed), fixed)
            if not (s_chk.residual <= kkt_tol and np.any(s_sol.rho != 0)):
                continue
            s_dir = s_sol.rho / np.linalg.norm(s_sol.rho)
            s_dist = _cosine_distance(coords, s_dir)
            s_tail = s_dist[idx]
            s_slope = float(_slopes(tau, np.maximum(np.nan_to_num(s_tail, nan=1.0), 1e-300)[:, None])[0])
            toward = bool(np.all(np.isfinite(s_tail))) and s_tail[-1] < s_tail[0] and s_slope < 0 \
                and s_tail[-1] < dist_tail[-1]
            dual = np.abs(A.T @ s_sol.mu)[escaping]
            predicted, measured = dual - 1.0, slope_c[escaping]
            agree = bool(np.all(predicted > 0) and np.all(np.abs(measured - predicted) <= escape_rtol * predicted))
            if toward and agree:
                with np.errstate(divide="ignore"):
                    reach = np.log10(tau[-1]) + np.log10(share_est[escaping] / share_last[escaping]) / predicted
                saddle = SaddleEscape(direction=s_dir, rho=s_sol.rho, multipliers=s_sol.mu, coordinates=np.flatnonzero(J),
                                      dual=dual, predicted_exponent=predicted, measured_exponent=measured,
                                      distance=s_dist, kkt_residual=float(s_chk.residual),
                                      log10_escape_log_t=float(np.max(reach)))
                break
    if not approaching:
        msgs.append(
            f"the trajectory is not approaching the estimate over the tail (1 − cos from {dist_tail[0]:.2e} to "
            f"{dist_tail[-1]:.2e}, log-log slope {dslope:.2f})"
            + ("" if saddle is None else "; it is passing a saddle instead (below)")
        )
    structure_ok = structure_read or unique
    repair_note = (f"the structure read from the trajectory ({n_read}) needed {repairs} correction(s) to reach "
                   f"the KKT point (support {len(S_idx)}, active set {len(A_idx)})")
    if ok_kkt and not structure_ok:
        msgs.append(f"{repair_note} and that point is not provably the unique one ({why}); integrate further "
                    "(larger log_t1) so the trajectory reveals the structure")
    if fallback:
        msgs.append("every restricted KKT solve failed, so `direction` is just the last iterate")
    if not separated:
        msgs.extend(notes)
    certified = bool(ok_kkt and (approaching or saddle is not None) and structure_ok and separated)
    if saddle is not None:
        msgs.append(
            f"the trajectory approaches a saddle, the KKT point with ρ_j = 0 for j in {saddle.coordinates.tolist()} "
            f"(residual {saddle.kkt_residual:.1e}; 1 − cos from {saddle.distance[idx][0]:.2e} to "
            f"{saddle.distance[idx[-1]]:.2e}), where |v_j| = {np.array2string(saddle.dual, precision=4)} > 1, so those "
            f"coordinates grow relative to the support like (log t)^(|v_j| − 1): measured log-log slope "
            f"{np.array2string(saddle.measured_exponent, precision=4)} vs predicted "
            f"{np.array2string(saddle.predicted_exponent, precision=4)}; the limit is not the saddle"
            f" (at this rate they reach their share of the estimate near log t ≈ 10^{saddle.log10_escape_log_t:.0f})"
        )
    if certified and not structure_read:
        msgs.append(f"{repair_note}; it is the unique minimiser of the convex problem ({why}), hence the limit")
    msgs.extend(notes_structure)
    sign_desc = "free" if sign_constraint is None else f"{int(np.sum(sign_constraint != 0))} sign-locked"
    head = (f"{kind}, q = {q:g}, tail log t in [{tau[0]:.4g}, {tau[-1]:.4g}] ({idx.size} saves), {sign_desc} "
            f"coordinates; support {len(S_idx)}, active set {len(A_idx)}, KKT residual {residual:.1e}, "
            f"1 − cos(last iterate, estimate) = {last_err:.2e}")
    if certified:
        message = head + ". Certified" + (f" ({'; '.join(msgs)})" if msgs else "") + "."
    else:
        message = head + ". NOT certified: " + "; ".join(msgs) + "."
    norm_q = float(np.sum(np.abs(rho) ** q) ** (1.0 / q)) if np.any(rho != 0) else math.nan
    signs_out = np.zeros(m, dtype=rho.dtype)
    signs_out[S_idx] = _phase(rho[S_idx])
    return LimitDirection(
        direction=direction,
        beta=beta,
        rho=rho,
        margin=float(np.min(mrg) / norm_q) if norm_q > 0 else math.nan,
        q=q,
        support=S_idx,
        signs=signs_out,
        active_set=A_idx,
        multipliers=mu,
        kkt_residual=float(residual),
        last_iterate_error=last_err,
        log_t=log_t,
        distance=distance,
        distance_slope=dslope,
        sign_constraint=sign_constraint,
        frozen=frozen,
        repairs=int(repairs),
        certified=certified,
        message=message,
        saddle=saddle,
    )
