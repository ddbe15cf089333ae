"""Limit directions of gradient-flow trajectories, estimated from the late trajectory and certified by KKT.

**Theory.** For separable data and an exponential-tailed loss (logistic, exponential), gradient flow on an
L-layer orthogonally decomposable network f(x) = ⟨S x, ρ⟩ (`Diagonal`, full-length `Convolutional`, `Linear`)
converges in direction to a KKT point of

    min_ρ Σ_j |ρ_j|^q   s.t.   y_i Re⟨S x_i, ρ⟩ ≥ 1,   q = 2/L

(Yun, Krishnan & Mobahi, ICLR 2021; Lyu & Li 2020 for homogeneous models; Gunasekar et al. 2018), and a fully
connected linear network's β converges to the ℓ2 max-margin (SVM) direction at any depth (q = 2, S = I;
Ji & Telgarsky 2020). Each network states its own (q, S, ρ) through `margin_geometry()`. The convergence is
only logarithmic in t (1 − cos ≈ 1e-3 at log t = 10^4), so the last save is a poor estimate of the limit.

**Algorithm** (one module per step), over the tail of the saves, with τ = log t and u = ρ/‖ρ‖₂:

1. `_structure`: the support (coordinates that keep their share of ‖u‖: log-log slope of |u_j|/max|u| against
   τ above −`decay_slope`, above the noise floor 1e-9·max|u|, not frozen, conjugate pairs together), the
   signs or phases at the last save (or the locked signs), and the active set (relative margin gaps decaying
   like 1/τ: log-log slope below −1/2);
2. `_restricted`: the KKT system on that structure, linear for real q = 1 and q = 2, Levenberg–Marquardt
   otherwise (on log|ρ_j|, phases and μ; ρ kept Hermitian-symmetric);
3. `_search`: if the KKT checks fail, the structures within two edits of the one read (the `search_width`
   most borderline coordinates and samples), then greedy active-set repairs (at most `max_repairs`), then,
   for the convex problems (q = 1 or 2, nothing frozen), the structure of the convex solver's minimiser
   (`max_margin_solution`; said in `message`);
4. `_kkt`: the one KKT residual (stationarity, dual feasibility off the support, μ ≥ 0, primal feasibility of
   *every* sample, complementarity, sign constraints, frozen coordinates) ≤ `kkt_tol`, agreed by
   `kkt_certificate` with its own multipliers (ODNs);
5. `_certificate`: certified when, in addition, the last save separates the data, the trajectory's distance
   1 − cos to the estimate decreases over the tail, and either the structure was read off the trajectory
   unchanged (`repairs` = 0) or the problem is convex with a provably unique minimiser (q = 2; q = 1 real at
   a non-degenerate, strictly complementary vertex; complex q = 1 strictly complementary with an injective
   margin map on the support), which by the theorem is then the limit;
6. `_saddle` (q = 1, unique minimiser): when some support coordinates J are below half their share in the
   estimate at the last save, the KKT point with ρ_J = 0 is solved; if the trajectory approaches it, its duals
   |v_j| exceed 1 on J and ρ_J/max|ρ| grows over the tail at the predicted rate (log t)^(|v_j| − 1) (within
   `escape_rtol`), the flow is passing that saddle, which cannot be the limit; that stands in for the
   "approaching" check of step 5 (the escape can take until log t ~ 10^45).

**Sign constraints** (`sign`): a balanced same-sign initialisation keeps the sign of ρ_j forever, so its
limit is a KKT point of the *sign-constrained* problem (which matters for q = 1). `"auto"` (default)
detects this from the conservation laws |a_lj|² − |a_kj|² = const at the first save: coordinates with real,
equal-magnitude layers are sign-locked, coordinates with two zero layers frozen at 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Bool, Float, Int, Shaped

from .._checks import as_int, as_labels, as_positive_float, as_real_matrix, as_real_scalar, as_transform
from .._trajectory import Trajectory
from ..networks import AbstractLinearTensorNetwork
from ._certificate import Approach, approach, cross_check, unique
from ._geometry import MarginProblem, margin_problem, phase
from ._saddle import SaddleEscape, SaddleSearch, find_saddle
from ._search import Candidate, convex_structure, repair, two_edit_search
from ._structure import Reading, Tail, read_structure, read_tail, sign_constraint, tail_indices

__all__ = ["LimitDirection", "SaddleEscape", "limit_direction"]


class LimitDirection(NamedTuple):
    """The estimated limit direction of a trajectory and its certificate (see `limit_direction`).

    **Fields:**

    - `direction`: the limit ρ̂/‖ρ̂‖₂ in the network's coordinates (its `margin_geometry().rho`: ρ for
      orthogonally decomposable networks, complex for `Convolutional`; β for `FullyConnected`), shape (m,).
    - `beta`: the same predictor in input space, Re(Sᴴ ρ̂) / ‖·‖₂, shape (d,).
    - `rho`: the KKT point itself, scaled so that the smallest margin is exactly 1, shape (m,).
    - `margin`: its normalised ℓ_q margin min_i y_i⟨S x_i, ρ̂⟩ / ‖ρ̂‖_q = 1/‖ρ̂‖_q.
    - `q`: the exponent of the max-margin problem, 2/L for ODNs, 2 for fully connected networks.
    - `support`: indices j of the non-zero coordinates of ρ̂.
    - `signs`: ρ̂_j/|ρ̂_j| on the support (±1, or unit-modulus phases for complex ρ), 0 elsewhere, shape (m,).
    - `active_set`: indices i of the support vectors (margin exactly 1).
    - `multipliers`: μ, shape (n,), μ_i ≥ 0 on the active set and 0 elsewhere.
    - `kkt_residual`: the largest violation of the KKT conditions (relative; see `kkt_certificate`).
    - `last_iterate_error`: 1 − cos between the tail's last save and `direction`.
    - `log_t`: log t of every save, shape (n_save,).
    - `distance`: 1 − cos of each saved iterate to `direction`, shape (n_save,) (nan where it is 0).
    - `distance_slope`: d log(distance) / d log(log t) over the tail (negative: the trajectory approaches).
    - `sign_constraint`: +1 (ρ_j ≥ 0), −1 (ρ_j ≤ 0), 0 (free), shape (m,), or None.
    - `frozen`: boolean mask (m,) of coordinates the dynamics keep at exactly zero.
    - `repairs`: corrections to the structure read off the trajectory (0 when it identified it).
    - `certified`: True when every check passed.
    - `message`: what was checked, and in words what failed.
    - `saddle`: a `SaddleEscape` when the certificate rests on a saddle escape (step 6), else None.
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
    saddle: SaddleEscape | None = None


