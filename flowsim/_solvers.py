"""Solver choice: explicit Runge–Kutta, or implicit (ESDIRK) with a Newton root finder of our own.

The root finders here subclass Optimistix's public `AbstractRootFinder` (not its `Newton` or
`Bisection`), so flowsim relies on no private field or helper of Optimistix.
"""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, PyTree, Scalar

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
NEWTON_TOLERANCE_FACTOR = 100.0
# Inexact Newton (Dembo, Eisenstat & Steihaug 1982): each Newton system is solved by GMRES only
# to this relative residual. Newton still converges (linearly, by this factor per iteration),
# and the Krylov work per step drops several-fold against solving to the step tolerance.
KRYLOV_FORCING = 1e-3
# Newton skips its linear solve, after at least one Newton update of the stage, when the change
# that update could make to the state, h·‖F‖, is below this fraction of the step controller's
# tolerance atol + rtol·|y_i|. The test must include h: ‖F‖ alone against a slope tolerance lets
# unsolved predictors through at large h, and the controller then rejects most steps
# (benchmarks/engine.py measures the effect; see StageNewton.step).
SKIP_NEWTON_BELOW = 0.1
KRYLOV_RESTART = 30
KRYLOV_MAX_ITERATIONS = 300
# KenCarp5's embedded weights (Kennedy & Carpenter 2003, ARK5(4)8L[2]SA) are nearly fifth order:
# on y' = λy its error estimate is O(h⁶), not O(h⁵), and about 1/9 of the true local error of
# the propagated solution (ratio 9.05 at hλ = −0.03, 8.95 at −0.3; tests/test_solvers.py
# recomputes it from the tableau). Unscaled, the controller accepts steps whose error is ~9× the
# tolerance and the global error grows as rtol^(5/6): 15× rtol at rtol = 1e-10 on a stiff
# quadratic. The estimate is scaled by this ratio so it bounds the error it stands for.
ERROR_ESTIMATE_SCALE = {"kencarp5": 9.0}


class _NewtonState(eqx.Module):
    residual: Array
    diff: Array
    step: Array
    result: optx.RESULTS


class StageNewton(optx.AbstractRootFinder):
    """Newton's method for the ESDIRK stage equations, with a relative residual test.

    Diffrax's ESDIRK stages solve F(f_i) = f_i − v(t_i, y_i + h a_ii f_i) = 0 for the stage
    slope f_i. Each iteration linearises F at the current iterate (`jax.linearize`: the exact
    Jacobian, i.e. Hessian–vector products of L) and solves the Newton system densely or with
    GMRES to a relative residual `forcing` (inexact Newton). The iteration stops when both the
    update and the residual are below atol + rtol·|y|: an absolute residual test (Optimistix's
    Cauchy test) never passes on long classification horizons, where slopes and parameters grow
    and the round-off in F grows with them (seen on linear logistic regression at log t ≈ 2·10^5).
    After the first update of a stage, the linear solve is skipped when h‖F‖ is below
    `skip_below` times the step tolerance `step_atol + step_rtol·|y_i|` (state units).

    **Arguments:** `rtol`, `atol`: Newton's test (on the stage slope); `step_rtol`,
    `step_atol`: the step-size controller's tolerances (on the state), for the skip;
    `skip_below`: the skip's fraction of them (0: never skip);
    `krylov`: GMRES on Jacobian–vector products instead of a dense solve; `forcing`: GMRES's
    relative residual.
    """

    rtol: Any
    atol: Any
    step_rtol: Any
    step_atol: Any
    skip_below: float = eqx.field(static=True, default=SKIP_NEWTON_BELOW)
    krylov: bool = eqx.field(static=True, default=False)
    forcing: float = eqx.field(static=True, default=KRYLOV_FORCING)
    norm: Callable[[PyTree], Scalar] = optx.max_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, options, aux_struct, tags
        return _NewtonState(
            residual=jnp.full(f_struct.shape, jnp.inf, f_struct.dtype),
            diff=jnp.full_like(y, jnp.inf),
            step=jnp.asarray(0),
            result=optx.RESULTS.successful,
        )

    def step(self, fn, y, args, options, state, tags):
        del options
        residual, aux = fn(y, args)
        # The update A⁻¹F, A = I + h a_ii ∇²L, is no larger than F where ∇²L is positive
        # semi-definite, and it moves the stage state by h·a_ii·A⁻¹F and the step's solution by
        # h·b_i·A⁻¹F: so once h‖F‖ is far below the step tolerance the update is below what the
        # error estimate resolves and the linear solve (the dense path: p Jacobian–vector
        # products and an LU; the Krylov path: a GMRES solve) is skipped. This saves the last
        # iteration of most stages, which only confirmed convergence. Never before the first
        # update: a stage left at its predictor (an extrapolation of the step's earlier stages)
        # carries no information about the field there, and a step whose stages are all
        # predictors is an explicit Euler step whose embedded error estimate is ~0. Such a step
        # is accepted, the controller grows h tenfold, and rejections follow.
        h_residual, stage_state = _in_state_units(args, y, residual)
        small = self.norm(h_residual / (self.step_atol + self.step_rtol * jnp.abs(stage_state))) < self.skip_below
        # ... and only where Newton's own test passes too: at a tiny h, h‖F‖ is small while F is not, and a
        # skip that cannot terminate repeats until the iteration budget fails the step (a stiff exponential-
        # loss flow from α = 10³ then stalled at 200,000 rejected steps).
        converged = self.norm(residual / (self.atol + self.rtol * jnp.abs(y))) < 1
        skip = small & converged & (state.step > 0)
        diff, linear_ok = jax.lax.cond(skip, lambda: (jnp.zeros_like(y), jnp.asarray(True)),
                                       lambda: self._newton_update(fn, y, args, tags))
        result = optx.RESULTS.where(linear_ok, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence)
        new_state = _NewtonState(residual=residual, diff=diff, step=state.step + 1, result=result)
        return y - diff, new_state, aux

    def _newton_update(self, fn, y, args, tags):
        residual, linear_fn = jax.linearize(lambda z: fn(z, args)[0], y)
        if self.krylov:
            # A Krylov solve that stops short still gives an improving direction; Newton's own
            # test decides whether the stage converged.
            diff, _ = gmres(linear_fn, residual, rtol=self.forcing, restart=KRYLOV_RESTART,
                            max_iterations=KRYLOV_MAX_ITERATIONS)
            return diff, jnp.all(jnp.isfinite(diff))
        operator = lx.FunctionLinearOperator(linear_fn, jax.eval_shape(lambda: y), tags=tags)
        solution = lx.linear_solve(operator, residual, lx.AutoLinearSolver(well_posed=None), throw=False)
        diff = solution.value
        return diff, (solution.result == lx.RESULTS.successful) & jnp.all(jnp.isfinite(diff))

    def terminate(self, fn, y, args, options, state, tags):
        del fn, args, options, tags
        scale = self.atol + self.rtol * jnp.abs(y)
        small_update = self.norm(state.diff / scale) < 1
        small_residual = self.norm(state.residual / scale) < 1
        failed = state.result != optx.RESULTS.successful
        return failed | (small_update & small_residual), state.result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


