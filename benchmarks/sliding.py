"""The noisy two-layer net of issue 20: the band field of `fs.simulate` against event-driven sliding.

Frei et al. (2023) setting: n = 30, d = 300, m = 20, 15% label noise, leaky ReLU (γ = 0.1), logistic loss,
first layer trained, Tsit5 at rtol 1e-8, atol 1e-10, log time to log t = 100. The band field
(`fs.simulate`, min-norm Clarke field with a kink band) against `flowsim._sliding.simulate_sliding`
(strata held by Utkin's equivalent control, kinks as root-found events). One table: steps, events,
pairs sliding at the end, log t reached, log L there, wall (compilation included), in the same run.

    python benchmarks/sliding.py            # log t = 100 (minutes on 2 cores)
    python benchmarks/sliding.py --quick    # log t = 10
"""

import argparse
import time

import jax
import numpy as np
from relu import frei_data

import flowsim as fs
from flowsim._nonsmooth import kink_band_of, kink_statistics
from flowsim._sliding import simulate_sliding


def problem():
    X, y = frei_data()
    # max_kinks: the band field's K and the sliding stratum's capacity (the band overflows 64 here).
    net = fs.networks.TwoLayer.init(jax.random.key(0), X.shape[1], 20, scale=1 / np.sqrt(X.shape[1]), leak=0.1,
                                    max_kinks=128)
    return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter()), X


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-steps", type=int, default=50_000, help="band field's step cap")
    args = parser.parse_args()
    log_t1 = 10.0 if args.quick else 100.0
    prob, X = problem()
    print(f"noisy two-layer n=30 d=300 m=20, tsit5, rtol 1e-8, atol 1e-10, to log t = {log_t1:g}\n")
    print("| field | steps | events | pairs sliding at end | log t reached | log L | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    start = time.perf_counter()
    traj = fs.simulate(prob, log_t1=log_t1, solver="tsit5", rtol=1e-8, atol=1e-10, max_steps=args.max_steps,
                       n_save=2)
    wall = time.perf_counter() - start
    stats = kink_statistics(traj.final, X, kink_band_of(traj.final, 1e-8, 1e-10))
    overflow = " (band overflow)" if bool(stats["band_overflow"]) else ""
    print(f"| band (min-norm Clarke) | {int(traj.stats['num_steps'])} | – | {int(stats['pairs_at_kink'])}{overflow} "
          f"| {float(traj.log_t_reached):.4g} | {float(traj.log_loss[-1]):.4f} | {wall:.1f} |", flush=True)

    start = time.perf_counter()
    sol = simulate_sliding(prob, log_t1, rtol=1e-8, atol=1e-10, max_events=20_000)
    wall = time.perf_counter() - start
    final = fs.Problem(sol.final, X, prob.y, "logistic")
    log_loss = float(final.loss.log_value(jax.vmap(sol.final)(X), prob.y))
    kinds = [kind for kind, _ in sol.events]
    events = f"{len(kinds)} ({kinds.count('slide')} slide, {kinds.count('cross')} cross, {kinds.count('leave')} leave)"
    print(f"| event-driven sliding | {sol.num_steps} | {events} | {int(sol.stratum_size[-1])} "
          f"| {float(sol.log_t[-1]):.4g} | {log_loss:.4f} | {wall:.1f} |")
    print(f"\nsliding: ok = {sol.ok} {sol.message}; max |z_s| over the stratum {sol.max_drift.max():.2e}; "
          f"missed events {sol.missed}")


if __name__ == "__main__":
    main()