class _Options(NamedTuple):
    kkt_tol: float
    max_repairs: int
    search_width: int
    decay_slope: float
    escape_rtol: float


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

    The structure of the limit (support, signs, active set) is read off the late trajectory, the KKT system of
    the max-margin problem min Σ_j |ρ_j|^q s.t. y_i Re⟨S x_i, ρ⟩ ≥ 1 is solved on it (exact up to rounding),
    and the result is certified; the six steps and the theory are in this module's docstring.

    **Arguments:**

    - `traj`: one run from `fs.simulate` or `fs.gradient_descent` with `traj.ok`, of a linear tensor network
      (`fs.networks`; the network gives q, S and ρ through `margin_geometry()`).
    - `X` (n, d), `y` (n,) of ±1: the training data.
    - `q` or `depth` (q = 2/depth): override the exponent (needed for networks without a built-in theory,
      e.g. short convolutions); q in (0, 1] or q = 2.
    - `transform`: override S, shape (m, d).
    - `sign`: `"auto"` (from the conservation laws), None (free), `"nonnegative"`, `"nonpositive"` or
      an array of +1/−1/0.
    - `tail`: a fraction in (0, 1] of the finite saves (at least 3 saves) or a (lo, hi) window of log t. The
      default log-time save grid is uniform in asinh(log t) (log-spaced for long horizons), so 0.5 is the later
      half of it in that measure: log t from about 60 to 10^5 for `log_t1=1e5`. On a grid of your own, pass
      the window you mean.
    - `kkt_tol`: the KKT residual a certified point must reach.
    - `max_repairs`: greedy repairs (default 2(n + m)); `search_width`: borderline coordinates and samples
      each in the two-edit search; `decay_slope`: the support threshold; `escape_rtol`: the relative
      tolerance on a saddle's escape rate.

    **Returns:** a `LimitDirection`; `certified` and `message` say whether, and why, it can be trusted.
    """
    problem, coords, kind = _trajectory_problem(traj, X, y, q, depth, transform, sign)
    options = _options(problem, kkt_tol, max_repairs, search_width, decay_slope, escape_rtol)
    log_t = np.asarray(traj.log_t, dtype=np.float64)
    the_tail = read_tail(problem, coords, log_t, tail_indices(tail, log_t))
    reading = read_structure(problem, the_tail, options.decay_slope)
    best, notes = _find_kkt_point(problem, reading, the_tail, options)
    return _certify(problem, reading, the_tail, coords, log_t, best, notes, kind, options)


def _trajectory_problem(traj, X, y, q, depth, transform, sign) -> tuple[MarginProblem, np.ndarray, str]:
    """The checked `MarginProblem` of the trajectory's network, its coordinates over the saves, and its name."""
    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj must be a flowsim.Trajectory (from fs.simulate or fs.gradient_descent); got "
                        f"{type(traj).__name__}")
    if np.ndim(traj.status) != 0:
        raise ValueError(f"traj is a batch of {np.shape(traj.status)} trajectories; pass one "
                         "(e.g. jax.tree.map(lambda x: x[i], traj))")
    if not bool(traj.ok):
        raise ValueError(f"traj did not reach its horizon (traj.ok is False): {traj.message}")
    model, kind = traj.final, type(traj.final).__name__
    if not isinstance(model, AbstractLinearTensorNetwork):
        raise TypeError(f"limit_direction needs a linear tensor network from fs.networks (a model with beta() and "
                        f"margin_geometry(): Diagonal, FullyConnected, Convolutional, Linear, ...); got {kind}")
    geometry = model.margin_geometry()
    q = _exponent(q, depth, geometry.q, kind)
    X = as_real_matrix("X", X)
    n, d = X.shape
    if d != model.input_dim:
        raise ValueError(f"X has {d} columns but the network's input dimension is {model.input_dim}")
    y = as_labels("y", y, n)
    coords = np.asarray(eqx.filter_vmap(lambda net: net.margin_geometry().rho)(traj.params))
    S = np.asarray(geometry.transform) if transform is None else as_transform("transform", transform, d)
    if S.shape != (coords.shape[-1], d):
        raise ValueError(f"transform must have shape ({coords.shape[-1]}, {d}) (coordinates × input dimension); "
                         f"got {S.shape}")
    first = jax.tree_util.tree_map(lambda leaf: leaf[0] if eqx.is_array(leaf) else leaf, traj.params)
    a0 = first.margin_geometry().layer_coordinates
    sign_c, frozen = sign_constraint(sign, None if a0 is None else np.asarray(a0), S)
    problem = margin_problem(X, y, q, S, sign_c, frozen)
    return problem, (coords if problem.is_complex else np.real(coords)), kind


