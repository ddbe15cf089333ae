"""ReLU networks through kinks: the plain gradient field against the minimum-norm Clarke subgradient.

Gradient flow of a ReLU network is the differential inclusion θ' ∈ −∂L(θ); its solution follows the
minimum-norm element of the Clarke subdifferential, which slides along a kink when both sides push
into it. A plain gradient (JAX's derivative of max at a tie) makes the field jump there, and an
adaptive solver chatters across the kink with ever smaller steps. One run prints three tables:

1. Before/after on the issue's examples ("plain": a hand-written Equinox module, the old path;
   "min-norm": `fs.networks.TwoLayer` / `fs.networks.MLP`, whose field is −∂⁰L):
   - Frei et al. (2023) two-layer leaky-ReLU net, outer layer fixed, n = 30, d = 300, m = 20,
     15% label noise, logistic loss, log time to log t = 5;
   - a 2-D bias-free ReLU MLP (two hidden layers of 16, as ``eqx.nn.MLP(2, "scalar", 16, 2,
     use_bias=False)``), XOR-like labels, logistic loss, log time to log t = 10;
   - Timor et al. (2023) 2×2 ReLU net, squared loss, t = 300 (a seed whose plain solve slides).
2. The band: a hand-solved single-neuron flow with a sliding phase (tests/test_nonsmooth.py),
   final error against the closed form and steps, for bands of 0.01–100 × the solver tolerance.
3. The alternative the issue allows: a smoothed activation φ_ε(z) = γz + (1 − γ)ε·softplus(z/ε)
   on the same flow, error and steps as ε → 0, and `fs.smoothed_limit`'s extrapolation to ε = 0.
4. The 2-D MLP where the min-norm field chatters: `fs.smoothed_limit` against the min-norm solve
   at log t = 4.4 (where that solve still works), then alone to log t = 10.

5. (`--table`) issue 20's table, band field against event-driven sliding (`fs.simulate(...,
   nonsmooth="band" | "sliding")`) on each case: steps, rejected steps, events, log t reached, wall, load. The
   noisy two-layer net to log t = 100 (n = 30, d = 300, m = 20, and n = 100, d = 1000, m = 100: the band capped),
   `eqx.nn.MLP` depth 1 and 2 to log t = 30 (their kinks found by flowsim._kinks), the 2-16-16-1
   `fs.networks.MLP` to log t = 10; on the deep nets (two kink layers: sliding refused) also
   `fs.smoothed_limit`, the fallback of `fs.simulate_or_smoothed`. About 15-20 minutes on 2 cores, most of it the
   large net's sliding row (to log t = 100, ~6,400 steps and ~5,500 events).

    python benchmarks/relu.py            # full (a few minutes on 2 cores)
    python benchmarks/relu.py --quick    # smaller horizons, for a smoke test
    python benchmarks/relu.py --table    # issue 20's table only (docs/benchmarks/relu-table.md)
    python benchmarks/relu.py --table --quick   # the same, small horizons and caps (prints only)
    python benchmarks/relu.py --table --case n=100 --method sliding   # one case's rows (prints only)
"""

import argparse
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.optimize
from _report import markdown_page

import flowsim as fs
from flowsim._smoothing import extrapolate, kink_layers

nets = fs.networks


class PlainTwoLayer(eqx.Module):
    """aᵀφ(Wx) written by hand: its field is JAX's gradient (the path before this change)."""

    W: jax.Array
    a: jax.Array
    leak: float = eqx.field(static=True)

    def __call__(self, x):
        z = self.W @ x
        return self.a @ jnp.maximum(z, self.leak * z)


class PlainMLP(eqx.Module):
    layers: tuple
    leak: float = eqx.field(static=True)

    def __call__(self, x):
        h = x
        for W in self.layers[:-1]:
            z = W @ h
            h = jnp.maximum(z, self.leak * z)
        return self.layers[-1] @ h


def first_layer(leaf):
    return eqx.is_inexact_array(leaf) and leaf.ndim == 2


