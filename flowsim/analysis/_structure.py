"""Step 1 of `limit_direction`: the structure of the limit (support, signs, active set) read off the late
trajectory (private).

Directional convergence of linear tensor networks is logarithmic in t (Yun, Krishnan & Mobahi, ICLR 2021), but
its *trends* show early: over τ = log t, a support coordinate of the limit keeps its share of ‖u‖ (u = ρ/‖ρ‖₂)
while an off-support one decays like a power of τ (slope ≈ −(1 − |Σ_i μ_i a_ij|) for q = 1), and the relative
margin gap of a support vector decays like 1/τ while other samples keep a positive gap.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Float, Int, Shaped

from .._checks import as_sign
from ._geometry import MarginProblem, phase

# Coordinates below this fraction of the largest are at the noise floor of the solve.
NOISE = 1e-9


class Structure(NamedTuple):
    """A candidate structure of the limit: `support` (m,) and `active` (n,) boolean masks, and the
    `signs` (±1, or unit phases for complex ρ) of the support coordinates, shape (m,)."""

    support: Bool[np.ndarray, " m"]
    signs: Shaped[np.ndarray, " m"]
    active: Bool[np.ndarray, " n"]


class Tail(NamedTuple):
    """The saves the structure is read from: their indices, τ = log t, the unit coordinates u (T, m) and
    their margins (T, n); `separated` when the last one separates the data."""

    index: Int[np.ndarray, " T"]
    tau: Float[np.ndarray, " T"]
    unit: Shaped[np.ndarray, "T m"]
    margins: Float[np.ndarray, "T n"]
    separated: bool


class Reading(NamedTuple):
    """What the tail says: the `structure` read, how borderline each coordinate (`coord_edit`) and sample
    (`sample_edit`) is (inf: not a candidate for an edit), the log-log slopes of the coordinates' shares
    (`coord_slope`, their escape rates near a saddle) and their shares |u_j|/max|u| at the last save."""

    structure: Structure
    coord_edit: Float[np.ndarray, " m"]
    sample_edit: Float[np.ndarray, " n"]
    coord_slope: Float[np.ndarray, " m"]
    last_share: Float[np.ndarray, " m"]


def tail_indices(tail, log_t: np.ndarray) -> np.ndarray:
    """Indices of the saves used: the last fraction `tail` of the finite saves (at least 3), or the saves with
    log t in the window (lo, hi)."""
    finite = np.flatnonzero(np.isfinite(log_t))
    what = f"tail must be a fraction in (0, 1] or a window (lo, hi) of log t; got {tail!r}"
    if isinstance(tail, tuple):
        if len(tail) != 2 or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                     for v in tail):
            raise ValueError(what)
        lo, hi = (float(v) for v in tail)
        idx = finite[(log_t[finite] >= lo) & (log_t[finite] <= hi)]
    else:
        if isinstance(tail, (bool, np.bool_)) or not isinstance(tail, (int, float, np.number)):
            raise TypeError(what)
        if not 0.0 < float(tail) <= 1.0:
            raise ValueError(what)
        idx = finite[-max(3, math.ceil(float(tail) * finite.size)):]
    if idx.size < 3:
        raise ValueError(
            f"tail={tail!r} selects {idx.size} saves with finite log t; at least 3 are needed to read trends "
            "(save more points, n_save, or widen the tail)"
        )
    return idx


def read_tail(problem: MarginProblem, coords: np.ndarray, log_t: np.ndarray, index: np.ndarray) -> Tail:
    """The `Tail` of the coordinates `coords` (n_save, m) over the saves `index`."""
    C = coords[index]
    if not np.all(np.isfinite(C)):
        raise ValueError("the trajectory's tail contains non-finite parameters")
    norms = np.linalg.norm(C, axis=1)
    if np.any(norms == 0):
        raise ValueError("the network's coordinates are identically zero on the tail; nothing to read a direction from")
    U = C / norms[:, None]
    margins = problem.margins(U)
    return Tail(index, log_t[index], U, margins, bool(np.all(margins[-1] > 0)))


def slopes(tau: np.ndarray, values: np.ndarray) -> np.ndarray:
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


def sign_constraint(sign, layer_coordinates, S: np.ndarray):
    """(sign constraints or None, frozen mask) from the `sign` argument and the flow's conservation laws.

    `"auto"`: per coordinate j, the flow of an orthogonally decomposable network conserves |a_lj|² − |a_kj|²
    (Yun, Krishnan & Mobahi, ICLR 2021). If two or more a_lj vanish, ρ_j ≡ 0 (frozen). If all a_lj are real
    with equal magnitudes and ρ_j ≠ 0 (a balanced initialisation) and row j of S is real (so the flow of a_·j
    stays real: frequencies 0 and d/2 of the DFT), no a_lj can cross zero, so the sign of ρ_j is locked. Read
    from the first save (`layer_coordinates`, (L, m), or None); the laws make any save equivalent.
    """
    m = S.shape[0]
    frozen = np.zeros(m, dtype=bool)
    if not (isinstance(sign, str) and sign == "auto"):
        return as_sign("sign", sign, m, np.max(np.abs(np.imag(S)), axis=1) > 0), frozen
    a0 = layer_coordinates
    if a0 is None or a0.shape[0] < 2:
        return None, frozen
    mag2 = np.abs(a0) ** 2
    scale = np.max(mag2, axis=0)
    frozen = np.sum(np.abs(a0) == 0, axis=0) >= 2
    real_row = np.max(np.abs(np.imag(S)), axis=1) <= 1e-12 * np.max(np.abs(S))
    real = real_row & np.all(np.abs(np.imag(a0)) <= 1e-12 * np.sqrt(np.maximum(scale, 1e-300)), axis=0)
    balanced = (np.max(mag2, axis=0) - np.min(mag2, axis=0)) <= 1e-10 * scale
    lock = real & balanced & (scale > 0) & ~frozen
    if not np.any(lock):
        return None, frozen
    return np.where(lock, np.sign(np.real(np.prod(a0, axis=0))), 0.0), frozen


def read_structure(problem: MarginProblem, tail: Tail, decay_slope: float) -> Reading:
    """Support, signs and active set from the tail's trends (step 1 of `limit_direction`)."""
    m = problem.m
    mag = np.abs(tail.unit)
    share = mag / np.max(mag, axis=1, keepdims=True)
    coord_slope = np.nan_to_num(slopes(tail.tau, np.maximum(share, 1e-300)), nan=-math.inf)
    movable = (share[-1] > NOISE) & ~problem.frozen
    support = problem.pairs(movable & (coord_slope > -decay_slope))
    last = tail.unit[-1]
    signs = phase(last) if problem.is_complex else np.sign(last)
    if problem.sign is not None:
        signs = np.where(problem.sign != 0, problem.sign, signs)
    coord_edit = np.where(movable, np.abs(coord_slope + decay_slope), math.inf)
    coord_edit = np.where(problem.partner < np.arange(m), math.inf, coord_edit)
    if problem.q == 2.0:  # no sparsity at q = 2: every coordinate the dynamics can move is free
        if problem.sign is None:
            support = ~problem.frozen
            coord_edit[:] = math.inf
        else:
            support = ~problem.frozen & ((problem.sign == 0) | support)
    active, sample_edit = _read_active_set(tail)
    return Reading(Structure(support, signs, active), coord_edit, sample_edit, coord_slope, share[-1])


def _read_active_set(tail: Tail) -> tuple[np.ndarray, np.ndarray]:
    """Relative margin gaps g_i = m_i / min_k m_k − 1 decay like 1/τ for support vectors (slope −1) and tend to
    a positive constant otherwise (slope 0): active when the slope is below −1/2."""
    margins = tail.margins
    if not tail.separated:
        last = margins[-1]
        return last <= np.min(last) + 1e-12, last - np.min(last)
    gaps = np.maximum(margins / np.min(margins, axis=1, keepdims=True) - 1.0, 0.0)
    slope = np.nan_to_num(slopes(tail.tau, np.maximum(gaps, 1e-300)), nan=-math.inf)
    active = (gaps[-1] <= 1e-12) | (slope < -0.5)
    return active, np.where(gaps[-1] <= 1e-12, math.inf, np.abs(slope + 0.5))
