"""Leaky-ReLU nets on nearly orthogonal data: gradient flow makes the first layer rank ≤ 2 and the boundary linear;
gradient descent from small initialisation collapses the rank in one step (Frei, Vardi, Bartlett, Srebro & Hu,
ICLR 2023, Theorems 3.2 and 4.2, Figure 1).

f(x) = Σ_j a_j φ(⟨w_j, x⟩), φ(z) = max(z, γz), a_j = ±1/√m fixed (balanced), only W ∈ R^{m×d} trained; logistic
loss, mean over the n samples. Data (our choice; the paper's d, m, γ are not stated in what we read): a two-cluster
Gaussian mixture x = y·μ + z, z ~ N(0, I_d), ‖μ‖ = d^{1/4}, labels ±1 balanced. The paper assumes
‖x_i‖² ≫ n·max_{i≠k}|⟨x_i, x_k⟩| (d ≫ n²): with n = 10, d = 10⁴ the measured ratio is ≈ 3 (with n = 20, d = 5000 it
was 0.85, and n = 100 at d = 10⁴ would give ≈ 0.2); ‖μ‖² = √d is √n times the √(d/n) a linear rule needs to
generalise, so the clusters stay separable on fresh samples. p = m·d = 10⁵. Init W_jk = scale·s_d·N(0, 1) with
s_d = √(2/(d + m)), the standard deviation of TensorFlow's default (Glorot) initialiser: the paper's Figure 1 states
its init relative to that default (50× smaller: scale 0.02).

Gradient flow in log time to log t = log_t1 (Tsit5, exact sliding on strata at the kinks: `fs.simulate`'s default
for a two-layer net): the stable rank ‖W‖_F²/‖W‖₂² and σ₃/σ₁
against log t, the normalised margin, the parameter-space KKT residual of min ‖W‖² s.t. y_i f(x_i; W) ≥ 1
(Lyu & Li 2020), the boundary against the ℓ2 max-margin linear predictor on fresh samples.

Gradient descent (lr 0.005, below the curvature bound 8n/max‖x_i‖² ≈ 0.008 of the largest d) over d × init scale
(4 decades), one vmapped run per d: the stable rank against the step, and the first step at which it is ≤ 2.5 —
above the ≤ 2 of the flow's limit, far below a random W's ≈ m·d/(√d + √m)² ≈ 9. Measured (full config): the
collapse is faster for larger d at every scale up to the paper's 0.02 (scale 0.02: 7, 4, 2 steps at d = 10³,
3·10³, 10⁴) and slower for larger init at every d; at scale 0.1 the order in d reverses (≈150, ≈550, > 1000 steps):
there the rank falls only after the data are fit, while ‖W‖ grows like log t.
"""

import equinox as eqx
import jax
import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs

A = fs.analysis


def mixture(key, n, d, mu_power):
    rng = np.random.default_rng(key)
    mu = np.zeros(d)
    mu[0] = d**mu_power
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return y[:, None] * mu + rng.standard_normal((n, d)), y


def orthogonality(X):
    """min_i ‖x_i‖² / (n·max_{i≠k}|⟨x_i, x_k⟩|): the paper's near-orthogonality needs it ≫ 1."""
    G = X @ X.T
    return float(np.diag(G).min() / (len(X) * np.abs(G - np.diag(np.diag(G))).max()))


def square_factor(W):
    """R of Wᵀ = QR, shape (…, m, m): W's singular values (m ≤ d), for fs.analysis's ranks without a batched
    SVD of (m, d) matrices (which allocates d×d per matrix)."""
    W = np.asarray(W)
    flat = W.reshape(-1, *W.shape[-2:])
    return np.stack([np.linalg.qr(w.T, mode="r") for w in flat]).reshape(*W.shape[:-1], W.shape[-2])


def first_reached(stable_rank, steps, threshold):
    """First saved GD step with stable rank ≤ threshold, per row (inf if none)."""
    below = np.asarray(stable_rank) <= threshold
    return np.where(below.any(-1), np.asarray(steps)[np.argmax(below, -1)], np.inf)