def _exponent(q, depth, default, kind: str) -> float:
    """q from the arguments, or the network's own."""
    if depth is not None:
        if q is not None:
            raise ValueError(f"give q or depth, not both; got q={q!r}, depth={depth!r}")
        return 2.0 / as_int("depth", depth, 1)
    if q is None:
        if default is None:
            raise ValueError(f"limit_direction: no max-margin theory is built in for {kind} (its margin_geometry() "
                             "has q = None); pass q explicitly (e.g. q=2.0 for the ℓ2 max-margin direction of β)")
        return float(default)
    q = float(as_real_scalar("q", q))
    if not (0.0 < q <= 2.0) or (1.0 < q < 2.0):
        raise ValueError(f"q must be 2/L for an integer depth L >= 1 (q in (0, 1] or q = 2); got q = {q!r}")
    return q


def _options(problem: MarginProblem, kkt_tol, max_repairs, search_width, decay_slope, escape_rtol) -> _Options:
    max_repairs = 2 * (problem.n + problem.m) if max_repairs is None else max_repairs
    return _Options(kkt_tol=as_positive_float("kkt_tol", kkt_tol), max_repairs=as_int("max_repairs", max_repairs, 0),
                    search_width=as_int("search_width", search_width, 0),
                    decay_slope=as_positive_float("decay_slope", decay_slope),
                    escape_rtol=as_positive_float("escape_rtol", escape_rtol))


