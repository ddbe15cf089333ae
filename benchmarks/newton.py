"""Where Kvaerno5's Newton work goes: iterations and linear solves per stage, skipped solves, and why steps are rejected.

    python benchmarks/newton.py                                   # small-init regression, skip on and off
    python benchmarks/newton.py --case diagonal_log_time --skip-below 0.1
    python benchmarks/newton.py --slope-rule 1e-2   # the skip before the fix (8d1e690): 1e-2; e4304c3: 1e-4

Runs flowsim's field and Kvaerno5 with flowsim's StageNewton through `diffrax.diffeqsolve` directly (no target event,
so the regression runs to t = 1e8), with host callbacks counting each Newton iteration and linear solve, and each
step's scaled error estimate: a rejected step has either an error estimate > 1 or a failed root find (estimate = inf).
Cases are those of benchmarks/engine.py. Step counts are deterministic; wall_cold includes compilation and the callbacks (not a timing).
A "skipped" iteration is one whose update is exactly zero.
"""

import argparse
import math
import sys
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

import flowsim  # noqa: F401  (float64 and the compile cache)
from flowsim._flow import make_field
from flowsim._solvers import (
    NEWTON_TOLERANCE_FACTOR,
    SKIP_NEWTON_BELOW,
    StageNewton,
    _NewtonState,
    resolve_linear_solver,
)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from engine import _problems  # noqa: E402


class SlopeRule(StageNewton):
    """The skip as it was before the fix: ‖F‖ against `skip_below` × Newton's slope test, from the predictor on."""

    def step(self, fn, y, args, options, state, tags):
        residual, aux = fn(y, args)
        skip = self.norm(residual / (self.atol + self.rtol * jnp.abs(y))) < self.skip_below
        diff, ok = jax.lax.cond(skip, lambda: (jnp.zeros_like(y), jnp.asarray(True)),
                                lambda: self._newton_update(fn, y, args, tags))
        result = optx.RESULTS.where(ok, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence)
        return y - diff, _NewtonState(residual=residual, diff=diff, step=state.step + 1, result=result), aux


def run(case, skip_below, linear_solver="auto", rtol=1e-8, atol=1e-10, slope_rule=False):
    problem, options = _problems(case, False)
    log_time = "log_t1" in options
    t1 = options["log_t1"] if log_time else options["t1"]
    theta0, field = make_field(problem, log_time, rtol, atol)
    linear = resolve_linear_solver(linear_solver, theta0.size)
    records = {"iterations": [], "steps": []}

    class Recorded(SlopeRule if slope_rule else StageNewton):
        def step(self, fn, y, args, options, state, tags):
            new_y, new_state, aux = super().step(fn, y, args, options, state, tags)
            jax.debug.callback(lambda i, skipped: records["iterations"].append((int(i), bool(skipped))),
                               state.step, jnp.all(new_state.diff == 0), ordered=True)
            return new_y, new_state, aux

    class Recording(diffrax.PIDController):
        def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
            out = super().adapt_step_size(t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state)
            scale = self.atol + self.rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1_candidate))
            jax.debug.callback(lambda e, keep: records["steps"].append((float(e), bool(keep))),
                               self.norm(y_error / scale), out[0], ordered=True)
            return out

    newton = Recorded(rtol=NEWTON_TOLERANCE_FACTOR * rtol, atol=NEWTON_TOLERANCE_FACTOR * atol, step_rtol=rtol,
                      step_atol=atol, skip_below=skip_below, krylov=linear == "krylov")
    start = time.perf_counter()
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Kvaerno5(root_finder=newton), 0.0, float(t1), None,
                              theta0, stepsize_controller=Recording(rtol=rtol, atol=atol), max_steps=100_000,
                              throw=False)
    jax.block_until_ready(sol.ys)
    jax.effects_barrier()
    wall = time.perf_counter() - start
    iterations = np.array(records["iterations"], dtype=int).reshape(-1, 2)
    first = np.flatnonzero(iterations[:, 0] == 0)
    per_stage = np.diff(np.r_[first, len(iterations)])
    skipped = iterations[:, 1].astype(bool)
    errors = np.array([e for e, _ in records["steps"]])
    kept = np.array([k for _, k in records["steps"]], dtype=bool)
    return dict(
        case=case, linear_solver=linear, rule="slope(old)" if slope_rule else "state", skip_below=skip_below, result=str(sol.result),
        steps=int(sol.stats["num_steps"]), rejected=int(sol.stats["num_rejected_steps"]),
        rejected_by_error=int(np.sum(~kept & np.isfinite(errors))), rejected_by_newton=int(np.sum(~kept & ~np.isfinite(errors))),
        stages=len(first), iterations=len(iterations), linear_solves=int(np.sum(~skipped)),
        stages_left_at_predictor=int(np.sum(skipped[first])),
        iterations_per_stage=np.bincount(per_stage).tolist(), wall_cold=wall,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="regression_small_init")
    parser.add_argument("--linear-solver", default="auto", choices=["auto", "dense", "krylov"])
    parser.add_argument("--skip-below", type=float, action="append",
                        help=f"StageNewton.skip_below (repeatable; default: 0 and {SKIP_NEWTON_BELOW})")
    parser.add_argument("--slope-rule", type=float, action="append",
                        help="also run the skip before the fix with this fraction of Newton's slope test (repeatable)")
    args = parser.parse_args()
    runs = [(s, False) for s in (args.skip_below or [0.0, SKIP_NEWTON_BELOW])] + [(s, True) for s in args.slope_rule or []]
    for skip_below, slope_rule in runs:
        row = run(args.case, skip_below, args.linear_solver, slope_rule=slope_rule)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) and not math.isnan(v) else f"{k}={v}"
                       for k, v in row.items()))


if __name__ == "__main__":
    main()