def gd_sweep(config, d, steps):
    """GD from every init scale at once (one vmapped run over stacked problems) on the d-dimensional data."""
    n, m = config["n"], config["m"]
    X, y = mixture(config["seed"], n, d, config["mu_power"])
    base = fs.networks.TwoLayer.init(jax.random.key(config["seed"]), d, m, scale=np.sqrt(2 / (d + m)),
                                     leak=config["leak"], balanced=True)
    problems = eqx.filter_vmap(lambda s: fs.Problem(eqx.tree_at(lambda net: net.W, base, s * base.W), X, y,
                                                    "logistic", trainable=base.first_layer_filter()))(
        np.asarray(config["gd_scales"], float))
    gd = eqx.filter_vmap(lambda p: fs.gradient_descent(p, config["gd_lr"], save_steps=steps))(problems)
    return {"stable_rank": np.asarray(A.stable_rank(square_factor(gd.params.W))), "loss": np.asarray(gd.loss),
            "ok": np.asarray(gd.ok), "orthogonality": orthogonality(X)}


def check(config):
    for key in ("gd_scales", "gd_ds"):
        v = np.asarray(config[key], float)
        if v.ndim != 1 or v.size < 2 or not np.all(v > 0) or np.any(np.diff(v) <= 0):
            raise ValueError(f"{key} must be ≥ 2 positive numbers in increasing order, got {config[key]!r}")
    if not config["rank_threshold"] >= 1:
        raise ValueError(f"rank_threshold must be ≥ 1 (a stable rank is), got {config['rank_threshold']!r}")
    if not config["gd_scales"][0] <= config["gd_trend_max_scale"] <= config["gd_scales"][-1]:
        raise ValueError(f"gd_trend_max_scale must lie within gd_scales, got {config['gd_trend_max_scale']!r}")


def run(config):
    check(config)
    n, d, m, leak = config["n"], config["d"], config["m"], config["leak"]
    X, y = mixture(config["seed"], n, d, config["mu_power"])
    X_fresh, y_fresh = mixture(config["seed"] + 1, config["n_fresh"], d, config["mu_power"])
    net = fs.networks.TwoLayer.init(jax.random.key(config["seed"]), d, m, leak=leak, balanced=True,
                                    scale=config["init_scale"] * np.sqrt(2 / (d + m)))
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    # Before e^first_log_t, log-spaced in t from 10^early_log10_t (the rank falls there, at small init); after,
    # evenly in log log t up to the horizon.
    early = np.log(np.geomspace(10.0 ** config["early_log10_t"], np.exp(config["first_log_t"]), config["n_early"] + 1)[:-1])
    late = A.log_log_grid(config["first_log_t"], config["log_t1"], config["n_save"])
    save = np.concatenate([early, late])
    flow = fs.simulate(problem, log_t1=config["log_t1"], solver="tsit5", save_log_t=save, rtol=config["rtol"],
                       atol=config["atol"], max_steps=config["max_steps"])
    R = square_factor(flow.params.W)
    svm = A.max_margin_solution(X, y, p=2.0)
    late_idx = np.geomspace(1, late.size, config["kkt_saves"]).astype(int) - 1  # late-weighted saves of the late grid
    kkt_idx = np.unique(early.size + late_idx)
    params = jax.tree_util.tree_map(lambda leaf: leaf[kkt_idx], flow.params)
    compare = A.compare_with_linear(flow.final, svm.beta, X_fresh)
    out = {"flow": flow, "stable_rank": np.asarray(A.stable_rank(R)), "sv_ratios": np.asarray(A.singular_value_ratios(R)),
           "margin": np.asarray(A.homogeneous_margin(problem, flow.params, degree=1)),
           "kkt_log_t": np.asarray(flow.log_t)[kkt_idx], "kkt_residual": A.homogeneous_kkt_residuals(problem, params, degree=1),
           "agreement": compare.agreement, "one_minus_cos": compare.one_minus_cos,
           "svm_margin": svm.margin, "test_accuracy": float(np.mean(np.sign(jax.vmap(flow.final)(X_fresh)) == y_fresh)),
           "orthogonality": orthogonality(X), "init_stable_rank": float(A.stable_rank(square_factor(net.W)))}
    steps = np.unique(np.concatenate([[0], np.round(np.geomspace(1, config["gd_steps"], config["gd_n_save"]))])).astype(int)
    out["gd"] = {f"d{k}": gd_sweep(config, dk, steps) for k, dk in enumerate(fs.sweep(config["gd_ds"], "d"))}
    out["gd_steps"] = steps
    return out


