"""`plan`: the one home of a solve's defaults and argument checks.

`plan(problem, **options) -> Plan` turns `fs.simulate`'s arguments into what the compiled pieces
(`flowsim._engine`) and the eager driver (`flowsim._driver`) need: traced settings, static structure,
the save times, the vector field (built once), and the solvers resolved to Diffrax solver objects once
(a solver name, or a `diffrax.AbstractSolver` instance the user passes). `fs.simulate` and
`fs.simulate_batch` both plan with it, so they check and default alike.

Concrete bad values are refused here with a message naming them, before anything compiles; values
that are traced (under `jit`/`vmap`) are checked per member inside the solve, which then returns
`Status.INVALID_INPUT` for that member (rtol/atol, the horizon, labels, the save times).
"""

import dataclasses
import functools
import math
import numbers

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_bool, as_int, is_traced
from ._costs import cost_table
from ._engine import Settings, Static
from ._flow import ModifiedFlow, base_problem, make_field, time_from_log_t
from ._nonsmooth import DEFAULT_ATOL, DEFAULT_RTOL, AbstractNonsmoothModel, kink_band_of
from ._policy import AutoSolver, FixedSolver
from ._problem import Problem
from ._solvers import LINEAR_SOLVER_NAMES, SOLVER_NAMES, is_implicit, make_solver, resolve_linear_solver

# exp(709.78) is the largest float64; beyond it t is not representable and only log time works.
MAX_LINEAR_LOG_T = 700.0


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Everything a solve needs, decided once.

    `field`, `theta0`: the vector field and the starting state (flattened parameters); `save_times`: the
    save grid in the solver's time variable; `settings`: the (possibly traced) values; `solver`: what the
    user asked for ("auto", a name, a Diffrax solver object, or an `AutoSolver` with other solvers than the
    default); `solvers`: name -> Diffrax solver object for every solver the solve may use; `auto`: the
    `AutoSolver` of an auto solve (None for a fixed solver); `linear_solver`: "dense" | "krylov" (Newton's linear solves);
    `traced`: some value is traced (under `jit`/`vmap`: one fixed solver, one segment)."""

    problem: object
    field: object
    theta0: jax.Array
    save_times: jax.Array
    settings: Settings
    solver: object
    solver_name: str
    solvers: dict
    auto: AutoSolver | None
    linear_solver: str
    log_time: bool
    max_steps: int
    progress: bool
    has_target: bool
    traced: bool
    nonsmooth: bool
    metadata: dict
    checkpoint: object = None
    checkpoint_every_s: float = 5.0

    def static(self, name: str, max_steps: int | None = None, progress: bool | None = None) -> Static:
        return Static(name, self.log_time, self.max_steps if max_steps is None else max_steps,
                      self.progress if progress is None else progress, self.has_target, tuple(self.solvers))

    @functools.cached_property
    def costs(self):
        """The per-shape cost table `auto` weighs counted work with (`flowsim._costs`)."""
        return cost_table(self.field, self.theta0, self.settings.time1)

    def policy(self):
        """The `AutoSolver` for `solver="auto"` (or an `AutoSolver` given) on a smooth model, else a
        `FixedSolver` (ReLU models: auto is the explicit solver throughout, their steps are held by kinks,
        not stiffness; under `jit`/`vmap`: the fixed rule's solver)."""
        if self.auto is not None and not self.traced:
            if self.nonsmooth:
                return FixedSolver(self.auto.explicit, note="start: non-smooth model, explicit throughout")
            return self.auto
        return FixedSolver(self.solver_name if self.auto is not None else self.solver)

    def is_implicit(self, name: str) -> bool:
        return is_implicit(self.solvers[name])

    @property
    def band(self):
        """The kink band of a non-smooth model (`flowsim._nonsmooth.KinkBand`, decided once from the model and
        the tolerances and held by `field`); None for a smooth model."""
        return self.field.band


MIN_RTOL = 10 * float(np.finfo(np.float64).eps)
MAX_TOLERANCE = 0.1


def _is_real_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))) or (
        isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0
        and np.issubdtype(np.result_type(value), np.number) and not np.issubdtype(np.result_type(value), np.bool_)
        and not np.issubdtype(np.result_type(value), np.complexfloating)
    )


