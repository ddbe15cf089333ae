"""The noisy two-layer net of issue 20: the band field of `fs.simulate` against event-driven sliding.

Frei et al. (2023) setting: n = 30, d = 300, m = 20, 15% label noise, leaky ReLU (γ = 0.1), logistic loss,
first layer trained, Tsit5 at rtol 1e-8, atol 1e-10, log time to log t = 100. The band field
(`fs.simulate`, min-norm Clarke field with a kink band) against `fs.simulate(..., nonsmooth="sliding")`
(strata held by Utkin's equivalent control, kinks as root-found events). One table: steps, events,
pairs sliding at the end, log t reached, log L there, wall (compilation included), in the same run.
`python benchmarks/relu.py --table` has the same two rows among issue 20's other cases.

    python benchmarks/sliding.py            # log t = 100 (minutes on 2 cores)
    python benchmarks/sliding.py --quick    # log t = 10
"""

import argparse
import time

import jax
import numpy as np
from relu import frei_data

import flowsim as fs


def problem():
    X, y = frei_data()
    # max_kinks: the band field's K and the sliding stratum's capacity (the band overflows 64 here).
    net = fs.networks.TwoLayer.init(jax.random.key(0), X.shape[1], 20, scale=1 / np.sqrt(X.shape[1]), leak=0.1,
                                    max_kinks=128)
    return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-steps", type=int, default=50_000, help="each solve's step cap")
    args = parser.parse_args()
    log_t1 = 10.0 if args.quick else 100.0
    prob = problem()
    print(f"noisy two-layer n=30 d=300 m=20, tsit5, rtol 1e-8, atol 1e-10, to log t = {log_t1:g}\n")
    print("| field | steps | rejected | events | pairs at kink at end | log t reached | log L | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for nonsmooth in ("band", "sliding"):
        start = time.perf_counter()
        traj = fs.simulate(prob, log_t1=log_t1, solver="tsit5", rtol=1e-8, atol=1e-10, max_steps=args.max_steps,
                           n_save=2, nonsmooth=nonsmooth)
        jax.block_until_ready(traj.final)
        wall = time.perf_counter() - start
        stats = traj.stats
        if nonsmooth == "sliding":
            label = "event-driven sliding"
            events = (f"{int(stats['events'])} ({int(stats['slide_events'])} slide, {int(stats['cross_events'])} "
                      f"cross, {int(stats['leave_events'])} leave)")
        else:
            label, events = "band (min-norm Clarke)", "–"
        overflow = " (band overflow)" if bool(stats.get("band_overflow", False)) else ""
        print(f"| {label} | {int(stats['num_steps'])} | {int(stats['num_rejected_steps'])} | {events} "
              f"| {int(stats['pairs_at_kink'])}{overflow} | {float(traj.log_t_reached):.4g} "
              f"| {float(traj.log_loss[-1]):.4f} | {wall:.1f} |", flush=True)
    print(f"\nsliding: ok = {bool(traj.ok)} {traj.message}; max |z_s| over the stratum {float(stats['max_drift']):.2e}; "
          f"missed events {int(stats['missed_events'])}")


if __name__ == "__main__":
    main()