def gd_table(r, config):
    """(stable rank (d, scale, step), first step ≤ threshold (d, scale), loss (d, scale, step))."""
    keys = [f"gd/d{k}" for k in range(len(config["gd_ds"]))]
    sr = np.stack([np.asarray(r[f"{k}/stable_rank"]) for k in keys])
    return sr, first_reached(sr, r["gd_steps"], config["rank_threshold"]), np.stack([np.asarray(r[f"{k}/loss"]) for k in keys])


def claims(results, config):
    r = results
    ok = bool(r["flow/ok"])
    sr, ratio3 = np.asarray(r["stable_rank"]), np.asarray(r["sv_ratios"])[:, 2]
    res = np.asarray(r["kkt_residual"])
    finite = np.isfinite(res)
    stats = {k: int(r[f"flow/stats/{k}"]) for k in ("num_steps", "num_rejected_steps", "kink_crossings", "pairs_at_kink")}
    out = [
        fs.Claim("gf_stable_rank_at_most_2", float(sr[-1]), config["max_final_stable_rank"],
                 ok and sr[-1] <= config["max_final_stable_rank"],
                 f"‖W‖_F²/‖W‖₂² at log t = {float(r['flow/log_t'][-1]):.3g} (init {float(r['init_stable_rank']):.2f}, "
                 f"log t = {float(r['flow/log_t'][0]):.3g}: {sr[0]:.2f}); σ₃/σ₁: {ratio3[1]:.3g} → {ratio3[-1]:.3g}; "
                 f"horizon reached: {ok}; Tsit5 {stats['num_steps']} steps ({stats['num_rejected_steps']} rejected), "
                 f"{stats['kink_crossings']} kink crossings, {stats['pairs_at_kink']} (unit, sample) pairs at a kink at the end"),
        fs.Claim("gf_kkt_residual_falls", float(res[finite][-1]) if finite.any() else np.inf, float(res[finite][0])
                 if finite.any() else np.inf, ok and finite.sum() >= 2 and res[finite][-1] < res[finite][0],
                 "parameter-space KKT residual of min ‖W‖² s.t. y_i f_i ≥ 1 (Clarke slopes at kinks): "
                 + ", ".join(f"log t {lt:.3g}: {v:.3g}" for lt, v in zip(r["kkt_log_t"], res, strict=True))),
        fs.Claim("boundary_agrees_with_l2_max_margin_linear", float(r["agreement"]), config["min_agreement"],
                 ok and r["agreement"] >= config["min_agreement"],
                 f"sign agreement on {config['n_fresh']} fresh samples; 1 − cos(effective direction, β_svm) = "
                 f"{float(r['one_minus_cos']):.3g}; test accuracy {float(r['test_accuracy']):.3f}; near-orthogonality "
                 f"min‖x_i‖² / (n·max|⟨x_i, x_k⟩|) = {float(r['orthogonality']):.2f} (the paper assumes ≫ 1)"),
    ]
    sr_gd, reached, loss = gd_table(r, config)
    tau, scales, ds = config["rank_threshold"], np.asarray(config["gd_scales"]), config["gd_ds"]
    K = int(r["gd_steps"][-1])
    after = sr_gd[:, 0, 1:].max(-1)
    out.append(fs.Claim("gd_small_init_collapses_after_one_step", float(after.max()), tau, bool(np.all(after <= tau)),
                        f"scale {scales[0]:g}: stable rank at step 0 → 1 → max over steps 1..{K}, by d: " + ", ".join(
                            f"{dk}: {sr_gd[k, 0, 0]:.2f} → {sr_gd[k, 0, 1]:.2f} → {after[k]:.2f}" for k, dk in enumerate(ds))))
    kept = sr_gd[:, -1].min(-1) / sr_gd[:, -1, 0]
    out.append(fs.Claim("gd_large_init_keeps_rank_high", float(kept.min()), config["min_rank_kept"],
                        bool(np.all(kept >= config["min_rank_kept"])),
                        f"scale {scales[-1]:g}: min over steps 0..{K} of stable rank / initial, by d: " + ", ".join(
                            f"{dk}: {kept[k]:.3f} ({sr_gd[k, -1, 0]:.2f} → {sr_gd[k, -1, -1]:.2f})" for k, dk in enumerate(ds))))
    ranked = np.where(np.isfinite(reached), reached, K + 1)
    steps_text = "; ".join(f"d = {dk}: " + ", ".join(f"{s:g}: {'>' + str(K) if np.isinf(v) else int(v)}"
                                                     for s, v in zip(scales, reached[k], strict=True)) for k, dk in enumerate(ds))
    slower = bool(np.all(np.diff(ranked, axis=1) >= 0) and np.all(ranked[:, -1] > ranked[:, 0]))
    out.append(fs.Claim("gd_collapse_slower_with_larger_init", float(np.diff(ranked, axis=1).min()), 0.0, slower,
                        f"first GD step with stable rank ≤ {tau:g} (saved steps), by init scale (× TF default std): "
                        + steps_text))
    trend = scales <= config["gd_trend_max_scale"]
    gaps = np.diff(ranked[:, trend], axis=0)
    faster = bool(np.all(gaps <= 0) and np.any(ranked[-1, trend] < ranked[0, trend]))

    def steps_at(j, with_loss=False):
        return " → ".join((f">{K}" if np.isinf(reached[k, j]) else f"{int(reached[k, j])}"
                           + (f" (loss {loss[k, j, np.searchsorted(r['gd_steps'], reached[k, j])]:.2g})" if with_loss else ""))
                          for k in range(len(ds)))

    out.append(fs.Claim("gd_collapse_faster_with_larger_d", float(gaps.max()), 0.0, faster,
                        f"d = {' → '.join(map(str, ds))}: steps to stable rank ≤ {tau:g}, scales ≤ "
                        f"{config['gd_trend_max_scale']:g} (the paper's init): "
                        + ", ".join(f"{s:g}: {steps_at(j)}" for j, s in enumerate(scales) if trend[j])
                        + f"; stable rank after one step at {scales[trend][-1]:g}: "
                        + " → ".join(f"{v:.2f}" for v in sr_gd[:, trend][:, -1, 1])
                        + "; larger scales (no trend claimed; loss at the collapse step): "
                        + ", ".join(f"{s:g}: {steps_at(j, True)}" for j, s in enumerate(scales) if not trend[j])
                        + "; near-orthogonality by d: "
                        + ", ".join(f"{float(r[f'gd/d{k}/orthogonality']):.2f}" for k in range(len(ds)))))
    return out


