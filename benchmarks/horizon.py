"""How far does each method get towards the limit direction, and at what cost?

Depth-2 diagonal network β = u ⊙ v, balanced initialisation u = v = 0.1·1, logistic loss, a
10×20 separable data set (science.md §2). The limit direction is the sign-constrained ℓ1
max-margin solution (an LP). One run prints a table:

- flowsim, log time s = log(1 + t), Kvaerno5 (the "auto" choice), to log t = 10^6;
- flowsim, linear time, Tsit5, to t = e^500 (linear time cannot represent t past e^709, and
  LSODA's arithmetic overflows to NaN near t = 1e304 while still reporting success);
- scipy `solve_ivp` (LSODA, jitted right-hand side), linear time, same horizon, stopped
  after the same wall time as flowsim's log-time run;
- plain gradient descent (a jitted loop, largest stable step) given that same wall time.

Wall times include compilation (each flowsim row is the first call in a fresh process
unless noted); "passes" counts forward passes of the model over the data (a gradient or a
batched Jacobian of the field is one pass each), from a separate instrumented run.

    python benchmarks/horizon.py            # full (about a minute on 2 cores)
    python benchmarks/horizon.py --quick    # log t = 10^4, for a smoke test
"""

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate
import scipy.optimize
from _report import markdown_page

import flowsim as fs

PAGE_NOTE = ("A depth-2 diagonal network (10×20 separable data, logistic loss, balanced init u = v = 0.1·1); the limit "
             "is the sign-constrained ℓ1 max-margin direction, an LP. Wall times include compilation (first call in a "
             "fresh process); \"passes\" counts forward passes of the model over the data, from a separate "
             "instrumented run. Linear time cannot go past t ≈ e^709 (float64), so those rows stop at e^500.")


class Diagonal2(eqx.Module):
    u: jax.Array
    v: jax.Array

    def __call__(self, x):
        return jnp.dot(x, self.u * self.v)


class CountingDiagonal2(Diagonal2):
    """Same model; each forward pass over the data calls back once (jax.debug.callback is
    called once per batched evaluation under vmap and jacfwd)."""

    counter: list = eqx.field(static=True, default_factory=list)

    def __call__(self, x):
        jax.debug.callback(lambda: self.counter.append(1))
        return jnp.dot(x, self.u * self.v)


def make_data(seed: int = 2, n: int = 10, d: int = 20):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.sign(rng.standard_normal(n))


def reference_direction(X, y):
    n, d = X.shape
    lp = scipy.optimize.linprog(np.ones(d), A_ub=-(y[:, None] * X), b_ub=-np.ones(n),
                                bounds=[(0, None)] * d, method="highs")
    return lp.x / np.linalg.norm(lp.x)


def direction_error(beta, reference) -> float:
    beta = np.asarray(beta)
    return float(1.0 - beta @ reference / np.linalg.norm(beta))


def count_passes(X, y, scale, **simulate_kwargs) -> int:
    d = X.shape[1]
    counter: list = []
    model = CountingDiagonal2(scale * jnp.ones(d), scale * jnp.ones(d), counter)
    fs.simulate(fs.Problem(model, X, y, loss="logistic"), n_save=2, **simulate_kwargs)
    jax.effects_barrier()
    return len(counter)


def run(log_t1: float, scale: float = 0.1):
    X, y = make_data()
    d = X.shape[1]
    reference = reference_direction(X, y)
    problem = fs.Problem(Diagonal2(scale * jnp.ones(d), scale * jnp.ones(d)), X, y, loss="logistic")
    rows = []

    start = time.perf_counter()
    log_traj = fs.simulate(problem, log_t1=log_t1, n_save=20)
    cold = time.perf_counter() - start
    warm = float(fs.simulate(problem, log_t1=log_t1, n_save=20).stats["wall_time_s"])
    rows.append(dict(
        method="flowsim, log time, Kvaerno5", log_t=float(log_traj.log_t_reached),
        steps=int(log_traj.stats["num_steps"]), passes=count_passes(X, y, scale, log_t1=log_t1),
        wall=cold, note=f"{warm:.2f} s once compiled", error=direction_error(log_traj.final.u * log_traj.final.v, reference),
        ok=bool(log_traj.ok)))

    linear_horizon = 500.0
    start = time.perf_counter()
    lin_traj = fs.simulate(problem, t1=math.exp(linear_horizon), solver="tsit5", n_save=20, max_steps=200_000)
    lin_wall = time.perf_counter() - start
    rows.append(dict(
        method="flowsim, linear time, Tsit5", log_t=float(lin_traj.log_t_reached),
        steps=int(lin_traj.stats["num_steps"]),
        passes=count_passes(X, y, scale, t1=math.exp(linear_horizon), solver="tsit5", max_steps=200_000),
        wall=lin_wall, note="horizon t = e^500 reached" if lin_traj.ok else lin_traj.message.split(":")[0],
        error=direction_error(lin_traj.final.u * lin_traj.final.v, reference), ok=bool(lin_traj.ok)))

    rows.append(scipy_lsoda(problem, X, y, reference, linear_horizon, budget=cold))
    rows.append(equal_time_gd(problem, X, y, reference, budget=cold))
    return rows


