"""Step 3 of `limit_direction`: when the structure read off the trajectory gives no KKT point, the
structures near it (private).

Three moves, in order, each over frozen `Structure` values: the structures within two edits of the one read
(the most borderline coordinates and samples first); greedy active-set repairs from the best of those (add the
most violated sample or off-support coordinate, drop a negative multiplier or a flipped sign); and, for the
convex problems (q = 1 or 2), the structure of a convex solver's minimiser.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._geometry import MarginProblem, phase
from ._kkt import INFEASIBLE, KKTParts, kkt_parts
from ._margins import max_margin_solution
from ._restricted import KKTPoint, solve_structure
from ._structure import Reading, Structure


class Candidate(NamedTuple):
    """A structure, the KKT point solved on it, and that point's KKT residuals."""

    structure: Structure
    point: KKTPoint
    check: KKTParts

    @property
    def residual(self) -> float:
        return self.check.residual


def evaluate(problem: MarginProblem, structure: Structure, guess: np.ndarray) -> Candidate:
    """Solve the KKT system on `structure` and check the point against every KKT condition."""
    point = solve_structure(problem, structure, guess)
    if point.ok and np.all(np.isfinite(point.rho)) and np.min(problem.margins(point.rho)) > 0:
        return Candidate(structure, point, kkt_parts(problem, point.rho, point.mu, structure.support,
                                                     structure.signs))
    return Candidate(structure, point, INFEASIBLE)


def two_edit_search(problem: MarginProblem, reading: Reading, guess, kkt_tol: float, width: int) -> Candidate:
    """The read structure, or the best of the structures within two edits of it (the `width` most borderline
    coordinates and samples each, ranked by how close their trend is to the threshold)."""
    read = reading.structure
    best = evaluate(problem, read, guess)
    if best.residual <= kkt_tol:
        return best
    coord_edits = sorted((reading.coord_edit[j], "c", j) for j in np.flatnonzero(np.isfinite(reading.coord_edit)))
    sample_edits = sorted((reading.sample_edit[i], "s", i) for i in np.flatnonzero(np.isfinite(reading.sample_edit)))
    edits = [(rank, kind, index) for part in (coord_edits[:width], sample_edits[:width])
             for rank, (_, kind, index) in enumerate(part)]
    trials = [(e[0], (e,)) for e in edits]
    trials += [(e[0] + f[0], (e, f)) for k, e in enumerate(edits) for f in edits[k + 1 :]]
    trials.sort(key=lambda t: t[0])
    for _, combo in trials:
        support, active = read.support.copy(), read.active.copy()
        for _, kind, index in combo:
            if kind == "c":
                support[[index, problem.partner[index]]] = not support[index]
            else:
                active[index] = not active[index]
        candidate = evaluate(problem, Structure(support, read.signs, active), guess)
        if candidate.residual < best.residual:
            best = candidate
        if candidate.residual <= kkt_tol:
            break
    return best


def _repaired(problem: MarginProblem, candidate: Candidate, kkt_tol: float) -> Structure | None:
    """The structure one greedy repair away from `candidate`, or None when no repair applies."""
    check, structure = candidate.check, candidate.structure
    support, active, signs = structure.support.copy(), structure.active.copy(), structure.signs.copy()
    if check.worst_sample >= 0 and check.primal > kkt_tol:
        active[check.worst_sample] = True
    elif check.worst_mu >= 0 and check.mu_negative > kkt_tol:
        active[check.worst_mu] = False
    elif check.wrong_sign >= 0:
        support[[check.wrong_sign, problem.partner[check.wrong_sign]]] = False
    elif check.worst_coord >= 0 and check.dual > kkt_tol:
        j, jp = check.worst_coord, problem.partner[check.worst_coord]
        support[[j, jp]] = True
        v = problem.dual(candidate.point.mu)
        signs[[j, jp]] = phase(v[[j, jp]]) if problem.is_complex else np.sign(np.real(v[j]))
    else:
        return None
    return Structure(support, signs, active)


def repair(problem: MarginProblem, start: Candidate, guess, kkt_tol: float, max_repairs: int) -> Candidate:
    """Greedy active-set repairs from `start` (at most `max_repairs`); the best candidate met."""
    best = current = start
    visited = set()
    for _ in range(max_repairs):
        if current.residual <= kkt_tol:
            break
        key = (current.structure.support.tobytes(), current.structure.active.tobytes())
        if key in visited:
            break
        visited.add(key)
        structure = _repaired(problem, current, kkt_tol)
        if structure is None:
            break
        current = evaluate(problem, structure, guess)
        if not current.residual < math.inf:
            break
        if current.residual < best.residual:
            best = current
    return best


def convex_structure(problem: MarginProblem, guess, kkt_tol: float, max_repairs: int) -> Candidate | None:
    """The structure of the convex solver's minimiser (`max_margin_solution`, q = 1 or 2), repaired; None when
    the solver fails."""
    try:
        convex = max_margin_solution(problem.X, problem.y, p=problem.q, transform=problem.transform,
                                     sign=problem.sign)
    except (ValueError, RuntimeError):
        return None
    rho = convex.rho
    signs = phase(rho) if problem.is_complex else np.sign(np.real(rho))
    structure = Structure(np.abs(rho) > 1e-9 * np.max(np.abs(rho)), signs, convex.active)
    return repair(problem, evaluate(problem, structure, guess), guess, kkt_tol, max_repairs)
