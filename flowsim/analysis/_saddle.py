"""Step 6 of `limit_direction`: a saddle the trajectory is passing on its way to the limit (private).

For q = 1, a trajectory whose share of some support coordinates J of the unique minimiser is far below their
share there may be passing a saddle: the KKT point with ρ_J held at zero. There v_j = Σ_i μ_i a_ij has
|v_j| > 1 on J, so ρ_J grows relative to the support like (log t)^{|v_j| − 1}; the limit cannot be the saddle,
and the unique minimiser is the only candidate left. The rate is a power of log t: passing such a saddle can
take until log t ~ 10^45, far beyond any simulation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Float, Int, Shaped

from ._certificate import Approach, approach
from ._geometry import MarginProblem
from ._search import Candidate, evaluate, repair
from ._structure import Reading, Structure, Tail


class SaddleEscape(NamedTuple):
    """A saddle the trajectory is passing on its way to the limit (q = 1; see `limit_direction`, step 6).

    **Fields:**

    - `direction`: the saddle ρ_s/‖ρ_s‖₂, the max-margin KKT point with the escaping coordinates held at zero.
    - `rho`: the saddle scaled to smallest margin 1.
    - `multipliers`: its μ, shape (n,).
    - `coordinates`: the escaping coordinates J (with their conjugate partners).
    - `dual`: |v_j| = |Σ_i μ_i a_ij| on J (one per conjugate pair), all > 1: the saddle is not a minimiser.
    - `predicted_exponent`: |v_j| − 1, the power of log t at which ρ_j/max|ρ| grows near the saddle.
    - `measured_exponent`: the trajectory's log-log slope of |ρ_j|/max|ρ| over the tail.
    - `distance`: 1 − cos of each saved iterate to the saddle, shape (n_save,).
    - `kkt_residual`: the saddle's KKT residual (of the problem with ρ_J = 0).
    - `log10_escape_log_t`: log10 of the log t at which ρ_J would reach its share in the limit at this rate.
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


class SaddleSearch(NamedTuple):
    """What `find_saddle` needs besides the problem: the limit found, the reading and tail of the trajectory,
    its coordinates over the saves, its approach to the limit, and the tolerances."""

    limit: Candidate
    reading: Reading
    tail: Tail
    coords: np.ndarray
    limit_approach: Approach
    kkt_tol: float
    max_repairs: int
    escape_rtol: float


def find_saddle(problem: MarginProblem, search: SaddleSearch) -> SaddleEscape | None:
    """The saddle the trajectory is passing: up to three lagging coordinates J (below half their share in the
    limit), the KKT point with ρ_J = 0, accepted when the tail approaches it (closer than to the limit) and the
    escape rates measured on J agree with |v_j| − 1 within `escape_rtol` (relative)."""
    rho = search.limit.point.rho
    share_limit = np.abs(rho) / np.max(np.abs(rho))
    share_last = search.reading.last_share
    lagging = sorted((share_last[j] / share_limit[j], j) for j in np.flatnonzero(search.limit.structure.support)
                     if problem.partner[j] >= j and share_last[j] < 0.5 * share_limit[j])
    for count in range(1, min(3, len(lagging)) + 1):
        escaping = np.array([j for _, j in lagging[:count]], dtype=int)
        J = np.zeros(problem.m, dtype=bool)
        J[escaping] = True
        J = problem.pairs(J)
        saddle = _saddle_at(problem.freeze(J), search, J, escaping, share_limit, share_last)
        if saddle is not None:
            return saddle
    return None


def _saddle_at(problem: MarginProblem, search: SaddleSearch, J, escaping, share_limit, share_last):
    """The `SaddleEscape` with ρ_J = 0 (`problem` has J frozen), or None when the checks fail."""
    read = search.reading.structure
    structure = Structure(search.limit.structure.support & ~J, read.signs, read.active)
    guess = search.tail.unit[-1]
    found = repair(problem, evaluate(problem, structure, guess), guess, search.kkt_tol, search.max_repairs)
    if not (found.residual <= search.kkt_tol and np.any(found.point.rho != 0)):
        return None
    direction = found.point.rho / np.linalg.norm(found.point.rho)
    to_saddle = approach(search.coords, direction, search.tail)
    d_tail, d_limit = to_saddle.distance[search.tail.index], search.limit_approach.distance[search.tail.index]
    toward = bool(np.all(np.isfinite(d_tail))) and d_tail[-1] < d_tail[0] and to_saddle.slope < 0 \
        and d_tail[-1] < d_limit[-1]
    dual = np.abs(problem.dual(found.point.mu))[escaping]
    predicted, measured = dual - 1.0, search.reading.coord_slope[escaping]
    agree = bool(np.all(predicted > 0) and np.all(np.abs(measured - predicted) <= search.escape_rtol * predicted))
    if not (toward and agree):
        return None
    with np.errstate(divide="ignore"):
        reach = np.log10(search.tail.tau[-1]) + np.log10(share_limit[escaping] / share_last[escaping]) / predicted
    return SaddleEscape(direction=direction, rho=found.point.rho, multipliers=found.point.mu,
                        coordinates=np.flatnonzero(J), dual=dual, predicted_exponent=predicted,
                        measured_exponent=measured, distance=to_saddle.distance, kkt_residual=float(found.residual),
                        log10_escape_log_t=float(np.max(reach)))