def _find_kkt_point(problem: MarginProblem, reading: Reading, tail: Tail, options: _Options):
    """(the best candidate, notes): the read structure, its neighbours, repairs, and the convex fallback."""
    guess = tail.unit[-1]
    best = two_edit_search(problem, reading, guess, options.kkt_tol, options.search_width)
    best = repair(problem, best, guess, options.kkt_tol, options.max_repairs)
    notes = []
    if best.residual > options.kkt_tol and problem.q in (1.0, 2.0) and tail.separated and not np.any(problem.frozen):
        # The trajectory's structure led to no KKT point (typically: it is still far from the limit, e.g. at a
        # saddle). The problem is convex: take the structure of its minimiser from a convex solver instead; the
        # certificate then rests on uniqueness and on the trajectory's behaviour (steps 5 and 6).
        convex = convex_structure(problem, guess, options.kkt_tol, options.max_repairs)
        if convex is not None and convex.residual < best.residual:
            best = convex
            notes.append("the structure was taken from a convex solver (fs.analysis.max_margin), as none near the "
                         "trajectory's gave a KKT point")
    return best, notes


class _Verdict(NamedTuple):
    """Everything the message reports."""

    ok_kkt: bool
    kkt_note: str
    approach: Approach
    unique: bool
    why_unique: str
    saddle: SaddleEscape | None
    repairs: int
    fallback: bool
    certified: bool


def _certify(problem, reading, tail, coords, log_t, best: Candidate, notes, kind, options) -> LimitDirection:
    """Steps 4–6: the KKT verdict, the certificate, the saddle escape, and the `LimitDirection`."""
    read, final = reading.structure, best.structure
    repairs = int(np.sum(final.support ^ read.support) + np.sum(final.active ^ read.active))
    rho, mu = best.point.rho, best.point.mu
    fallback = not (np.all(np.isfinite(rho)) and np.any(rho != 0))
    if fallback:  # every restricted solve failed: report the last iterate (scaled to margin 1 when separating)
        rho, mu = tail.unit[-1].copy(), np.zeros(problem.n)
        if np.min(problem.margins(rho)) > 0:
            rho = rho / np.min(problem.margins(rho))
    ok_kkt, kkt_note = best.residual <= options.kkt_tol, ""
    if ok_kkt:
        kkt_note = cross_check(problem, best, options.kkt_tol)
        ok_kkt = not kkt_note
    direction = rho / np.linalg.norm(rho) if np.any(rho != 0) else rho
    to_limit = approach(coords, direction, tail)
    is_unique, why = unique(problem, best) if ok_kkt else (False, "")
    saddle = None
    if ok_kkt and is_unique and tail.separated and problem.q == 1.0 and not fallback:
        saddle = find_saddle(problem, SaddleSearch(best, reading, tail, coords, to_limit, options.kkt_tol,
                                                   options.max_repairs, options.escape_rtol))
    certified = bool(ok_kkt and (to_limit.approaching or saddle is not None) and (repairs == 0 or is_unique)
                     and tail.separated)
    verdict = _Verdict(ok_kkt, kkt_note, to_limit, is_unique, why, saddle, repairs, fallback, certified)
    beta = np.real(np.conj(problem.transform).T @ direction)
    beta = beta / np.linalg.norm(beta) if np.any(beta != 0) else beta
    S_idx = np.flatnonzero(final.support)
    signs = np.zeros(problem.m, dtype=rho.dtype)
    signs[S_idx] = phase(rho[S_idx])
    norm_q = float(np.sum(np.abs(rho) ** problem.q) ** (1.0 / problem.q)) if np.any(rho != 0) else math.nan
    return LimitDirection(
        direction=direction, beta=beta, rho=rho,
        margin=float(np.min(problem.margins(rho)) / norm_q) if norm_q > 0 else math.nan, q=problem.q,
        support=S_idx, signs=signs, active_set=np.flatnonzero(final.active), multipliers=mu,
        kkt_residual=float(best.residual), last_iterate_error=float(to_limit.distance[tail.index[-1]]), log_t=log_t,
        distance=to_limit.distance, distance_slope=to_limit.slope, sign_constraint=problem.sign,
        frozen=problem.frozen, repairs=repairs, certified=certified,
        message=_message(problem, reading, tail, best, verdict, notes, kind, options.kkt_tol), saddle=saddle,
    )


