"""Sweeps as one solve: the 288-seed Timor et al. batch as one vmapped solve, chunked, refilled, a loop, scipy.

    python benchmarks/batch.py            # a few minutes on 2 cores
    python benchmarks/batch.py --quick    # 32 seeds

Rows (one run, same machine): `fs.simulate_batch` over all seeds at once; the same in chunks (a vmapped
solve steps in lockstep until its slowest member is done, so chunks let fast members finish early);
`schedule="refill"` (slots step in segments, a finished member's slot goes to the next member); a Python
loop of single `fs.simulate` calls (compiled once); scipy's `solve_ivp` (RK45) on the same jitted field,
in a loop over a subset of seeds, extrapolated per member; and, in a subprocess with four forced CPU devices,
the sharded batch (lockstep and refill) against one device. Wall times: the best of `REPEATS` calls after the
first (compiling) one. Lockstep waste: loop iterations × slots over the members' own steps (1 = none waited).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from _report import markdown_page

T1 = 300.0
REPEATS = 3
REFILL = dict(schedule="refill", chunk_size=96, segment_steps=50)


def make_problems(seeds):
    import equinox as eqx
    import jax
    import numpy as np

    import flowsim as fs

    x = np.array([[1.0, 0.99], [-1.0, 0.99]])
    X = x / np.linalg.norm(x, axis=1, keepdims=True)
    Y = np.eye(2)

    def make(key):
        net = fs.networks.MLP.init(key, 2, [2], 2, scale=1e-4, distribution="ball")
        return fs.Problem(net, X, Y, "squared")

    keys = jax.vmap(jax.random.key)(np.arange(seeds))
    return eqx.filter_vmap(make)(keys), make, keys


def timed(fn):
    out = fn()
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def sharded_worker(seeds):
    import jax

    import flowsim as fs

    problems, _, _ = make_problems(seeds)
    rows = {}
    for label, devices in (("4 devices", jax.devices()), ("1 device", jax.devices()[:1])):
        for schedule, extra in (("lockstep", {}), ("refill", REFILL)):
            _, wall = timed(lambda devices=devices, extra=extra: fs.simulate_batch(
                problems, t1=T1, solver="tsit5", n_save=4, devices=devices, **extra))
            rows[f"{schedule}, {label}"] = wall
    print(json.dumps(rows))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sharded-worker", type=int)
    args = parser.parse_args()
    if args.sharded_worker:
        sharded_worker(args.sharded_worker)
        return
    import jax
    import jax.numpy as jnp
    import numpy as np
    import scipy.integrate

    import flowsim as fs

    seeds = 32 if args.quick else 288
    problems, make, keys = make_problems(seeds)
    options = dict(t1=T1, solver="tsit5", n_save=4)
    rows = []
    batch, wall = timed(lambda: fs.simulate_batch(problems, **options))
    steps = np.asarray(batch.stats["num_steps"])
    rows.append(("fs.simulate_batch, all seeds at once (lockstep)", wall, batch.info["lockstep_waste"],
                 f"steps per member {steps.min()}–{steps.max()}, mean {steps.mean():.0f}"))
    for chunk in (96, 32):
        chunked, wall_chunk = timed(lambda chunk=chunk: fs.simulate_batch(problems, chunk_size=chunk, **options))
        rows.append((f"fs.simulate_batch, chunk_size={chunk} (lockstep)", wall_chunk, chunked.info["lockstep_waste"],
                     ""))
    refill, wall_refill = timed(lambda: fs.simulate_batch(problems, **REFILL, **options))
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(refill.params.layers, batch.params.layers))
    rows.append(("fs.simulate_batch, schedule='refill' (96 slots, 50-step segments)", wall_refill,
                 refill.info["lockstep_waste"], f"params bitwise equal to the one solve: {same}"))
    singles = [make(keys[i]) for i in range(seeds)]
    fs.simulate(singles[0], **options)
    start = time.perf_counter()
    for problem in singles:
        jax.block_until_ready(fs.simulate(problem, **options).final)
    loop = time.perf_counter() - start
    rows.append(("loop of fs.simulate (compiled once)", loop, 1.0, ""))
    subset = min(8, seeds)
    start = time.perf_counter()
    for problem in singles[:subset]:
        theta0, field = fs._flow.make_field(problem, False)
        rhs = jax.jit(lambda theta, field=field: field(0.0, theta))
        rhs(theta0).block_until_ready()
        scipy.integrate.solve_ivp(lambda t, th: np.asarray(rhs(jnp.asarray(th))), (0.0, T1), np.asarray(theta0),
                                  method="RK45", rtol=1e-8, atol=1e-10)
    scipy_per = (time.perf_counter() - start) / subset
    rows.append((f"scipy solve_ivp RK45 loop ({subset} seeds, extrapolated)", scipy_per * seeds, None, ""))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, __file__, "--sharded-worker", str(seeds)], capture_output=True, text=True,
                         env=env, timeout=1800)
    sharded = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
    for label, value in sharded.items():
        rows.append((f"fs.simulate_batch {label} (forced CPU devices, subprocess)", value, None, ""))
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
    with markdown_page("batch", "Batches: a sweep over seeds", quick=args.quick):
        print(f"{seeds} seeds of Timor et al.'s 2×2 ReLU net to t = {T1:g} (Tsit5), {os.cpu_count()} cores, "
              f"{jax.devices()[0].platform}; lockstep waste = slots × loop iterations / Σ member steps.\n")
        print("| method | wall (s) | speed-up over the loop | lockstep waste | note |\n|---|---:|---:|---:|---|")
        for label, value, waste, note in rows:
            waste = "" if waste is None else f"{waste:.2f}"
            print(f"| {label} | {value:.3g} | {loop / value:.3g}× | {waste} | {note} |")


if __name__ == "__main__":
    main()