def timed(problem, **options):
    start = time.perf_counter()
    traj = fs.simulate(problem, **options)
    jax.block_until_ready(traj.final)
    return traj, time.perf_counter() - start


def row(name, traj, wall, extra=""):
    return (f"{name:<44} {int(traj.stats['num_steps']):>7} {int(traj.stats['num_rejected_steps']):>7} "
            f"{wall:>7.1f} {float(traj.log_t_reached):>9.3g} {bool(traj.ok)!s:>5}  {extra}")


def xor_mlp():
    """(X, y, layers): 20 Gaussian points in 2-D with XOR-like labels sign(x₁x₂), and the layers of
    `eqx.nn.MLP(2, "scalar", 16, 2, use_bias=False)` (key 0), the last as a vector."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2))
    y = np.sign(X[:, 0] * X[:, 1])
    mlp = eqx.nn.MLP(2, "scalar", 16, 2, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                     key=jax.random.key(0))
    layers = [layer.weight for layer in mlp.layers]
    layers[-1] = layers[-1][0]
    return X, y, layers


def frei_data(n=30, d=300, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    clean = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    mu = np.zeros(d)
    mu[0] = d ** 0.3
    X = clean[:, None] * mu[None] + rng.standard_normal((n, d))
    y = clean.copy()
    y[rng.permutation(n)[: round(noise * n)]] *= -1
    return X, y


def examples(quick: bool):
    print("1. The issue's examples (wall includes compilation; 'log t' is where the solve stopped)\n")
    print(f"{'example / field / solver':<44} {'steps':>7} {'rejected':>7} {'wall s':>7} {'log t':>9} {'ok':>5}")
    max_steps = 20_000
    # Frei et al. 2023 with label noise.
    X, y = frei_data()
    d = X.shape[1]
    m, leak = 20, 0.1
    net = nets.TwoLayer.init(jax.random.key(0), d, m, scale=1 / np.sqrt(d), leak=leak)
    log_t1 = 2.0 if quick else 5.0
    for label, model in (("plain", PlainTwoLayer(net.W, net.a, leak)), ("min-norm", net)):
        problem = fs.Problem(model, X, y, "logistic", trainable=first_layer)
        traj, wall = timed(problem, log_t1=log_t1, solver="tsit5", max_steps=max_steps, n_save=10)
        extra = ""
        if label == "min-norm":
            stats = fs.analysis.kink_statistics(problem, traj.final)
            extra = f"pairs at kink {int(stats['pairs_at_kink'])}, log L {float(traj.log_loss[-1]):.3f}"
        print(row(f"Frei n=30 d=300 m=20 15% noise / {label} / tsit5", traj, wall, extra), flush=True)
    # 2-D ReLU MLP, two hidden layers.
    X2, y2, layers = xor_mlp()
    log_t1 = 4.0 if quick else 10.0
    for label, model in (("plain", PlainMLP(tuple(layers), 0.0)), ("min-norm", nets.MLP(layers))):
        problem = fs.Problem(model, X2, y2, "logistic")
        traj, wall = timed(problem, log_t1=log_t1, solver="tsit5", max_steps=max_steps, n_save=10)
        extra = ""
        if label == "min-norm":
            extra = f"pairs at kink {int(fs.analysis.kink_statistics(problem, traj.final)['pairs_at_kink'])}, " \
                    f"log L {float(traj.log_loss[-1]):.3f}"
        print(row(f"2-D MLP 2-16-16-1 XOR / {label} / tsit5", traj, wall, extra), flush=True)
    start = time.perf_counter()
    limit = fs.smoothed_limit(fs.Problem(nets.MLP(layers), X2, y2, "logistic"), log_t1=log_t1, solver="tsit5",
                              max_steps=max_steps * 5, n_save=10)
    wall = time.perf_counter() - start
    steps = sum(int(traj.stats["num_steps"]) for traj in limit.trajectories)
    rejected = sum(int(traj.stats["num_rejected_steps"]) for traj in limit.trajectories)
    print(f"{'2-D MLP 2-16-16-1 XOR / smoothed limit / tsit5':<44} {steps:>7} {rejected:>7} {wall:>7.1f} "
          f"{float(limit.trajectories[-1].log_t_reached):>9.3g} {bool(limit.ok)!s:>5}  "
          f"ε = {', '.join(f'{w:g}' for w in limit.widths)}; log L {float(limit.log_loss[-1]):.3f}, "
          f"uncertainty {float(limit.error):.1e}", flush=True)
    # Timor et al. 2023, 2×2, a seed that slides.
    x1, x2 = np.array([1.0, 0.99]), np.array([-1.0, 0.99])
    X3 = np.stack([x1 / np.linalg.norm(x1), x2 / np.linalg.norm(x2)])
    seed = 3
    mlp = eqx.nn.MLP(2, 2, 2, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                     key=jax.random.key(seed))
    layers = [0.1 * layer.weight for layer in mlp.layers]
    for label, model in (("plain", PlainMLP(tuple(layers), 0.0)), ("min-norm", nets.MLP(layers))):
        problem = fs.Problem(model, X3, np.eye(2), "squared")
        traj, wall = timed(problem, t1=300.0, solver="tsit5", max_steps=100_000, n_save=10)
        print(row(f"Timor 2x2 seed {seed} / {label} / tsit5", traj, wall, f"log L {float(traj.log_loss[-1]):.4f}"),
              flush=True)


# ---------------------------------------------------------------- the hand-solved sliding flow

GAMMA, C, Y1, Y2, N, T_END = 0.2, 0.3, -1.0, 3.0, 2, 12.0
W0 = np.array([0.5, 0.5])
X_S = np.array([[1.0, 0.0], [C, 1.0]])
Y_S = np.array([Y1, Y2])


def sliding_reference():
    A, b = X_S.T @ X_S, X_S.T @ Y_S
    w_star = np.linalg.solve(A, b)
    phase1 = lambda t: w_star + scipy.linalg.expm(-A * t / N) @ (W0 - w_star)
    t1 = scipy.optimize.brentq(lambda t: phase1(t)[0], 0.0, 50.0, xtol=1e-15)
    w2 = phase1(t1)[1]
    t2 = t1 + N * np.log(C * (Y2 - w2) / GAMMA)
    x1 = np.array([GAMMA, 0.0])
    A3 = np.outer(x1, x1) + np.outer(X_S[1], X_S[1])
    w3 = np.linalg.solve(A3, Y1 * x1 + Y2 * X_S[1])
    w_t2 = np.array([0.0, Y2 + (w2 - Y2) * np.exp(-(t2 - t1) / N)])
    return w3 + scipy.linalg.expm(-A3 * (T_END - t2) / N) @ (w_t2 - w3)


def band_table():
    print("\n2. Band width (pairs within (kink_atol + kink_rtol·‖w‖)·‖x‖ of a kink are free), single-neuron "
          "flow with a sliding phase, tsit5, t = 12\n")
    print(f"{'rtol':>8} {'band / tol':>10} {'steps':>7} {'rejected':>8} {'ok':>5} {'error':>10}")
    reference = sliding_reference()
    for rtol in (1e-6, 1e-8, 1e-10):
        atol = 1e-2 * rtol
        for factor in (None, 0.01, 1.0, 10.0, 100.0):
            if factor is None:
                model = PlainTwoLayer(jnp.asarray(W0[None]), jnp.ones(1), GAMMA)
            else:
                model = nets.TwoLayer(W0[None], np.ones(1), GAMMA, kink_rtol=factor * rtol, kink_atol=factor * atol)
            problem = fs.Problem(model, X_S, Y_S, "squared", trainable=first_layer)
            traj = fs.simulate(problem, t1=T_END, solver="tsit5", rtol=rtol, atol=atol, max_steps=20_000, n_save=4)
            error = np.max(np.abs(np.asarray(traj.final.W[0]) - reference))
            label = "plain" if factor is None else f"{factor:g}"
            print(f"{rtol:>8.0e} {label:>10} {int(traj.stats['num_steps']):>7} "
                  f"{int(traj.stats['num_rejected_steps']):>8} {bool(traj.ok)!s:>5} {error:>10.2e}", flush=True)


def smoothing_table():
    print("\n3. Smoothed activation φ_ε(z) = γz + (1 − γ)ε·softplus(z/ε) on the same flow (rtol 1e-10), and "
          "fs.smoothed_limit's extrapolation to ε = 0\n")
    print(f"{'ε':>22} {'solver':>9} {'steps':>7} {'rejected':>8} {'ok':>5} {'error':>10} {'reported':>10}")
    reference = sliding_reference()
    net = nets.TwoLayer(W0[None], np.ones(1), GAMMA)
    problem = fs.Problem(net, X_S, Y_S, "squared", trainable=net.first_layer_filter())
    widths = (1e-2, 1e-3, 1e-4, 1e-5)
    for solver in ("tsit5", "kvaerno5"):
        limit = fs.smoothed_limit(problem, widths, t1=T_END, solver=solver, rtol=1e-10, atol=1e-12,
                                  max_steps=100_000, n_save=4)
        finals = [np.asarray(traj.final.network.W[0]) for traj in limit.trajectories]
        for width, traj, final in zip(limit.widths, limit.trajectories, finals):
            print(f"{width:>22.0e} {solver:>9} {int(traj.stats['num_steps']):>7} "
                  f"{int(traj.stats['num_rejected_steps']):>8} {bool(traj.ok)!s:>5} "
                  f"{np.max(np.abs(final - reference)):>10.2e}", flush=True)
        for chosen in ((1e-3, 1e-4), (1e-3, 1e-4, 1e-5), widths):
            for logarithmic in (False, True):
                values = [finals[widths.index(w)] for w in chosen]
                value = fs.analysis.richardson(chosen, values, logarithmic=logarithmic).value
                label = ("ε log ε: " if logarithmic else "ε: ") + ", ".join(f"{w:g}" for w in chosen)
                reported = ""
                if chosen == (1e-3, 1e-4, 1e-5) and logarithmic:
                    sub = extrapolate(chosen, [limit.trajectories[widths.index(w)] for w in chosen])
                    reported = f"{float(sub.error):>10.2e}"
                print(f"{label:>22} {solver:>9} {'':>7} {'':>8} {'':>5} "
                      f"{np.max(np.abs(value - reference)):>10.2e} {reported}", flush=True)


def mlp_table(quick: bool):
    log_t1 = 3.0 if quick else 4.4
    print("\n4. The 2-D MLP (2-16-16-1, XOR-like labels, logistic): fs.smoothed_limit (ε = 1e-3, 1e-4, 1e-5, tsit5) "
          f"against the min-norm field at log t = {log_t1:g}, where that solve still works (max |Δθ| over entries)\n")
    X, y, layers = xor_mlp()
    problem = fs.Problem(nets.MLP(layers), X, y, "logistic")
    flat = lambda net: np.concatenate([np.ravel(W) for W in net.layers])  # noqa: E731
    references = {}
    for rtol in (1e-8, 3e-9):
        traj, wall = timed(problem, log_t1=log_t1, solver="tsit5", rtol=rtol, atol=1e-2 * rtol, max_steps=40_000,
                           n_save=4)
        references[rtol] = flat(traj.final)
        print(f"min-norm rtol {rtol:.0e}: {int(traj.stats['num_steps'])} steps, {wall:.1f} s, ok {bool(traj.ok)}",
              flush=True)
    reference = references[1e-8]
    print(f"min-norm rtol 1e-8 vs 3e-9: {np.max(np.abs(references[3e-9] - reference)):.1e} (the reference's own error)")
    start = time.perf_counter()
    limit = fs.smoothed_limit(problem, log_t1=log_t1, solver="tsit5", max_steps=200_000, n_save=4)
    wall = time.perf_counter() - start
    for width, traj in zip(limit.widths, limit.trajectories):
        print(f"ε = {width:g}: {int(traj.stats['num_steps'])} steps, |Δθ| {np.max(np.abs(flat(traj.final.network) - reference)):.1e}")
    print(f"extrapolated (ε log ε, ε, …): |Δθ| {np.max(np.abs(flat(limit.final) - reference)):.1e}, reported uncertainty "
          f"{float(limit.error):.1e}, {wall:.1f} s for all three widths", flush=True)


# ---------------------------------------------------------------- issue 20's table (--table)


def separable_data(n=16, d=5, seed=0):
    """n Gaussian points in R^d labelled by a random teacher direction (linearly separable)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, np.sign(X @ rng.standard_normal(d))