def _in_state_units(args, y, residual):
    """(h·F, y_i): the stage residual as a change of state, and the stage's state.

    Reads the arguments Diffrax 0.7 passes to its stage equation (diffrax/_solver/runge_kutta.py,
    which passes them "so that custom nonlinear solvers can special-case on the stage"). In
    f-space (FSAL methods: Kvaerno) they are (stage, a_ii, vf, prod, t_i, y_partial, args,
    control) and y_i = y_partial + a_ii·prod(f, control), prod(F, control) = h·F for an ODE term;
    in k-space (KenCarp) the iterate k = h·f is already a change of state and the tuple has no
    vf/prod: (stage, a_ii, vf_prod, t_i, y_partial, args, control).
    """
    if len(args) == 8:
        _, diagonal, _, prod, _, y_partial, _, control = args
        return prod(residual, control), y_partial + diagonal * prod(y, control)
    if len(args) == 7:
        _, diagonal, _, _, y_partial, _, _ = args
        return residual, y_partial + diagonal * y
    raise TypeError(f"StageNewton: unexpected stage-equation arguments from Diffrax ({len(args)} items); "
                    "it reads Diffrax 0.7's layout")


def gmres(matvec: Callable[[Array], Array], b: Array, *, rtol, restart: int, max_iterations: int):
    """Restarted GMRES (Saad & Schultz 1986) for A x = b, stopping as soon as ‖b − A x‖₂ ≤ rtol ‖b‖₂.

    The residual norm is tracked inside each Arnoldi cycle by Givens rotations, so the solve
    stops at the iteration that meets the test: Lineax's GMRES runs every cycle to its full
    length and needs two cycles before its test can pass (≥ 2·(restart + 1) products per solve,
    which was nearly all of the implicit solvers' cost above 512 parameters). Orthogonalisation
    is classical Gram–Schmidt applied twice (CGS2: as stable as modified Gram–Schmidt, and two
    matrix–vector products with the basis instead of a loop).

    **Arguments:**

    - `matvec`: x ↦ A x on vectors of b's shape (p,).
    - `b`: the right-hand side.
    - `rtol`: relative residual to reach (the forcing term of inexact Newton).
    - `restart`: Krylov dimension per cycle; `max_iterations`: products with A in all.

    **Returns:** (x, number of products with A).
    """
    p = b.shape[0]
    m = min(restart, p)
    dtype = b.dtype
    b_norm = jnp.linalg.norm(b)
    tol = rtol * b_norm

    def cycle(x, r, used):
        beta = jnp.linalg.norm(r)
        safe_beta = jnp.where(beta > 0, beta, 1.0)
        basis = jnp.zeros((m + 1, p), dtype).at[0].set(r / safe_beta)
        hessenberg = jnp.zeros((m + 1, m), dtype)
        cs, sn = jnp.ones(m, dtype), jnp.zeros(m, dtype)
        g = jnp.zeros(m + 1, dtype).at[0].set(beta)

        def go_on(state):
            j, _, _, _, _, g, done = state
            return (j < m) & (used + j < max_iterations) & (jnp.abs(g[j]) > tol) & ~done

        def arnoldi(state):
            j, basis, hessenberg, cs, sn, g, _ = state
            w = matvec(basis[j])
            h = basis @ w  # rows above j are zero
            w = w - basis.T @ h
            correction = basis @ w
            w = w - basis.T @ correction
            h = h + correction
            h_next = jnp.linalg.norm(w)
            breakdown = ~(h_next > jnp.finfo(dtype).eps * jnp.linalg.norm(h))
            basis = basis.at[j + 1].set(jnp.where(breakdown, 0.0, w / jnp.where(h_next > 0, h_next, 1.0)))
            column = h.at[j + 1].set(h_next)

            def rotate(i, col):
                a, c = col[i], col[i + 1]
                new_a = cs[i] * a + sn[i] * c
                new_c = -sn[i] * a + cs[i] * c
                keep = i < j
                return col.at[i].set(jnp.where(keep, new_a, a)).at[i + 1].set(jnp.where(keep, new_c, c))

            column = jax.lax.fori_loop(0, m, rotate, column)
            a, c = column[j], column[j + 1]
            radius = jnp.hypot(a, c)
            safe = jnp.where(radius > 0, radius, 1.0)
            cos, sin = jnp.where(radius > 0, a / safe, 1.0), jnp.where(radius > 0, c / safe, 0.0)
            column = column.at[j].set(radius).at[j + 1].set(0.0)
            cs, sn = cs.at[j].set(cos), sn.at[j].set(sin)
            g = g.at[j + 1].set(-sin * g[j]).at[j].set(cos * g[j])
            hessenberg = hessenberg.at[:, j].set(column)
            return j + 1, basis, hessenberg, cs, sn, g, breakdown

        state = (jnp.asarray(0), basis, hessenberg, cs, sn, g, jnp.asarray(False))
        k, basis, hessenberg, cs, sn, g, _ = jax.lax.while_loop(go_on, arnoldi, state)
        # Least squares in the Krylov basis: the first k rows of the rotated Hessenberg system.
        active = jnp.arange(m) < k
        upper = jnp.where(active[:, None] & active[None, :], hessenberg[:m], jnp.eye(m, dtype=dtype))
        upper = jnp.where(jnp.eye(m, dtype=bool) & (jnp.abs(upper) == 0), 1.0, upper)
        coefficients = jax.scipy.linalg.solve_triangular(upper, jnp.where(active, g[:m], 0.0), lower=False)
        x = x + basis[:m].T @ coefficients
        return x, jnp.abs(g[k]), used + k

    def outer_go_on(state):
        _, residual_norm, used, cycles = state
        return (residual_norm > tol) & (used < max_iterations) & (cycles * m < max_iterations + m)

    def outer(state):
        x, _, used, cycles = state
        r = jnp.where(cycles == 0, b, b - matvec(x))
        x, residual_norm, used = cycle(x, r, used)
        return x, residual_norm, used, cycles + 1

    x, _, used, _ = jax.lax.while_loop(outer_go_on, outer, (jnp.zeros_like(b), b_norm, jnp.asarray(0), jnp.asarray(0)))
    return x, used