def plot(results, config):
    r = results
    fig, ax = plt.subplots(2, 3, figsize=(13, 7.4), layout="constrained")
    ax = ax.ravel()
    log_t = np.asarray(r["flow/log_t"])
    keep = np.isfinite(log_t)
    # log t on a symlog axis: linear through the early fall of the rank (t < e), logarithmic up to the horizon.
    ax[0].plot(log_t[keep], np.asarray(r["stable_rank"])[keep], "o-", ms=2.5,
               label=r"stable rank $\|W\|_F^2/\|W\|_2^2$")
    ax[0].axhline(float(r["init_stable_rank"]), color="C0", ls=":", label="stable rank at $t = 0$")
    for k in (1, 2):
        ax[0].plot(log_t[keep], np.asarray(r["sv_ratios"])[keep, k], ls=("--", "-.")[k - 1],
                   label=rf"$\sigma_{k + 1}/\sigma_1$")
    # Linear in log t up to log t = 10 (where the rank falls, t ≪ 1 at small init), logarithmic beyond.
    ax[0].set_xscale("symlog", linthresh=10.0, linscale=2.0)
    ticks = [v for v in (-8, -6, -4, -2, 0, 2, 4, 6, 8, 10, 30, 100, 300, 1000)
             if log_t[keep].min() - 1 <= v <= log_t[keep].max() * 1.05]
    ax[0].set_xticks(ticks, [f"${v}$" for v in ticks])
    ax[0].xaxis.set_minor_locator(plt.NullLocator())
    ax[0].set(yscale="log", xlabel=r"$\log t$ (linear up to 10, logarithmic beyond)", title="GF: first-layer rank")
    ax[0].legend(fontsize=7)
    ax[1].loglog(np.asarray(r["kkt_log_t"]), np.asarray(r["kkt_residual"]), "o-")
    ax[1].set(xlabel=r"$\log t$", ylabel="KKT residual", title="GF: distance from a KKT point of (P)")
    late = keep & (log_t > 0)
    ax[2].semilogx(log_t[late], np.asarray(r["margin"])[late])
    ax[2].set(xlabel=r"$\log t$", ylabel=r"$\mathrm{min}_i\, y_i f(x_i) \,/\, \|W\|_F$", title="GF: normalised margin")
    for a in ax[:3]:
        fs.harness.log_ticks(a)
    sr, reached, _ = gd_table(r, config)
    steps, scales, ds, tau = np.asarray(r["gd_steps"]), np.asarray(config["gd_scales"]), config["gd_ds"], config["rank_threshold"]
    j = int(np.flatnonzero(scales <= config["gd_trend_max_scale"])[-1])
    for k, (s, style) in enumerate(zip(scales, fs.harness.series_styles(len(scales)))):
        ax[3].plot(steps, sr[-1, k], **style, label=f"scale {s:g}")
    for k, dk in enumerate(ds):
        ax[4].plot(steps, sr[k, j], color=f"C{k}", label=f"$d = {dk}$, scale {scales[j]:g}")
        if j + 1 < len(scales):
            ax[4].plot(steps, sr[k, j + 1], color=f"C{k}", ls="--", label=f"$d = {dk}$, scale {scales[j + 1]:g}")
        done = np.isfinite(reached[k])
        ax[5].loglog(scales[done], reached[k, done], "o-", color=f"C{k}", label=f"$d = {dk}$")
        ax[5].loglog(scales[~done] * 1.15**k, np.full((~done).sum(), steps[-1] * 1.5), "^", mfc="none", color=f"C{k}")
    for a, title in ((ax[3], f"GD, $d = {ds[-1]}$, by init scale"), (ax[4], "GD by $d$")):
        a.axhline(tau, color="gray", ls=":", lw=1)
        a.set(xscale="symlog", xlim=(0, steps[-1]), xlabel="GD step", ylabel="stable rank", title=title)
        a.legend(fontsize=6)
    ax[5].axhline(steps[-1], color="gray", ls=":", lw=1)
    ax[5].set(xlabel="init scale (× TF default std)", ylabel=f"first step with stable rank ≤ {tau:g}",
              title=f"GD: steps to collapse (△: not by step {steps[-1]})")
    fs.harness.log_ticks(ax[5])
    ax[5].legend(fontsize=7)
    fig.suptitle(f"Frei et al. leaky net, $n = {config['n']}$, $m = {config['m']}$, $\\gamma = {config['leak']}$; "
                 f"GF at $d = {config['d']}$; GD lr = {config['gd_lr']:g}")
    return {"rank_kkt_gd": fig}