def _message(problem, reading, tail, best: Candidate, verdict: _Verdict, notes, kind, kkt_tol) -> str:
    """What was checked, and in words what failed."""
    read, final, check = reading.structure, best.structure, best.check
    n_read = f"support {int(read.support.sum())}, active set {int(read.active.sum())}"
    msgs = []
    if best.residual > kkt_tol:
        names = ("stationarity", "dual", "mu_negative", "primal", "complementarity", "signs", "frozen")
        parts = {k: v for k, v in check._asdict().items() if k in names}
        worst = max(parts, key=parts.get)
        msgs.append(f"no KKT point found on or near the structure read from the trajectory ({n_read}; two-edit search "
                    f"and active-set repairs tried): best residual {best.residual:.2e} > kkt_tol = {kkt_tol:.1e}, "
                    f"worst part {worst} = {parts[worst]:.2e}")
    if verdict.kkt_note:
        msgs.append(verdict.kkt_note)
    d_tail, saddle = verdict.approach.distance[tail.index], verdict.saddle
    if not verdict.approach.approaching:
        msgs.append(f"the trajectory is not approaching the estimate over the tail (1 − cos from {d_tail[0]:.2e} to "
                    f"{d_tail[-1]:.2e}, log-log slope {verdict.approach.slope:.2f})"
                    + ("" if saddle is None else "; it is passing a saddle instead (below)"))
    repair_note = (f"the structure read from the trajectory ({n_read}) needed {verdict.repairs} correction(s) to "
                   f"reach the KKT point (support {int(final.support.sum())}, active set {int(final.active.sum())})")
    if verdict.ok_kkt and not (verdict.repairs == 0 or verdict.unique):
        msgs.append(f"{repair_note} and that point is not provably the unique one ({verdict.why_unique}); integrate "
                    "further (larger log_t1) so the trajectory reveals the structure")
    if verdict.fallback:
        msgs.append("every restricted KKT solve failed, so `direction` is just the last iterate")
    if not tail.separated:
        msgs.append(f"the last save does not separate the data (smallest margin {np.min(tail.margins[-1]):.3g}); "
                    "the trajectory is not in the max-margin regime")
    if saddle is not None:
        msgs.append(_saddle_message(saddle, tail))
    if verdict.certified and verdict.repairs:
        msgs.append(f"{repair_note}; it is the unique minimiser of the convex problem ({verdict.why_unique}), "
                    "hence the limit")
    msgs.extend(notes)
    sign_desc = "free" if problem.sign is None else f"{int(np.sum(problem.sign != 0))} sign-locked"
    head = (f"{kind}, q = {problem.q:g}, tail log t in [{tail.tau[0]:.4g}, {tail.tau[-1]:.4g}] ({tail.index.size} "
            f"saves), {sign_desc} coordinates; support {int(final.support.sum())}, active set "
            f"{int(final.active.sum())}, KKT residual {best.residual:.1e}, 1 − cos(last iterate, estimate) = "
            f"{d_tail[-1]:.2e}")
    if verdict.certified:
        return head + ". Certified" + (f" ({'; '.join(msgs)})" if msgs else "") + "."
    return head + ". NOT certified: " + "; ".join(msgs) + "."


def _saddle_message(saddle: SaddleEscape, tail: Tail) -> str:
    return (
        f"the trajectory approaches a saddle, the KKT point with ρ_j = 0 for j in {saddle.coordinates.tolist()} "
        f"(residual {saddle.kkt_residual:.1e}; 1 − cos from {saddle.distance[tail.index[0]]:.2e} to "
        f"{saddle.distance[tail.index[-1]]:.2e}), where |v_j| = {np.array2string(saddle.dual, precision=4)} > 1, so "
        f"those coordinates grow relative to the support like (log t)^(|v_j| − 1): measured log-log slope "
        f"{np.array2string(saddle.measured_exponent, precision=4)} vs predicted "
        f"{np.array2string(saddle.predicted_exponent, precision=4)}; the limit is not the saddle (at this rate they "
        f"reach their share of the estimate near log t ≈ 10^{saddle.log10_escape_log_t:.0f})"
    )