def _horizon(name: str, value, *, positive: bool):
    """A horizon: checked now when concrete, returned as a float64 array either way."""
    if is_traced(value):
        return jnp.asarray(value, dtype=jnp.float64)
    if not _is_real_number(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if positive and not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be positive and finite, got {number}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return jnp.asarray(number, dtype=jnp.float64)


def positive_value(name: str, value):
    """A positive finite real number (a horizon `t1`, gradient descent's `lr`), checked now when concrete and
    returned as a float64 array either way (a traced one is checked per member inside the solve)."""
    return _horizon(name, value, positive=True)


def check_problem(problem, *, flow: bool = True):
    """The problem of every entry point (`fs.simulate`, `fs.simulate_batch`, `fs.gradient_descent`): a
    `fs.Problem`, or where `flow` (a solve of the flow, not GD) `fs.modified_flow(problem, lr)`."""
    if isinstance(problem, Problem) or (flow and isinstance(problem, ModifiedFlow)):
        return problem
    if isinstance(problem, ModifiedFlow):
        raise TypeError("gradient_descent runs a flowsim.Problem, not fs.modified_flow(...) (the modified flow is a "
                        "model of GD's iterates: give gradient_descent the problem itself)")
    raise TypeError(f"problem must be a flowsim.Problem (or fs.modified_flow(...), which fs.simulate takes), got "
                    f"{type(problem).__name__}")


def check_common(problem, n_save, *, flow: bool = True) -> int:
    """The checks `plan` and `fs.gradient_descent` share, so that one bad value gets one message from both:
    the problem (`check_problem`) and the number of saves (an integer ≥ 2). Returns `n_save`."""
    check_problem(problem, flow=flow)
    return as_int("n_save", n_save, minimum=2)


def any_traced(*trees) -> bool:
    """Some leaf of `trees` is traced (under `jit`/`vmap`): the values are then checked inside the solve."""
    return any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(trees))