def table_cases(quick: bool):
    """(name, problem, options, caps) per case of issue 20's table: `options` for every method, `caps` the step
    cap of each method tried ("band", "sliding", "smoothed"; a method without a cap is not run)."""
    scale = 0.1 if quick else 1.0
    small = (lambda cap: min(cap, 1_000)) if quick else (lambda cap: cap)
    X, y = frei_data()
    # max_kinks = 128: the band's K and the stratum's capacity (52 pairs slide at log t = 100; the band's default
    # 64 overflows on the way, benchmarks/sliding.py).
    net = nets.TwoLayer.init(jax.random.key(0), X.shape[1], 20, scale=1 / np.sqrt(X.shape[1]), leak=0.1,
                             max_kinks=128)
    frei = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    yield ("noisy two-layer n=30 d=300 m=20 (15% noise, logistic), log t=100", frei, dict(log_t1=100.0 * scale),
           dict(band=small(50_000), sliding=small(50_000)))
    big_n, big_d, big_m = (30, 100, 20) if quick else (100, 1000, 100)
    X, y = frei_data(n=big_n, d=big_d)
    # The same net twice: the band's K (its box QP is dense in K) and the stratum's capacity (solved by unit blocks,
    # so a large capacity costs little; 2,048 leaves room above the pairs that slide by log t = 100).
    nets_by_method = {
        method: nets.TwoLayer.init(jax.random.key(0), big_d, big_m, scale=1 / np.sqrt(big_d), leak=0.1,
                                   max_kinks=64 if quick else kinks)
        for method, kinks in (("band", BIG_MAX_KINKS), ("sliding", BIG_SLIDING_KINKS))
    }
    big = {method: fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
           for method, net in nets_by_method.items()}
    yield (f"noisy two-layer n={big_n} d={big_d} m={big_m}, log t=100", big, dict(log_t1=100.0 * scale),
           dict(band=small(BIG_BAND_STEPS), sliding=min(BIG_SLIDING_STEPS, 100) if quick else BIG_SLIDING_STEPS))
    X, y = separable_data()
    mlp = eqx.nn.MLP(5, "scalar", 8, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                     key=jax.random.key(2))
    yield ("eqx.nn.MLP depth 1 (5-8-1), 16 separable points, exponential, log t=30",
           fs.Problem(mlp, X, y, "exponential"), dict(log_t1=30.0 * scale), dict(band=small(50_000),
                                                                                 sliding=small(50_000)))
    X2, y2, layers = xor_mlp()
    mlp = eqx.nn.MLP(2, "scalar", 16, 2, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                     key=jax.random.key(0))
    yield ("eqx.nn.MLP depth 2 (2-16-16-1), 20 XOR points, logistic, log t=30", fs.Problem(mlp, X2, y2, "logistic"),
           dict(log_t1=30.0 * scale), dict(band=small(DEEP_BAND_STEPS), sliding=0, smoothed=small(200_000)))
    yield ("fs.networks.MLP 2-16-16-1, 20 XOR points, logistic, log t=10",
           fs.Problem(nets.MLP(layers), X2, y2, "logistic"), dict(log_t1=10.0 * scale),
           dict(band=small(DEEP_BAND_STEPS), sliding=0, smoothed=small(200_000)))