class _BisectionState(eqx.Module):
    lower: Array
    upper: Array


class TimeBisection(optx.AbstractRootFinder):
    """Bisection on the step's time interval [lower, upper] for a decreasing event function.

    It stops when the interval is below atol + rtol·|t| (Optimistix's Bisection also asks
    |f| < atol, which fails where log L is steep in s although the crossing is located) and it
    never raises: if round-off leaves the interval without a sign change it converges to the
    step's end, where Diffrax detected the crossing.
    """

    rtol: Any
    atol: Any
    norm: Callable[[PyTree], Scalar] = jnp.abs

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, y, args, aux_struct, tags
        return _BisectionState(
            lower=jnp.asarray(options["lower"], f_struct.dtype), upper=jnp.asarray(options["upper"], f_struct.dtype)
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        value, aux = fn(y, args)
        # Past the crossing (value < 0, or not a number) the root lies below y.
        below = ~(value >= 0)
        lower = jnp.where(below, state.lower, y)
        upper = jnp.where(below, y, state.upper)
        return lower + 0.5 * (upper - lower), _BisectionState(lower=lower, upper=upper), aux

    def terminate(self, fn, y, args, options, state, tags):
        del fn, args, options, tags
        small = jnp.abs(state.upper - state.lower) < self.atol + self.rtol * jnp.abs(y)
        return small, optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        # Return the end known to be past the crossing.
        return state.upper, aux, {}


def resolve_linear_solver(linear_solver: str, num_params: int) -> str:
    if linear_solver == "auto":
        return "dense" if num_params <= DENSE_MAX_PARAMS else "krylov"
    return linear_solver


def make_solver(name: str, rtol, atol, linear_solver: str):
    """The Diffrax solver `name`; implicit ones get `StageNewton` (tolerances may be traced)."""
    if name in EXPLICIT_SOLVERS:
        return EXPLICIT_SOLVERS[name]()
    # Full Newton (the Jacobian re-linearised at every iterate): the default VeryChord needs
    # ~20× more steps on log-time classification. Newton stops at 100× the step tolerances: in
    # log time the field's own relative precision is only ~s·eps (the weights are e^{s − m} with
    # s up to 10^6), so a Newton tolerance equal to a tight rtol is unreachable; the step-size
    # controller's error estimate still holds each step to rtol/atol.
    root_finder = StageNewton(
        rtol=NEWTON_TOLERANCE_FACTOR * rtol, atol=NEWTON_TOLERANCE_FACTOR * atol, step_rtol=rtol, step_atol=atol,
        krylov=linear_solver == "krylov",
    )
    solver = IMPLICIT_SOLVERS[name](root_finder=root_finder)
    if name in ERROR_ESTIMATE_SCALE:
        return ScaledErrorEstimate(solver, ERROR_ESTIMATE_SCALE[name])
    return solver


class ScaledErrorEstimate(diffrax.AbstractAdaptiveSolver):
    """A Diffrax solver whose embedded error estimate is multiplied by a constant `scale`.

    Everything else (steps, stages, dense output, solver state) is the wrapped solver's. Used
    where a method's embedded estimate is known to underestimate its own local error
    (`ERROR_ESTIMATE_SCALE`): the step-size controller then holds the error it is meant to.
    A short wrapper over Diffrax's public solver interface (as Diffrax's `HalfSolver` is),
    not a subclass of a concrete solver.
    """

    solver: diffrax.AbstractAdaptiveSolver
    scale: float = eqx.field(static=True)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    @property
    def root_finder(self):
        return self.solver.root_finder

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump)
        y_error = None if y_error is None else jax.tree_util.tree_map(lambda e: self.scale * e, y_error)
        return y1, y_error, dense_info, solver_state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def is_implicit(solver) -> bool:
    """Whether a Diffrax solver object solves stage equations (an implicit or IMEX method)."""
    inner = solver.solver if isinstance(solver, ScaledErrorEstimate) else solver
    return isinstance(inner, diffrax.AbstractImplicitSolver) or is_imex(inner)