scenario = fs.Scenario(
    name="frei2023_leaky_relu_rank",
    title="Leaky-ReLU nets on nearly orthogonal data: rank ≤ 2 first layer, KKT direction, linear boundary",
    reference="Frei, Vardi, Bartlett, Srebro & Hu, ICLR 2023 (Theorems 3.2, 4.2; Figure 1 trend)",
    config=dict(seed=0, n=10, d=10_000, m=10, leak=0.1, mu_power=0.25, init_scale=1e-2, n_fresh=500, log_t1=200.0,
                first_log_t=0.5, n_save=30, early_log10_t=-3.0, n_early=12, rtol=1e-8, atol=1e-10, max_steps=50_000, kkt_saves=10,
                gd_ds=[1000, 3000, 10_000], gd_scales=[1e-4, 1e-3, 1e-2, 2e-2, 1e-1, 1.0], gd_trend_max_scale=2e-2,
                gd_lr=0.005, gd_steps=1000, gd_n_save=60, rank_threshold=2.5, min_rank_kept=0.8,
                max_final_stable_rank=2.05, min_agreement=0.95),
    quick=dict(d=200, m=8, log_t1=30.0, n_save=15, kkt_saves=4, n_fresh=200, gd_ds=[100, 200, 400], gd_steps=60,
               gd_n_save=25),
    run=run, claims=claims, plot=plot,
)