# The large net's caps (the band's row stays within a few minutes on 2 cores; sliding runs to log t = 100), the
# band's K and the stratum capacity.
BIG_MAX_KINKS = 256
BIG_SLIDING_KINKS = 2048
BIG_BAND_STEPS = 2_500
BIG_SLIDING_STEPS = 100_000
# The band field on a two-kink-layer net chatters at corners (~10 ms a step here): capped.
DEEP_BAND_STEPS = 5_000


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def _cell(stats, key):
    return f"{int(stats[key]):,}" if key in stats else "—"


def _run_row(name, method, problem, options, cap):
    """One row: `method` ("band", "sliding" or "smoothed") on the case, capped at `cap` steps (0: only asked for,
    to show the refusal). Returns the row's cells after the case's name."""
    if method == "sliding" and len(kink_layers(problem.model) or ()) > 1:
        return _two_kink_layers(problem, options)
    start = time.perf_counter()
    try:
        if method == "smoothed":
            limit = fs.smoothed_limit(problem, solver="tsit5", n_save=20, max_steps=cap, **options)
            jax.block_until_ready(limit.final)
            wall = time.perf_counter() - start
            steps = sum(int(traj.stats["num_steps"]) for traj in limit.trajectories)
            rejected = sum(int(traj.stats["num_rejected_steps"]) for traj in limit.trajectories)
            reached = min(float(traj.log_t_reached) for traj in limit.trajectories)
            note = (f"ε = {', '.join(f'{w:g}' for w in limit.widths)}, extrapolated to 0; uncertainty "
                    f"{float(limit.error):.1e}; steps summed over the three widths")
            return [f"{steps:,}", f"{rejected:,}", "—", f"{reached:.4g}", "yes" if bool(limit.ok) else "no",
                    f"{wall:.1f}", note]
        traj = fs.simulate(problem, solver="tsit5", n_save=20, max_steps=max(cap, 1), nonsmooth=method, **options)
        jax.block_until_ready(traj.final)
    except (TypeError, ValueError) as error:
        return ["—", "—", "—", "—", "refused", "—", f"refused: {error}"]
    wall = time.perf_counter() - start
    stats = traj.stats
    if method == "sliding":
        events = (f"{int(stats['events']):,} ({int(stats['slide_events'])} slide, {int(stats['cross_events'])} cross, "
                  f"{int(stats['leave_events'])} leave)")
        note = f"|S| = {int(stats['pairs_at_kink'])} at the end, max drift {float(stats['max_drift']):.1e}"
        if int(stats["missed_events"]):
            note += f", {int(stats['missed_events'])} missed events"
    else:
        events = f"≥ {_cell(stats, 'kink_crossings')} crossings"
        note = f"{_cell(stats, 'pairs_at_kink')} pairs in the band at the end"
        if bool(stats.get("band_overflow", False)):
            note += " (band overflow: more than max_kinks)"
    if not bool(traj.ok):
        note += f"; stopped: {traj.message.split(':')[0]}"
    return [_cell(stats, "num_steps"), _cell(stats, "num_rejected_steps"), events,
            f"{float(traj.log_t_reached):.4g}", "yes" if bool(traj.ok) else "no", f"{wall:.1f}", note]


