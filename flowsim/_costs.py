"""What a solver step costs, counted, never timed: the cost model `solver="auto"` decides on.

A step's cost is counted work weighted by a per-shape cost table read from the compiled programs
(XLA's `cost_analysis()`: floating-point operations, transcendental functions and bytes moved), in
one unit, the *flop-equivalent*:

    cost(program) = flops + TRANSCENDENTAL_WEIGHT · transcendentals + bytes accessed / BYTES_PER_FLOP
                    + OP_OVERHEAD

Programs measured once per problem shape: a field evaluation `E` (one gradient of L), a Jacobian–vector
product of the field `J` (one Hessian–vector product of L) and, up to `DENSE_MAX_PARAMS` parameters, the
field's dense Jacobian `Jac` (p products at once, as Newton's dense path forms it). With p parameters:

- an explicit step (Tsit5, Dopri5: FSAL, 6 new stages; Dopri8: 12) costs `stages · E + STEP_OVERHEAD`;
- an implicit (ESDIRK) step costs, per implicit stage, `NEWTON_EVALUATIONS · E + J + linear solve`
  (Newton evaluates the stage residual about twice and solves one linear system; Kvaerno5 has 6
  implicit stages), plus `IMPLICIT_STEP_OVERHEAD`. A dense linear solve is `Jac` plus LU, 2p³/3 + 2p²
  flops; a matrix-free one (GMRES) is k · (J + 8(m + 1)p) with
  m = `KRYLOV_RESTART` and k the Krylov iterations, counted by one GMRES solve of the Newton system
  at the segment's end state and step (`krylov_iterations` in `_engine`).

Nothing here depends on the clock or the machine's load: the same problem and options give the same
costs, so `auto` takes the same solver path and returns bitwise the same result every time. The
constants (`OP_OVERHEAD` …) weight Diffrax's per-step bookkeeping against the field's arithmetic; they are
fixed estimates of the order of that overhead on CPU, not re-calibrated per run or per machine
(`python benchmarks/engine.py --part auto` measures the wall time that auto's choices then give against
the fixed solvers).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

TRANSCENDENTAL_WEIGHT = 10.0
BYTES_PER_FLOP = 8.0  # a float64 moved costs about one flop
OP_OVERHEAD = 2_000.0  # a compiled call inside the solver loop: launch and bookkeeping
STEP_OVERHEAD = 8_000.0  # an explicit step's controller, error norm, saving
IMPLICIT_STEP_OVERHEAD = 40_000.0  # an implicit step's stage predictors and Newton loops
NEWTON_EVALUATIONS = 2.0  # residual evaluations of a stage's Newton iteration (one update and its check)
KRYLOV_RESTART = 30  # as _solvers.KRYLOV_RESTART (the basis size of one GMRES cycle)
DENSE_MAX_PARAMS = 512  # as _solvers.DENSE_MAX_PARAMS: above it Newton is matrix-free, no Jacobian is formed

# Field evaluations per step of each explicit solver (first-same-as-last: the last stage is the next
# step's first), and implicit stages per step of each ESDIRK solver (its first stage is explicit).
EXPLICIT_STAGES = {"tsit5": 6, "dopri5": 6, "dopri8": 12}
IMPLICIT_STAGES = {"kvaerno3": 3, "kvaerno4": 4, "kvaerno5": 6, "kencarp4": 5, "kencarp5": 7}


def program_cost(compiled) -> float:
    """The flop-equivalents of one call of a compiled program (`jax.jit(f).lower(...).compile()`)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    flops = max(float(analysis.get("flops", 0.0)), 0.0)
    transcendentals = max(float(analysis.get("transcendentals", 0.0)), 0.0)
    moved = max(float(analysis.get("bytes accessed", 0.0)), 0.0)
    return flops + TRANSCENDENTAL_WEIGHT * transcendentals + moved / BYTES_PER_FLOP + OP_OVERHEAD


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
        return iterations * (self.jvp + 8.0 * (KRYLOV_RESTART + 1) * p)

    def step(self, solver: str, linear_solver: str = "dense", krylov_iterations: float | None = None) -> float:
        """The cost of one step (accepted or rejected: a rejected step did the same work)."""
        if solver in EXPLICIT_STAGES:
            return EXPLICIT_STAGES[solver] * self.evaluation + STEP_OVERHEAD
        stages = IMPLICIT_STAGES.get(solver, 6)
        stage = NEWTON_EVALUATIONS * self.evaluation + self.jvp + self.linear_solve(linear_solver, krylov_iterations)
        return stages * stage + IMPLICIT_STEP_OVERHEAD


def _signature(tree) -> tuple:
    return tuple((tuple(np.shape(leaf)), str(getattr(leaf, "dtype", type(leaf))))
                 for leaf in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=64)
def _cached(key, field_and_theta):
    field, theta, time = field_and_theta.value
    # The field's arrays are arguments, not constants (XLA would fold work on constants away).
    arrays, rest = eqx.partition(field, eqx.is_array)

    def evaluate(arrays, th):
        return eqx.combine(arrays, rest)(time, th)

    def jvp(arrays, th, v):
        return jax.jvp(lambda x: eqx.combine(arrays, rest)(time, x), (th,), (v,))[1]

    def jacobian(arrays, th):
        return jax.jacfwd(lambda x: eqx.combine(arrays, rest)(time, x))(th)

    evaluation = program_cost(jax.jit(evaluate).lower(arrays, theta).compile())
    product = program_cost(jax.jit(jvp).lower(arrays, theta, theta).compile())
    dense = None
    if theta.shape[0] <= DENSE_MAX_PARAMS:
        dense = program_cost(jax.jit(jacobian).lower(arrays, theta).compile())
    return CostTable(evaluation, product, theta.shape[0], dense)


class _Unhashed:
    """Carries the field past `lru_cache`, which keys on the shape signature alone."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return True


def cost_table(field, theta, time) -> CostTable:
    """The cost table of `field` at states shaped like `theta` (computed once per shape and field type:
    the programs' costs depend on shapes and structure, not on values)."""
    theta = jnp.asarray(theta)
    key = (type(field).__name__, repr(jax.tree_util.tree_structure(field)), _signature(field), _signature(theta))
    return _cached(key, _Unhashed((field, theta, jnp.asarray(time))))
