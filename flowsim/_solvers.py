"""Solver choice: explicit Runge–Kutta, or implicit (ESDIRK) with a full Newton root finder."""

import diffrax
import lineax as lx
import optimistix as optx

EXPLICIT_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
}
IMPLICIT_SOLVERS = {
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
    "kencarp4": diffrax.KenCarp4,
    "kencarp5": diffrax.KenCarp5,
}
IMEX_SOLVERS = ("kencarp4", "kencarp5")
SOLVER_NAMES = ("auto", *EXPLICIT_SOLVERS, *IMPLICIT_SOLVERS)
LINEAR_SOLVER_NAMES = ("auto", "dense", "krylov")
# Above this many parameters the Newton systems are solved matrix-free (GMRES on
# Hessian-vector products) instead of materialising the p×p Jacobian.
DENSE_MAX_PARAMS = 512


def resolve_solver_name(solver: str, log_time: bool) -> str:
    """``"auto"``: Kvaerno5 in log time (the log-time flow is stiff: the loss weights are a
    fast, self-correcting variable, science.md §1), Tsit5 in linear time."""
    if solver == "auto":
        return "kvaerno5" if log_time else "tsit5"
    return solver


def resolve_linear_solver(linear_solver: str, num_params: int) -> str:
    if linear_solver == "auto":
        return "dense" if num_params <= DENSE_MAX_PARAMS else "krylov"
    return linear_solver


def make_solver(name: str, rtol: float, atol: float, linear_solver: str):
    if name in EXPLICIT_SOLVERS:
        return EXPLICIT_SOLVERS[name]()
    if linear_solver == "dense":
        linear = lx.AutoLinearSolver(well_posed=None)
    else:
        # Inexact Newton: GMRES to the same tolerances as Newton itself; each iteration is
        # one Jacobian–vector product of the field, i.e. a Hessian–vector product of L.
        linear = lx.GMRES(rtol=rtol, atol=atol, restart=40, stagnation_iters=40)
    # Full Newton (the Jacobian re-evaluated at every iterate): the default VeryChord needs
    # ~20× more steps on log-time classification (science.md §1).
    root_finder = optx.Newton(rtol=rtol, atol=atol, linear_solver=linear)
    return IMPLICIT_SOLVERS[name](root_finder=root_finder)


def make_terms(name: str, vector_field):
    term = diffrax.ODETerm(vector_field)
    if name in IMEX_SOLVERS:
        # KenCarp is an IMEX pair; the whole field is treated implicitly (its ESDIRK half),
        # with a zero explicit part, since gradient flow has no natural non-stiff split.
        zero = diffrax.ODETerm(lambda t, y, args: 0.0 * y)
        return diffrax.MultiTerm(zero, term)
    return term