def _two_kink_layers(problem, options):
    """The sliding row of a model with two layers of kinks: its slopes are not one linear system (a sample can sit at
    kinks in both layers), so sliding does not apply; the library's own answer is recorded too."""
    layers = " + ".join(str(size) for size in kink_layers(problem.model))
    try:
        fs.simulate(problem, solver="tsit5", n_save=2, max_steps=1, nonsmooth="sliding", **options)
    except (TypeError, ValueError) as error:
        said = f"fs.simulate: {error}"
    else:
        said = "fs.simulate(nonsmooth='sliding') does not refuse this model yet (it ran a step)"
    return ["—", "—", "—", "—", "refused", "—", f"refused: two kink layers ({layers} units); {said}"]


def issue_table(quick: bool, case: str | None = None, method_only: str | None = None):
    """Issue 20's table: for each case, the band field (`fs.simulate(..., nonsmooth="band")`), event-driven
    sliding (`nonsmooth="sliding"`) and, on the deep nets, `fs.smoothed_limit` (the fallback of
    `fs.simulate_or_smoothed` for a solve that stalls at corners): steps, rejected steps, events (sliding: the
    root-found events; band: sign changes of z between the 20 saves, a lower bound on its kink crossings), where
    the solve stopped, whether it reached the horizon, wall (compilation included) and the 1-minute load average
    when the row ended. `case`: only the cases whose name contains it; `method_only`: only that method's rows."""
    print("| case | method | steps | rejected | events | log t reached | ok | wall s | load | note |")
    print("|---|---|---:|---:|---|---:|:-:|---:|---:|---|")
    for name, problems, options, caps in table_cases(quick):
        if case is not None and case not in name:
            continue
        for method, cap in caps.items():
            if method_only is not None and method != method_only:
                continue
            problem = problems[method] if isinstance(problems, dict) else problems
            cells = _run_row(name, method, problem, options, cap)
            label = {"band": "band", "sliding": "sliding", "smoothed": "smoothed limit"}[method]
            cells = [name, label, *cells[:6], _load(), cells[6].replace("|", "\\|")]
            print("| " + " | ".join(cells) + " |", flush=True)
            name = ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", action="store_true",
                        help="only issue 20's table (docs/benchmarks/relu-table.md): steps, events, wall per case")
    parser.add_argument("--case", help="with --table: print only the rows of the cases whose name contains CASE "
                        "(e.g. 'n=100'), without writing the page")
    parser.add_argument("--method", choices=("band", "sliding", "smoothed"), help="with --case: only this method")
    args = parser.parse_args()
    if args.table and (args.case is not None or args.method is not None):
        print(f"jax {jax.__version__}, {jax.devices()[0].platform}, float64, Tsit5, default tolerances; "
              f"docs/benchmarks/relu-table.md left as it was\n")
        issue_table(args.quick, args.case, args.method)
        return
    if args.table:
        with markdown_page("relu-table", "ReLU networks: steps, kink events and wall time per case", quick=args.quick):
            print(f"jax {jax.__version__}, {jax.devices()[0].platform}, float64, Tsit5, default tolerances "
                  f"(rtol 1e-8, atol 1e-10), 20 saves. **band**: `fs.simulate(problem, nonsmooth=\"band\")` (the "
                  "minimum-norm Clarke field with pairs in a band of their kinks held there; the default "
                  "`nonsmooth=\"auto\"` slides where sliding applies); **sliding**: `fs.simulate(problem, nonsmooth=\"sliding\")` (exact event-driven sliding "
                  "on strata); **smoothed limit**: `fs.smoothed_limit(problem)`, what `fs.simulate_or_smoothed` "
                  "falls back to where the band field stalls at the corners of a net with two kink layers. "
                  "Each row is capped in steps (the `max_steps` it ran with is in its note when reached) so the "
                  "whole command stays under about 20 minutes.\n")
            print("Wall times include compilation and were measured on a 2-core machine shared with other work: the "
                  "load column is the 1-minute load average when the row ended (2.0 = both cores busy), so walls "
                  "of rows at different loads do not compare exactly; steps and events do not depend on it.\n")
            issue_table(args.quick)
            print(f"\nEvents: sliding counts its root-found events (a pair reaching its kink joins the stratum, "
                  f"\"slide\", or crosses it, \"cross\"; a held slope reaching γ or 1 leaves, \"leave\"); the band "
                  f"field has no events, and its count is the sign changes of z between the saves, a lower bound on "
                  f"its kink crossings. The large net's band has K = max_kinks = {BIG_MAX_KINKS} and its stratum "
                  f"capacity is max_kinks = {BIG_SLIDING_KINKS}; the small one's 128 for both.")
        return
    with markdown_page("relu", "ReLU networks: the min-norm field, the plain gradient, the smoothed limit",
                       quick=args.quick, preformatted=True):
        print(f"jax {jax.__version__}, {jax.devices()[0].platform}, float64\n")
        examples(args.quick)
        band_table()
        smoothing_table()
        mlp_table(args.quick)


if __name__ == "__main__":
    main()