def is_imex(solver) -> bool:
    inner = solver.solver if isinstance(solver, ScaledErrorEstimate) else solver
    return isinstance(inner, (diffrax.KenCarp3, diffrax.KenCarp4, diffrax.KenCarp5))


def make_terms(solver, vector_field):
    """The Diffrax terms `solver` takes for the field (`solver`: a solver object, or one of flowsim's names)."""
    term = diffrax.ODETerm(vector_field)
    if (solver in IMEX_SOLVERS) if isinstance(solver, str) else is_imex(solver):
        # KenCarp is an IMEX pair; the whole field is treated implicitly (its ESDIRK half),
        # with a zero explicit part, since gradient flow has no natural non-stiff split.
        zero = diffrax.ODETerm(lambda t, y, args: jnp.zeros_like(y))
        return diffrax.MultiTerm(zero, term)
    return term


class RecordingController(diffrax.AbstractAdaptiveStepSizeController):
    """Diffrax's PID controller, with the proposed next step size kept in the controller state.

    A solve continued from a saved state (segments, checkpoints, a solver switch) then starts
    with exactly the step the uninterrupted solve would have taken next: Diffrax's `Solution`
    returns the controller state but not the next step size.
    """

    pid: diffrax.PIDController

    @property
    def rtol(self):
        return self.pid.rtol

    @property
    def atol(self):
        return self.pid.atol

    @property
    def norm(self):
        return self.pid.norm

    def wrap(self, direction):
        return RecordingController(self.pid.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (state, jnp.asarray(tnext - t0, dtype=jnp.result_type(float)))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        inner, _ = controller_state
        keep, tprev, tnext, made_jump, inner, result = self.pid.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        return keep, tprev, tnext, made_jump, (inner, jnp.asarray(tnext - tprev, dtype=jnp.result_type(float))), result