def _tolerance(name: str, value):
    if is_traced(value):
        return jnp.asarray(value, dtype=jnp.float64)
    if not _is_real_number(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be positive and finite, got {number}")
    # Below a few float64 epsilons no step can meet the tolerance; above 0.1 the error control no longer
    # keeps the solve on the flow (L may even grow, which gradient flow never does).
    if name == "rtol" and not MIN_RTOL <= number <= MAX_TOLERANCE:
        raise ValueError(f"rtol must be in [{MIN_RTOL:.3g}, {MAX_TOLERANCE:g}] (float64 resolves relative errors "
                         f"down to ~1e-16), got {number:.6g}")
    if name == "atol" and number > MAX_TOLERANCE:
        raise ValueError(f"atol must be at most {MAX_TOLERANCE:g} (an absolute error per step, in the units of "
                         f"the parameters), got {number:.6g}")
    return jnp.asarray(number, dtype=jnp.float64)


def checkpoint_interval(value) -> float:
    """`checkpoint_every_s`: seconds between checkpoint writes, a non-negative finite real number (0: after
    every segment). Checked before any segment runs."""
    if not _is_real_number(value) or is_traced(value):
        raise TypeError(f"checkpoint_every_s must be a number of seconds (a finite real number ≥ 0), got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"checkpoint_every_s must be a finite number of seconds ≥ 0, got {value!r}")
    return number


def save_grid(log_t1, n_save: int, log_time: bool):
    """Default save times (log t) before the final state: t = 0, then n_save − 2 interior points.

    Linear time: uniform in log t from three decades below min(1, t1). Log time: uniform in
    asinh(log t), i.e. uniform in log t near t = 1 and log-spaced in log t for long horizons, so
    `log_t1=1e5` saves every decade of log t, not only t ≤ 10⁻³ and t ≥ e^329."""
    log_t1 = jnp.asarray(log_t1, dtype=jnp.float64)
    low = jnp.minimum(0.0, log_t1) - 3.0 * math.log(10.0)
    fractions = jnp.linspace(0.0, 1.0, n_save - 1)[:-1]
    if log_time:
        interior = jnp.sinh(jnp.arcsinh(low) + fractions * (jnp.arcsinh(log_t1) - jnp.arcsinh(low)))
    else:
        interior = low + fractions * (log_t1 - low)
    return jnp.concatenate([jnp.asarray([-jnp.inf]), interior])


def explicit_grid(save_log_t, log_t1):
    """(grid, grid_ok): the user's save times (log t). Concrete ones are checked now (a bad grid is refused,
    a time beyond a concrete horizon too, never clamped); traced ones give `grid_ok`, False for a member whose
    grid does not increase strictly, holds NaN or +inf, or goes beyond its horizon (INVALID_INPUT)."""
    if is_traced(save_log_t):
        grid = jnp.asarray(save_log_t, dtype=jnp.float64)
        if grid.ndim != 1 or grid.shape[0] == 0:
            raise ValueError(f"save_log_t must be a non-empty 1-d array of log times, got shape {grid.shape}")
        increasing = jnp.all(jnp.diff(grid) > 0) & ~jnp.any(jnp.isnan(grid)) & ~jnp.any(grid == jnp.inf)
        return grid, increasing & (grid[-1] <= log_t1)
    try:
        grid = np.asarray(save_log_t, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"save_log_t must be a 1-d array of real log times, got {save_log_t!r}") from error
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"save_log_t must be a non-empty 1-d array of log times, got shape {grid.shape}")
    if np.any(np.isnan(grid)) or np.any(grid == np.inf):
        raise ValueError("save_log_t must not contain NaN or +inf (use -inf for t = 0)")
    if np.any(np.diff(grid) <= 0):
        bad = int(np.flatnonzero(np.diff(grid) <= 0)[0])
        raise ValueError(f"save_log_t must be strictly increasing; it goes from {grid[bad]} to {grid[bad + 1]} "
                         f"at index {bad + 1}")
    if not is_traced(log_t1):
        if grid[-1] > float(log_t1):
            raise ValueError(f"save_log_t goes to {grid[-1]}, beyond the horizon log t1 = {float(log_t1)}: "
                             "save times must lie within the horizon")
        return jnp.asarray(grid), jnp.asarray(True)
    return jnp.asarray(grid), jnp.asarray(grid[-1]) <= log_t1


def solver_choice(solver):
    """(what the solve runs, the name it is reported and keyed by, the `AutoSolver` or None).

    `FixedSolver(x)` is `solver=x` and `AutoSolver()` is `solver="auto"` (the same plan, so bitwise the same
    result); an `AutoSolver` with other solvers is kept as the choice itself (it keys checkpoints apart)."""
    if isinstance(solver, FixedSolver):
        solver = solver.solver
    if isinstance(solver, AutoSolver):
        return ("auto" if solver == AutoSolver() else solver), "auto", solver
    if isinstance(solver, diffrax.AbstractSolver):
        return solver, type(solver).__name__, None
    if not isinstance(solver, str) or solver not in SOLVER_NAMES:
        raise ValueError(f"unknown solver {solver!r}; valid solvers are {list(SOLVER_NAMES)}, a "
                         "diffrax.AbstractSolver instance (e.g. diffrax.Tsit5()) or a policy "
                         "(fs.FixedSolver(name), fs.AutoSolver(explicit=..., implicit=...))")
    return solver, solver, (AutoSolver() if solver == "auto" else None)


def _target(target_log_loss):
    if target_log_loss is None:
        return jnp.asarray(jnp.nan)
    if not is_traced(target_log_loss) and not (
            _is_real_number(target_log_loss) and math.isfinite(float(target_log_loss))):
        raise ValueError(f"target_log_loss must be a finite real number (log ε), got {target_log_loss!r}")
    return jnp.asarray(target_log_loss, dtype=jnp.float64)


def _check_target(field, theta0, target):
    start = float(field.log_loss(theta0))
    if float(target) >= start:
        hint = ""
        if 0 < float(target) < 1:
            hint = f" A target in (0, 1) looks like ε itself: did you mean log ε = {math.log(float(target)):.6g}?"
        raise ValueError(f"target_log_loss = {float(target):.6g} is not below the starting log loss {start:.6g}, so "
                         f"the run would stop at t = 0.{hint}")


def _horizons(t1, log_t1, time):
    """(t1 array or None, log t1 array, log_time)."""
    if (t1 is None) == (log_t1 is None):
        raise ValueError("give exactly one horizon: t1 (physical time) or log_t1 (t1 = e^log_t1), "
                         f"got t1={t1!r}, log_t1={log_t1!r}")
    if t1 is not None:
        t1 = positive_value("t1", t1)
        log_horizon = jnp.log(t1)
    else:
        if not is_traced(log_t1) and not (_is_real_number(log_t1) and math.isfinite(float(log_t1))):
            raise ValueError(f"log_t1 must be a finite real number, got {log_t1!r}")
        log_horizon = _horizon("log_t1", log_t1, positive=False)
    if time not in ("auto", "linear", "log"):
        raise ValueError(f"time must be 'auto', 'linear' or 'log', got {time!r}")
    log_time = (log_t1 is not None) if time == "auto" else (time == "log")
    if not log_time and not is_traced(log_horizon) and float(log_horizon) > MAX_LINEAR_LOG_T:
        raise ValueError(
            f"log_t1 = {float(log_horizon)} is beyond what linear time can represent (t = e^{float(log_horizon)} "
            f"overflows past log t ≈ {MAX_LINEAR_LOG_T:g}); integrate in log time (time='log' or the default)")
    return t1, log_horizon, log_time


def _solvers(choice, name, auto, traced, nonsmooth, log_time, rtol, atol, linear):
    """name -> Diffrax solver object, for every solver the solve may use."""
    if auto is not None:
        if traced:
            fixed = auto.implicit if log_time else auto.explicit
            return {fixed: make_solver(fixed, rtol, atol, linear)}
        names = (auto.explicit,) if nonsmooth else auto.solvers
        return {n: make_solver(n, rtol, atol, linear) for n in names}
    if not isinstance(choice, str):
        return {name: choice}
    return {name: make_solver(name, rtol, atol, linear)}


def plan(
    problem,
    t1=None,
    *,
    log_t1=None,
    solver="auto",
    rtol=DEFAULT_RTOL,
    atol=DEFAULT_ATOL,
    n_save: int = 100,
    save_log_t=None,
    max_steps: int = 100_000,
    progress: bool = False,
    target_log_loss=None,
    time: str = "auto",
    linear_solver: str = "auto",
    checkpoint=None,
    checkpoint_every_s=5.0,
) -> Plan:
    """Check and default `fs.simulate`'s arguments (its docstring says what each means) into a `Plan`."""
    n_save = check_common(problem, n_save)
    t1, log_horizon, log_time = _horizons(t1, log_t1, time)
    choice, name, auto = solver_choice(solver)
    if not isinstance(linear_solver, str) or linear_solver not in LINEAR_SOLVER_NAMES:
        raise ValueError(f"unknown linear_solver {linear_solver!r}; valid: {list(LINEAR_SOLVER_NAMES)}")
    if isinstance(problem, ModifiedFlow) and log_time:
        raise ValueError("fs.modified_flow is integrated in linear time only: give t1 (not log_t1), or time='linear'")
    rtol, atol = _tolerance("rtol", rtol), _tolerance("atol", atol)
    max_steps = as_int("max_steps", max_steps)
    progress = as_bool("progress", progress)
    every = checkpoint_interval(checkpoint_every_s)
    has_target = target_log_loss is not None
    target = _target(target_log_loss)
    if save_log_t is None:
        grid, grid_ok = save_grid(log_horizon, n_save, log_time), jnp.asarray(True)
    else:
        grid, grid_ok = explicit_grid(save_log_t, log_horizon)

    inner = base_problem(problem)
    nonsmooth = isinstance(inner.model, AbstractNonsmoothModel)
    # The field's own parameter, the kink band, is decided here once (the tolerances stay the controller's).
    band = kink_band_of(inner.model, rtol, atol) if nonsmooth else None
    theta0, field = make_field(problem, log_time, band=band)
    traced = any_traced(inner, rtol, atol, log_horizon, target, grid, grid_ok)
    if has_target and not traced:
        _check_target(field, theta0, target)
    if traced and checkpoint is not None:
        raise ValueError("checkpoint needs concrete arguments: it cannot be used under jax.jit or eqx.filter_vmap")
    time1 = t1 if (t1 is not None and not log_time) else time_from_log_t(log_horizon, log_time)
    settings = Settings(rtol=rtol, atol=atol, log_t1=log_horizon, time1=time1, target_log_loss=target,
                        grid_ok=jnp.asarray(grid_ok, dtype=bool))
    num_params = int(theta0.shape[-1])
    linear = resolve_linear_solver(linear_solver, num_params)
    solvers = _solvers(choice, name, auto, traced, nonsmooth, log_time, rtol, atol, linear)
    if traced and auto is not None:
        name = next(iter(solvers))
    metadata = dict(
        time="log" if log_time else "linear",
        max_steps=max_steps,
        num_params=num_params,
        t1=None if t1 is None or is_traced(t1) else float(t1),
        nonsmooth=nonsmooth,
    )
    if traced:
        metadata["auto"] = "under jit/vmap: fixed rule (no measurement possible)" if auto is not None else None
    return Plan(problem=problem, field=field, theta0=theta0, save_times=time_from_log_t(grid, log_time),
                settings=settings, solver=choice, solver_name=name, solvers=solvers, auto=auto, linear_solver=linear,
                log_time=log_time, max_steps=max_steps, progress=progress, has_target=has_target, traced=traced,
                nonsmooth=nonsmooth, metadata=metadata, checkpoint=checkpoint, checkpoint_every_s=every)
