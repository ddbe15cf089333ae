"""What a solver step costs, counted, never timed: the cost model `solver="auto"` decides on.

A step's cost is counted work weighted by a per-shape cost table read from the programs' HLO
(XLA's `cost_analysis()` of the lowered programs: floating-point operations, transcendental functions
and bytes moved), in one unit, the *flop-equivalent*:

    cost(program) = flops + TRANSCENDENTAL_WEIGHT · transcendentals + bytes accessed / BYTES_PER_FLOP
                    + OP_OVERHEAD

Programs measured once per problem shape: a field evaluation `E` (one gradient of L), a Jacobian–vector
product of the field `J` (one Hessian–vector product of L) and, up to `DENSE_MAX_PARAMS` parameters, the
field's dense Jacobian `Jac` (p products at once, as Newton's dense path forms it). With p parameters:

- an explicit step (Tsit5, Dopri5: FSAL, 6 new stages; Dopri8: 12) costs `stages · E + STEP_OVERHEAD`;
- an implicit (ESDIRK) step costs, per implicit stage (Kvaerno5 has 6), `(N + 1) · E + N · (J + linear
  solve)` with N = `NEWTON_SOLVES[linear_solver]` Newton updates per stage, plus `IMPLICIT_STEP_OVERHEAD`.
  A dense linear solve is `Jac` plus LU, 2p³/3 + 2p² flops; a matrix-free one (GMRES) is
  k · (J + 4(m + 1)p) with m = `KRYLOV_RESTART` (the two Gram–Schmidt passes of CGS2) and k the Krylov
  iterations, counted by one GMRES solve of a stage's Newton system at the segment's end state and step
  (`krylov_iterations` in `_engine`).

Nothing here depends on the clock or the machine's load: the same problem and options give the same
costs, so `auto` takes the same solver path and returns bitwise the same result every time. The
constants are calibrated once, not per run: N is the count of Newton updates per stage of Diffrax's
Kvaerno5 with flowsim's root finder (counted on the benchmark problems), and the overheads weight
Diffrax's per-step bookkeeping against the field's arithmetic so that the modelled ratio of an
implicit to an explicit step matches the measured one on CPU within about 1.7x on the benchmark
problems (`python benchmarks/engine.py --part auto` measures the wall time auto's choices then give).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

TRANSCENDENTAL_WEIGHT = 10.0
BYTES_PER_FLOP = 8.0  # a float64 moved costs about one flop
OP_OVERHEAD = 10_000.0  # a compiled call inside the solver loop: launch and bookkeeping
STEP_OVERHEAD = 20_000.0  # an explicit step's controller, error norm, saving
IMPLICIT_STEP_OVERHEAD = 300_000.0  # an implicit step's stage predictors and Newton loops
# Newton updates (linear solves) per implicit stage: inexact (GMRES) updates need more of them.
NEWTON_SOLVES = {"dense": 1.5, "krylov": 2.4}
KRYLOV_RESTART = 30  # as _solvers.KRYLOV_RESTART (the basis size of one GMRES cycle)
DENSE_MAX_PARAMS = 512  # as _solvers.DENSE_MAX_PARAMS: above it Newton is matrix-free, no Jacobian is formed

# Field evaluations per step of each explicit solver (first-same-as-last: the last stage is the next
# step's first), and implicit stages per step of each ESDIRK solver (its first stage is explicit).
EXPLICIT_STAGES = {"tsit5": 6, "dopri5": 6, "dopri8": 12}
IMPLICIT_STAGES = {"kvaerno3": 3, "kvaerno4": 4, "kvaerno5": 6, "kencarp4": 5, "kencarp5": 7}


class CostTable:
    """Per-step costs of the solvers for ONE problem shape (flop-equivalents; see the module docstring).

    `evaluation`: one field evaluation E; `jvp`: one Jacobian–vector product J; `num_params`: p;
    `jacobian`: the dense Jacobian (None: p · J)."""

    def __init__(self, evaluation: float, jvp: float, num_params: int, jacobian: float | None = None):
        self.evaluation = float(evaluation)
        self.jvp = float(jvp)
        self.num_params = int(num_params)
        self.jacobian = None if jacobian is None else float(jacobian)

    def __repr__(self):
        return (f"CostTable(evaluation={self.evaluation:.4g}, jvp={self.jvp:.4g}, num_params={self.num_params}, "
                f"jacobian={self.jacobian if self.jacobian is None else format(self.jacobian, '.4g')})")

    def as_tuple(self) -> tuple:
        return (self.evaluation, self.jvp, self.num_params, self.jacobian)

    def linear_solve(self, linear_solver: str, krylov_iterations: float | None = None) -> float:
        p = self.num_params
        if linear_solver == "dense":
            jacobian = p * self.jvp if self.jacobian is None else self.jacobian
            return jacobian + 2.0 * p**3 / 3.0 + 2.0 * p**2
        iterations = max(float(krylov_iterations if krylov_iterations is not None else 1.0), 1.0)
        return iterations * (self.jvp + 4.0 * (KRYLOV_RESTART + 1) * p)

    def step(self, solver: str, linear_solver: str = "dense", krylov_iterations: float | None = None) -> float:
        """The cost of one step (accepted or rejected: a rejected step did the same work)."""
        if solver in EXPLICIT_STAGES:
            return EXPLICIT_STAGES[solver] * self.evaluation + STEP_OVERHEAD
        stages = IMPLICIT_STAGES.get(solver, 6)
        updates = NEWTON_SOLVES.get(linear_solver, NEWTON_SOLVES["dense"])
        stage = ((updates + 1.0) * self.evaluation
                 + updates * (self.jvp + self.linear_solve(linear_solver, krylov_iterations)))
        return stages * stage + IMPLICIT_STEP_OVERHEAD


def _signature(tree) -> tuple:
    return tuple((tuple(np.shape(leaf)), str(getattr(leaf, "dtype", type(leaf))))
                 for leaf in jax.tree_util.tree_leaves(tree))


def program_cost(lowered) -> float:
    """The flop-equivalents of one call of a program (`jax.jit(f).lower(...)`, or its `.compile()`)."""
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    flops = max(float(analysis.get("flops", 0.0)), 0.0)
    transcendentals = max(float(analysis.get("transcendentals", 0.0)), 0.0)
    moved = max(float(analysis.get("bytes accessed", 0.0)), 0.0)
    return flops + TRANSCENDENTAL_WEIGHT * transcendentals + moved / BYTES_PER_FLOP + OP_OVERHEAD


@functools.lru_cache(maxsize=64)
def _cached(key, programs):
    evaluate, jvp, jacobian, arrays, theta = programs.value
    evaluation = program_cost(jax.jit(evaluate).lower(arrays, theta))
    product = program_cost(jax.jit(jvp).lower(arrays, theta, theta))
    dense = None
    if theta.shape[0] <= DENSE_MAX_PARAMS:
        dense = program_cost(jax.jit(jacobian).lower(arrays, theta))
    return CostTable(evaluation, product, theta.shape[0], dense)


class _Unhashed:
    """Carries the programs past `lru_cache`, which keys on the evaluation's jaxpr alone."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return True


def cost_table(field, theta, time) -> CostTable:
    """The cost table of `field` at states shaped like `theta`.

    Costs come from the programs' HLO as lowered (XLA's cost analysis before optimisation: no
    compilation), computed once per field evaluation program: the key is the evaluation's jaxpr, which
    fixes every program's cost and holds no object addresses (a field rebuilt for each call hits)."""
    theta = jnp.asarray(theta)
    time = jnp.asarray(time)
    # The field's arrays are arguments, not constants (XLA would fold work on constants away).
    arrays, rest = eqx.partition(field, eqx.is_array)

    def evaluate(arrays, th):
        return eqx.combine(arrays, rest)(time, th)

    def jvp(arrays, th, v):
        return jax.jvp(lambda x: eqx.combine(arrays, rest)(time, x), (th,), (v,))[1]

    def jacobian(arrays, th):
        return jax.jacfwd(lambda x: eqx.combine(arrays, rest)(time, x))(th)

    key = (str(jax.make_jaxpr(evaluate)(arrays, theta)), _signature(arrays), _signature(theta))
    return _cached(key, _Unhashed((evaluate, jvp, jacobian, arrays, theta)))