def scipy_lsoda(problem, X, y, reference, log_horizon, budget):
    """LSODA on the same field (jitted), linear time, stopped once `budget` seconds pass."""
    theta0, unravel, static = fs._flow.flatten_model(problem.model)
    _, field = fs._flow.make_field(problem, log_time=False)
    rhs = jax.jit(lambda theta: field(0.0, theta))
    rhs(theta0).block_until_ready()
    state = dict(evals=0, t=0.0, theta=np.asarray(theta0))

    class OutOfTime(Exception):
        pass

    start = time.perf_counter()

    def f(t, theta):
        state["evals"] += 1
        if time.perf_counter() - start > budget:
            raise OutOfTime
        state["t"], state["theta"] = t, theta
        return np.asarray(rhs(jnp.asarray(theta)))

    steps, finished = None, False
    try:
        solution = scipy.integrate.solve_ivp(f, (0.0, math.exp(log_horizon)), np.asarray(theta0),
                                             method="LSODA", rtol=1e-8, atol=1e-10)
        # LSODA can report success over states that overflowed: keep the last finite one.
        finite = np.all(np.isfinite(solution.y), axis=0)
        last = int(np.flatnonzero(finite)[-1])
        state["t"], state["theta"] = solution.t[last], solution.y[:, last]
        steps, finished = len(solution.t) - 1, bool(solution.success and finite.all())
    except OutOfTime:
        pass
    wall = time.perf_counter() - start
    model = eqx.combine(unravel(jnp.asarray(state["theta"])), static)
    return dict(method="scipy solve_ivp, LSODA, linear time", log_t=math.log(state["t"]) if state["t"] > 0 else -math.inf,
                steps=steps if steps is not None else "–", passes=state["evals"], wall=wall,
                note="finished" if finished else "stopped at the wall-time budget",
                error=direction_error(model.u * model.v, reference), ok=finished)


def equal_time_gd(problem, X, y, reference, budget):
    """Plain GD with the largest stable step, run for as many steps as fit in `budget` s."""
    theta0, unravel, static = fs._flow.flatten_model(problem.model)
    sharpness = float(np.linalg.eigvalsh(np.asarray(jax.hessian(lambda th: problem.loss_value(
        eqx.combine(unravel(th), static)))(theta0))).max())
    # The sharpness grows as the weights leave the small initialisation, so 2/λ_max(θ0) is not
    # stable: take the largest step on a halving grid that survives a probe run.
    probe_steps = 100_000
    lr = 2.0 / sharpness
    while True:
        probe = fs.gradient_descent(problem, lr=lr, steps=probe_steps, n_save=2)
        if bool(probe.ok):
            break
        lr /= 2.0
    probe = fs.gradient_descent(problem, lr=lr, steps=probe_steps, n_save=2)  # compiled now
    per_step = float(probe.stats["wall_time_s"]) / probe_steps
    steps = max(int(budget / per_step), 1)
    gd = fs.gradient_descent(problem, lr=lr, steps=steps, n_save=2)
    return dict(method=f"gradient descent, lr = {lr:.3g}", log_t=float(gd.log_t_reached), steps=steps, passes=steps,
                wall=float(gd.stats["wall_time_s"]), note="same wall time as the log-time row" if gd.ok else gd.message,
                error=direction_error(gd.final.u * gd.final.v, reference), ok=bool(gd.ok))


def table(rows) -> str:
    lines = ["| method | log t reached | steps | passes | wall time (s) | 1 − cos to limit | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['log_t']:.4g} | {row['steps']} | {row['passes']} | "
                     f"{row['wall']:.2f} | {row['error']:.2e} | {row['note']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="log t = 1e4 instead of 1e6")
    args = parser.parse_args(argv)
    with markdown_page("horizon", "Long horizons: how far each method gets towards the limit", quick=args.quick,
                       note=PAGE_NOTE):
        rows = run(log_t1=1e4 if args.quick else 1e6)
        print(table(rows))
        ratio = rows[-1]["error"] / rows[0]["error"]
        print(f"\nGD's direction error in equal wall time is {ratio:.0f}× flowsim's (log time).")
    return rows


if __name__ == "__main__":
    main()
