"""Engine benchmark (issue "Engine II"): solver choice, implicit scaling, per-step overhead, networks.

    python benchmarks/engine.py            # everything, one table per part (~15-25 min on 2 cores)
    python benchmarks/engine.py --quick    # smaller sizes, for a smoke test
    python benchmarks/engine.py --part scaling   # one part only: auto | scaling | overhead

Every case runs in its own subprocess, so its peak memory (max RSS) is its own. Times are for a
compiled solve (the second call); the first call's time, compilation included, is shown as "cold".
Numbers are ratios against a peer measured in the same run: the better fixed solver for "auto",
Tsit5 for the implicit solvers, a bare jitted gradient for per-step overhead, a hand-written module
for fs.networks.
"""

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time

from _report import markdown_page

CASE_TIMEOUT_S = 420
AUTO_CASE_TIMEOUT_S = 240
TITLES = {"auto": "auto against fixed solvers", "scaling": "Implicit solves at scale",
          "overhead": "Per-step overhead", "all": "Engine: auto, implicit solves at scale, per-step overhead"}


def _problems(name, quick):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import flowsim as fs

    class PlainDiagonal(eqx.Module):
        u: jax.Array
        v: jax.Array

        def __call__(self, x):
            return jnp.dot(x, self.u * self.v)

    if name == "leaky_relu":
        # Frei et al.'s two-layer leaky-ReLU net, outer layer fixed (fs.networks.TwoLayer: the flow is
        # the minimum-norm Clarke subgradient, so it slides along kinks instead of stalling there).
        n, d, m = 30, (100 if quick else 200), 20
        rng = np.random.default_rng(0)
        X = rng.normal(size=(n, d)) / math.sqrt(d)
        y = np.sign(X @ rng.normal(size=d))
        net = fs.networks.TwoLayer.init(jax.random.key(0), d, m, scale=0.1, leak=0.1)
        return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter()), dict(log_t1=5.0)
    if name == "diagonal_log_time":
        X, y = fs.data.separable(10, 20, seed=2)
        return fs.Problem(PlainDiagonal(0.1 * jnp.ones(20), 0.1 * jnp.ones(20)), X, y, "logistic"), dict(
            log_t1=1e3 if quick else 1e4, max_steps=400_000)
    if name == "diagonal_log_time_p1e4":
        # Mildly stiff at scale: the same flow at p = 10^4, where a Tsit5 step (6 gradients) is far cheaper
        # than a matrix-free Kvaerno5 step (Newton–GMRES on Hessian–vector products): explicit should win.
        X, y = fs.data.separable(10, 5_000, seed=2)
        return fs.Problem(PlainDiagonal(0.1 * jnp.ones(5_000), 0.1 * jnp.ones(5_000)), X, y, "logistic"), dict(
            log_t1=1e3 if quick else 1e4, max_steps=400_000)
    if name == "regression_small_init":
        X, y = fs.data.underdetermined_regression(10, 40, seed=0)
        model = fs.networks.Diagonal.init(40, depth=2, scale=1e-3, shape="balanced")
        return fs.Problem(model, X, y, "squared"), dict(t1=1e8, target_log_loss=math.log(1e-20), max_steps=400_000)
    if name == "smoothed_relu_mlp":
        # A deep ReLU net with softplus-smoothed kinks (fs.smoothed_limit's solves, ε = 1e-5): Tsit5 sits at its
        # stability limit (so auto tries Kvaerno5), but Kvaerno5's steps are held by accuracy, at ~200× the cost.
        from relu import xor_mlp  # benchmarks/relu.py, beside this script

        X, y, layers = xor_mlp()
        return fs.Problem(fs.networks.MLP(layers).smoothed(1e-5), X, y, "logistic"), dict(
            log_t1=4.0 if quick else 10.0, max_steps=400_000)
    if name.startswith("regression_p"):
        # Stiff at every size: squared loss, depth-2 diagonal net from scale 1e-3, trained to L = 1e-20. After
        # the fit the Hessian's top eigenvalues (rank n = 10) bound an explicit step while the flow keeps
        # moving slowly; Tsit5 needs > 10^6 steps at p = 10^3, Kvaerno5 about 100.
        p = int(float(name[len("regression_p"):]))
        X, y = fs.data.underdetermined_regression(10, p // 2, seed=0)
        model = PlainDiagonal(1e-3 * jnp.ones(p // 2), 1e-3 * jnp.ones(p // 2))
        return fs.Problem(model, X, y, "squared"), dict(t1=1e8, target_log_loss=math.log(1e-20))
    raise ValueError(name)


def run_case(name, solver, quick, linear_solver="auto"):
    import flowsim as fs

    problem, options = _problems(name, quick)
    start = time.perf_counter()
    first = fs.simulate(problem, solver=solver, n_save=10, linear_solver=linear_solver, **options)
    cold = time.perf_counter() - start
    traj = fs.simulate(problem, solver=solver, n_save=10, linear_solver=linear_solver, **options)
    del first
    info = traj.info
    return dict(
        case=name, solver=solver, linear_solver=info.get("linear_solver"), ok=bool(traj.ok),
        log_t=float(traj.log_t_reached), steps=int(traj.stats["num_steps"]),
        rejected=int(traj.stats["num_rejected_steps"]), wall=float(traj.stats["wall_time_s"]), cold=cold,
        params=int(info["num_params"]), auto=[list(map(str, s)) for s in (info.get("auto") or [])],
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def run_scaling(name, solver, linear_solver, max_steps, count=True):
    """One point of the scaling table: a compiled solve's wall time, then a counted run of the same solve.

    Counted: evaluations of the field (model forward passes over the data, by a host callback in the model:
    field evaluations and the linearisations of Newton) and Hessian-vector products (products with the Newton
    matrix inside flowsim's GMRES, counted by wrapping it in this process). The dense Newton path is not
    counted (its Jacobian is p Jacobian-vector products per Newton iteration, and counting doubles a long run)."""
    import flowsim as fs

    problem, options = _problems(name, False)
    options = dict(options, solver=solver, linear_solver=linear_solver, n_save=2, max_steps=max_steps)
    start = time.perf_counter()
    fs.simulate(problem, **options)
    cold = time.perf_counter() - start
    traj = fs.simulate(problem, **options)
    counts = {"field": None, "hvp": None}
    if count:
        counts = _count_evaluations(problem, options)
    return dict(
        case=name, solver=solver, linear_solver=traj.info.get("linear_solver"), params=int(traj.info["num_params"]),
        ok=bool(traj.ok), log_loss=float(traj.log_loss[-1]), steps=int(traj.stats["num_steps"]),
        rejected=int(traj.stats["num_rejected_steps"]), wall=float(traj.stats["wall_time_s"]), cold=cold,
        field_evals=counts["field"], hvps=counts["hvp"],
        peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def _count_evaluations(problem, options):
    import equinox as eqx
    import jax

    import flowsim as fs
    import flowsim._solvers as solvers

    counts = {"field": 0, "hvp": 0}

    def tick(key):
        def callback():
            counts[key] += 1
        return callback

    class Counted(eqx.Module):
        model: eqx.Module

        def __call__(self, x):
            jax.debug.callback(tick("field"), ordered=False)
            return self.model(x)

    plain_gmres = solvers.gmres

    def counted_gmres(matvec, b, **kwargs):
        def product(v):
            jax.debug.callback(tick("hvp"), ordered=False)
            return matvec(v)
        return plain_gmres(product, b, **kwargs)

    solvers.gmres = counted_gmres
    counted = fs.Problem(Counted(problem.model), problem.X, problem.y, "squared")
    try:
        fs.simulate(counted, **options)
    finally:
        solvers.gmres = plain_gmres
    return counts


def run_overhead(quick):
    """Per-step cost of a Tsit5 solve against its gradient evaluations, fs.networks vs a plain module.

    overhead = wall per step / (6 × one bare jitted gradient called from Python) — the issue's
    measure; also against the gradient's cost inside a compiled loop (no dispatch), and fs.simulate
    against a bare `diffrax.diffeqsolve` of the same field (what flowsim itself adds)."""
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import flowsim as fs
    from flowsim._flow import make_field

    class PlainDiagonal(eqx.Module):
        u: jax.Array
        v: jax.Array

        def __call__(self, x):
            return jnp.dot(x, self.u * self.v)

    def best_of(fn, repeats):
        jax.block_until_ready(fn())
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                out = fn()
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / repeats)
        return min(times)

    d = 5_000 if quick else 50_000
    X, y = fs.data.underdetermined_regression(20, d, seed=0)
    rows = []
    for label, model in [
        ("plain jnp.dot module", PlainDiagonal(0.1 * jnp.ones(d), 0.1 * jnp.ones(d))),
        ("fs.networks.Diagonal", fs.networks.Diagonal.init(d, depth=2, scale=0.1)),
    ]:
        problem = fs.Problem(model, X, y, "squared")
        theta, field = make_field(problem, False, 1e-8, 1e-10)
        gradient = jax.jit(lambda th, field=field: field(0.0, th))
        bare = best_of(lambda: gradient(theta), 50)
        loop = jax.jit(lambda th, field=field: jax.lax.fori_loop(0, 100, lambda i, x: x + 1e-12 * field(0.0, x), th))
        in_loop = best_of(lambda: loop(theta), 1) / 100

        @jax.jit
        def raw(th, field=field):
            return diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, 10.0, None, th,
                                       stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
                                       saveat=diffrax.SaveAt(t1=True), max_steps=100_000)

        raw_steps = int(raw(theta).stats["num_steps"])
        raw_per_step = best_of(lambda: raw(theta).ys, 1) / raw_steps
        fs.simulate(problem, t1=10.0, solver="tsit5", n_save=2)
        walls = [fs.simulate(problem, t1=10.0, solver="tsit5", n_save=2) for _ in range(3)]
        traj = min(walls, key=lambda tr: float(tr.stats["wall_time_s"]))
        per_step = float(traj.stats["wall_time_s"]) / max(int(traj.stats["num_steps"]), 1)
        rows.append(dict(model=label, d=d, steps=int(traj.stats["num_steps"]), wall=float(traj.stats["wall_time_s"]),
                         bare_gradient_ms=1e3 * bare, in_loop_gradient_ms=1e3 * in_loop,
                         overhead=per_step / (6 * bare), vs_in_loop=per_step / (6 * in_loop),
                         vs_bare_diffrax=per_step / raw_per_step))
    return rows


def _subprocess(args, timeout_s=CASE_TIMEOUT_S):
    command = [sys.executable, __file__, "--worker", json.dumps(args)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(args, ok=False, note=f"did not finish in {timeout_s} s")
    if out.returncode != 0:
        return dict(args, ok=False, note="crashed: " + out.stderr.strip().splitlines()[-1][:120])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows, columns):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths)) + " |")
    return "\n".join(lines)


