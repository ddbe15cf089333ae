"""`simulate`: gradient flow θ' = −∇L(θ) solved with Diffrax, in linear or log time.

The spine of a solve (the shape of Diffrax's `diffeqsolve`): `flowsim._plan.plan` checks and defaults
the arguments once (the field, the save times, the solvers as Diffrax objects); under `jit`/`vmap` the
plan runs as ONE compiled segment (`flowsim._engine`); eagerly `flowsim._driver.drive` chains segments
and asks the solver policy (`flowsim._policy`: a fixed solver, or `auto` on counted cost) what runs next.
Tolerances, horizons and the target are traced values: new values do not recompile.
"""

import dataclasses

from ._driver import drive
from ._engine import finish, init_carry, segment
from ._plan import plan
from ._problem import Problem
from ._sliding import check_model, simulate_on_strata, sliding_refusal
from ._trajectory import Trajectory

NONSMOOTH_METHODS = ("auto", "band", "sliding")


def simulate(
    problem: Problem,
    t1: float | None = None,
    *,
    log_t1: float | None = None,
    solver="auto",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    n_save: int = 100,
    save_log_t=None,
    max_steps: int = 100_000,
    progress: bool = False,
    target_log_loss: float | None = None,
    time: str = "auto",
    linear_solver: str = "auto",
    checkpoint=None,
    checkpoint_every_s=5.0,
    nonsmooth: str = "auto",
) -> Trajectory:
    """Solve the gradient flow θ'(t) = −∇L(θ(t)) from the problem's model to a horizon.

    **Arguments:**

    - `problem`: a `fs.Problem`, or `fs.modified_flow(problem, lr)`.
    - `t1` or `log_t1` (exactly one): the horizon in physical time (integrated in linear
      time) or t1 = e^{log_t1} (integrated in log time s = log(1 + t), where
      dθ/ds = −e^s ∇L(θ), so log_t1 = 1e6 works and t is never formed). `time="linear" |
      "log"` overrides the choice.
    - `solver`: `"auto"` (the default: starts explicit, estimates stiffness along the solve and
      switches between Tsit5 and Kvaerno5 in segments where the counted cost says so — work
      weighted by a per-shape cost table, never the clock, so the same call gives bitwise the same
      result (`flowsim._policy`); `traj.info["auto"]` records what ran — under `jit`/`vmap`
      it is Kvaerno5 in log time, Tsit5 in linear time), `"tsit5" | "dopri5" | "dopri8"`
      (explicit) or `"kvaerno3" | "kvaerno4" | "kvaerno5" | "kencarp4" | "kencarp5"` (implicit:
      Newton on the exact Jacobian of the field; dense below 512 parameters, inexact GMRES on
      Hessian–vector products above, or as `linear_solver="dense" | "krylov"` says), or a
      Diffrax solver object (`diffrax.Tsit5()`, `diffrax.Kvaerno5()`: used as given, with its
      own root finder), or a policy: `fs.FixedSolver(name_or_object)` is exactly that solver,
      `fs.AutoSolver()` exactly `"auto"`, `fs.AutoSolver(explicit=..., implicit=...)` auto's rule
      between another pair. Anything else is refused with a `ValueError`.
    - `rtol`, `atol`: step-size controller tolerances (Newton uses 100× these); rtol ∈ [2.2e-15, 0.1]
      (ten float64 epsilons to 10%) and 0 < atol ≤ 0.1, else refused.
    - `n_save`: number of saved states: t = 0, interior times, and the final state.
      `save_log_t` gives the save times (log t, increasing) explicitly instead.
    - `max_steps`: solver steps allowed before giving up (`traj.ok` is then False).
    - `target_log_loss`: stop as soon as log L(θ) falls to this value (training to accuracy
      ε is `target_log_loss=log ε`). A target at or above the starting log loss is refused.
    - `progress`: show a progress bar in log t.
    - `checkpoint`: a file path (outside `jit`/`vmap` only). The solve runs in segments and
      writes its state (and `auto`'s) there atomically at most every `checkpoint_every_s`
      seconds (a finite number ≥ 0; 0: after every segment); calling
      `simulate` again with the same arguments resumes from it
      (`traj.info["resumed_from_log_t"]`).
    - `nonsmooth`: how a model with ReLU-type kinks is solved (ignored for a smooth model, which has none).
      `"sliding"`: exact, event-driven sliding on strata (Filippov): each set of pairs held at their
      kinks is a smooth ODE, whose slopes solve a small linear system, and crossing, joining or leaving a
      kink is a root-found event (`flowsim._sliding`). Eager only, integrated in log time, for models with
      one kink layer per sample (two-layer networks; deeper ones are refused). `"band"`: the minimum-norm
      Clarke field, pairs within a band of width ~ the tolerances of their kink held there (works under
      `jit`/`vmap` and for any depth). `"auto"` (the default): sliding where it applies (a model with one
      kink layer per sample, solved eagerly in log time), the band elsewhere.
      `traj.info["nonsmooth"]` says which ran, and `traj.info["nonsmooth_reason"]` why auto chose the band.

    Tolerances, horizons and `target_log_loss` are values, not compile-time constants: new
    values do not recompile, and `eqx.filter_vmap` over any of them works. Pure: works under
    `jax.jit` and `eqx.filter_vmap` (one compiled solve for a batch; each member keeps its own
    step sizes, status and message).

    **Returns:** a `fs.Trajectory`.
    """
    if not isinstance(nonsmooth, str) or nonsmooth not in NONSMOOTH_METHODS:
        raise ValueError(f"nonsmooth must be one of {list(NONSMOOTH_METHODS)}, got {nonsmooth!r}")
    if nonsmooth == "sliding":
        check_model(problem, "nonsmooth='sliding'")
        if time == "auto":
            time = "log"  # the sliding field is written in log time s = log(1 + t)
    the_plan = plan(problem, t1, log_t1=log_t1, solver=solver, rtol=rtol, atol=atol, n_save=n_save,
                    save_log_t=save_log_t, max_steps=max_steps, progress=progress, target_log_loss=target_log_loss,
                    time=time, linear_solver=linear_solver, checkpoint=checkpoint,
                    checkpoint_every_s=checkpoint_every_s)
    if nonsmooth == "sliding":
        return simulate_on_strata(the_plan)
    if nonsmooth == "auto" and the_plan.nonsmooth:
        reason = sliding_refusal(the_plan)
        if reason is None:
            return simulate_on_strata(the_plan)
        the_plan = dataclasses.replace(the_plan, metadata=dict(the_plan.metadata, nonsmooth_reason=reason))
    if the_plan.traced:
        return run_traced(the_plan)
    return drive(the_plan)


def run_traced(the_plan) -> Trajectory:
    """A plan whose values are traced (under `jit`/`vmap`): one fixed solver, one compiled segment."""
    name = the_plan.solver_name
    static = the_plan.static(name)
    carry = init_carry(the_plan.field, the_plan.theta0, the_plan.save_times, the_plan.settings, static,
                       the_plan.solvers)
    carry = segment(the_plan.field, carry, the_plan.save_times, the_plan.settings, the_plan.settings.time1, static,
                    the_plan.solvers[name])
    implicit = the_plan.is_implicit(name)
    metadata = dict(the_plan.metadata, solver=name,
                    linear_solver=the_plan.linear_solver if implicit else None, implicit=implicit)
    return finish(the_plan.field, carry, the_plan.save_times, the_plan.settings, the_plan.log_time, metadata)