def _fmt(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return " → ".join(f"{s[1]}@{float(s[0]):.3g}" for s in value) if value else "–"
    return str(value)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker")
    parser.add_argument("--part", choices=["auto", "scaling", "overhead", "all"], default="all")
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        if job.get("kind") == "overhead":
            print(json.dumps(run_overhead(job["quick"])))
        elif job.get("kind") == "scaling":
            print(json.dumps(run_scaling(job["case"], job["solver"], job["linear_solver"], job["max_steps"],
                                         job["linear_solver"] != "dense")))
        else:
            print(json.dumps(run_case(job["case"], job["solver"], job["quick"], job.get("linear_solver", "auto"))))
        return
    page = "auto" if args.part == "auto" else f"engine-{args.part}"
    with markdown_page(page, TITLES[args.part], quick=args.quick):
        print(f"flowsim engine benchmark — {platform.processor() or platform.machine()}, "
              f"{__import__('os').cpu_count()} cores, python {platform.python_version()}"
              + (" (--quick)" if args.quick else ""))
        if args.part in ("auto", "all"):
            rows = []
            for case in ["leaky_relu", "diagonal_log_time", "diagonal_log_time_p1e4", "regression_small_init",
                         "smoothed_relu_mlp"]:
                # A fixed solve 10x slower than the slowest other is a loss whatever its end: capped, not waited for.
                group = [_subprocess(dict(case=case, solver=s, quick=args.quick), AUTO_CASE_TIMEOUT_S)
                         for s in ("tsit5", "kvaerno5", "auto")]
                best = min((r["wall"] for r in group[:2] if r.get("ok")), default=float("nan"))
                for r in group:
                    r["vs_best_fixed"] = r["wall"] / best if r.get("ok") and best == best else None
                rows += group
            print("\n## auto vs fixed solvers (compiled wall time; vs_best_fixed = auto or fixed / the better fixed)\n")
            print(_table(rows, ["case", "solver", "ok", "log_t", "steps", "rejected", "wall", "cold", "vs_best_fixed",
                                "auto", "note"]))
        if args.part in ("scaling", "all"):
            rows = []
            sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
            tsit5_steps = 2_000 if args.quick else 10_000
            for p in sizes:
                case = f"regression_p{p}"
                jobs = [("tsit5", "auto", tsit5_steps), ("kvaerno5", "krylov", 100_000)]
                if p <= 1_000:
                    jobs.append(("kvaerno5", "dense", 100_000))
                for solver, linear, steps in jobs:
                    rows.append(_subprocess(dict(kind="scaling", case=case, solver=solver, linear_solver=linear,
                                                 max_steps=steps)))
                if p > 1_000:
                    rows.append(dict(case=case, solver="kvaerno5", linear_solver="dense", params=p,
                                     note=f"not run: the p×p Jacobian alone is {8 * p * p / 2**30:.2g} GiB, "
                                          f"built from {p} Jacobian-vector products per Newton iteration"))
            print("\n## implicit solves at scale (squared-loss depth-2 diagonal net from scale 1e-3, target L = 1e-20 by "
                  f"t = 1e8; Tsit5 capped at {tsit5_steps} steps; field_evals = forward passes of the model over the data, "
                  "hvps = Hessian-vector products in GMRES; peak = max RSS of the process)\n")
            print(_table(rows, ["case", "solver", "linear_solver", "params", "ok", "log_loss", "steps", "rejected", "wall",
                                "cold", "field_evals", "hvps", "peak_mb", "note"]))
        if args.part in ("overhead", "all"):
            rows = _subprocess(dict(kind="overhead", quick=args.quick))
            if isinstance(rows, dict):
                rows = [rows]
            print("\n## per-step overhead (Tsit5, squared loss; overhead = wall per step / (6 × one bare jitted gradient);"
                  " vs_in_loop: the same against the gradient inside a compiled loop; vs_bare_diffrax: fs.simulate"
                  " against diffrax.diffeqsolve of the same field)\n")
            print(_table(rows, ["model", "d", "steps", "wall", "bare_gradient_ms", "in_loop_gradient_ms", "overhead",
                                "vs_in_loop", "vs_bare_diffrax", "note"]))


if __name__ == "__main__":
    main()
