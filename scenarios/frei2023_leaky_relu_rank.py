"""Leaky-ReLU nets on nearly orthogonal data: gradient flow makes the first layer rank ≤ 2 and the boundary linear
(Frei, Vardi, Bartlett, Srebro & Hu, ICLR 2023).

f(x) = Σ_j a_j φ(⟨w_j, x⟩), φ(z) = max(z, γz), a_j = ±1/√m fixed (balanced), only W ∈ R^{m×d} trained; logistic
loss. Data (our choice; the paper's exact d, m, γ are not stated in what we read): a two-cluster Gaussian mixture
x = y·μ + z, z ~ N(0, I_d), ‖μ‖ = d^{mu_power}, labels ±1 balanced. Near-orthogonality ‖x_i‖² vs n·max|⟨x_i, x_k⟩|
is measured and reported, not assumed. Init W_jk = init_scale·N(0, 1).

Gradient flow in log time to log t = log_t1 (Tsit5): the stable rank ‖W‖_F²/‖W‖₂² and σ₃/σ₁ against log t, the
normalised margin and the parameter-space KKT residual of min ‖W‖² s.t. y_i f(x_i; W) ≥ 1 (Lyu & Li 2020), and
the boundary against the ℓ2 max-margin linear predictor on fresh samples. Gradient descent over initialisation
scales: stable rank after one step and at the end.
"""

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


def run(config):
    n, d, m, leak = config["n"], config["d"], config["m"], config["leak"]
    X, y = mixture(config["seed"], n, d, config["mu_power"])
    X_fresh, y_fresh = mixture(config["seed"] + 1, config["n_fresh"], d, config["mu_power"])
    G = X @ X.T
    off = np.abs(G - np.diag(np.diag(G))).max()
    net = fs.networks.TwoLayer.init(jax.random.key(config["seed"]), d, m, scale=config["init_scale"], leak=leak,
                                    balanced=True)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    save = A.log_log_grid(config["first_log_t"], config["log_t1"], config["n_save"])
    flow = fs.simulate(problem, log_t1=config["log_t1"], solver="tsit5", save_log_t=save, rtol=config["rtol"],
                       atol=config["atol"], max_steps=config["max_steps"])
    W = np.asarray(flow.params.W)
    svm = A.max_margin_solution(X, y, p=2.0)
    kkt_idx = np.unique(np.geomspace(1, W.shape[0], config["kkt_saves"]).astype(int) - 1)  # late-weighted saves
    params = jax.tree_util.tree_map(lambda leaf: leaf[kkt_idx], flow.params)
    compare = A.compare_with_linear(flow.final, svm.beta, X_fresh)
    out = {"flow": flow, "stable_rank": np.asarray(A.stable_rank(W)), "sv_ratios": np.asarray(A.singular_value_ratios(W)),
           "margin": np.asarray(A.homogeneous_margin(problem, flow.params, degree=1)),
           "kkt_log_t": np.asarray(flow.log_t)[kkt_idx], "kkt_residual": A.homogeneous_kkt_residuals(problem, params, degree=1),
           "agreement": compare.agreement, "one_minus_cos": compare.one_minus_cos,
           "svm_margin": svm.margin, "test_accuracy": float(np.mean(np.sign(jax.vmap(flow.final)(X_fresh)) == y_fresh)),
           "orthogonality": float(np.diag(G).min() / (n * off)), "init_stable_rank": float(A.stable_rank(net.W))}
    for k, scale in enumerate(config["gd_scales"]):
        net_k = fs.networks.TwoLayer.init(jax.random.key(config["seed"]), d, m, scale=scale, leak=leak, balanced=True)
        gd = fs.gradient_descent(fs.Problem(net_k, X, y, "logistic", trainable=net_k.first_layer_filter()),
                                 config["gd_lr"], save_steps=np.arange(config["gd_steps"] + 1))
        out[f"gd/{k}/stable_rank"] = np.asarray(A.stable_rank(np.asarray(gd.params.W)))
    out["gd_scales"] = np.asarray(config["gd_scales"], float)
    return out


def claims(results, config):
    r = results
    ok = bool(r["flow/ok"])
    sr, ratio3 = np.asarray(r["stable_rank"]), np.asarray(r["sv_ratios"])[:, 2]
    res = np.asarray(r["kkt_residual"])
    finite = np.isfinite(res)
    out = [
        fs.Claim("gf_stable_rank_at_most_2", float(sr[-1]), config["max_final_stable_rank"],
                 ok and sr[-1] <= config["max_final_stable_rank"],
                 f"‖W‖_F²/‖W‖₂² at log t = {float(r['flow/log_t'][-1]):.3g} (init {float(r['init_stable_rank']):.2f}, "
                 f"log t = {float(r['flow/log_t'][0]):.3g}: {sr[0]:.2f}); "
                 f"σ₃/σ₁: {ratio3[1]:.3g} → {ratio3[-1]:.3g}; horizon reached: {ok}"),
        fs.Claim("gf_kkt_residual_falls", float(res[finite][-1]) if finite.any() else np.inf, float(res[finite][0])
                 if finite.any() else np.inf, ok and finite.sum() >= 2 and res[finite][-1] < res[finite][0],
                 "parameter-space KKT residual of min ‖W‖² s.t. y_i f_i ≥ 1 (Clarke slopes at kinks): "
                 + ", ".join(f"log t {lt:.3g}: {v:.3g}" for lt, v in zip(r["kkt_log_t"], res, strict=True))),
        fs.Claim("boundary_agrees_with_l2_max_margin_linear", float(r["agreement"]), config["min_agreement"],
                 ok and r["agreement"] >= config["min_agreement"],
                 f"sign agreement on {config['n_fresh']} fresh samples; 1 − cos(effective direction, β_svm) = "
                 f"{float(r['one_minus_cos']):.3g}; test accuracy {float(r['test_accuracy']):.3f}; near-orthogonality "
                 f"min‖x_i‖² / (n·max|⟨x_i, x_k⟩|) = {float(r['orthogonality']):.2f}"),
    ]
    first = [float(r[f"gd/{k}/stable_rank"][1]) for k in range(len(config["gd_scales"]))]
    out.append(fs.Claim("gd_small_init_collapses_after_one_step", first[0], first[-1], first[0] < first[-1],
                        "stable rank after ONE GD step (and after the last) by init scale: " + ", ".join(
                            f"{s:g}: {v:.2f} ({float(r[f'gd/{k}/stable_rank'][-1]):.2f})"
                            for k, (s, v) in enumerate(zip(config["gd_scales"], first, strict=True)))))
    return out


def plot(results, config):
    r = results
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    log_t = np.asarray(r["flow/log_t"])
    keep = log_t > 0
    ax[0].loglog(log_t[keep], np.asarray(r["stable_rank"])[keep], label="stable rank")
    ax[0].axhline(float(r["init_stable_rank"]), color="C0", ls=":", label="stable rank at t = 0")
    for k in (1, 2):
        ax[0].loglog(log_t[keep], np.asarray(r["sv_ratios"])[keep, k], label=f"σ{k + 1}/σ1")
    ax[0].set(xlabel="log t", title="GF: first-layer rank")
    ax[0].legend(fontsize=7)
    ax[1].loglog(np.asarray(r["kkt_log_t"]), np.asarray(r["kkt_residual"]), "o-")
    ax[1].set(xlabel="log t", ylabel="KKT residual", title="GF: distance from a KKT point of (P)")
    for k, s in enumerate(np.asarray(r["gd_scales"])):
        ax[2].semilogy(np.asarray(r[f"gd/{k}/stable_rank"]), label=f"init scale {s:g}")
    ax[2].set(xlabel="GD step", ylabel="stable rank", title=f"GD, lr = {config['gd_lr']:g}")
    ax[2].legend(fontsize=7)
    fig.suptitle(f"Frei et al. leaky net, n = {config['n']}, d = {config['d']}, m = {config['m']}, γ = {config['leak']}")
    return {"rank_kkt_gd": fig}


scenario = fs.Scenario(
    name="frei2023_leaky_relu_rank",
    title="Leaky-ReLU nets on nearly orthogonal data: rank ≤ 2 first layer, KKT direction, linear boundary",
    reference="Frei, Vardi, Bartlett, Srebro & Hu, ICLR 2023 (Theorems 3.2, 4.2; Figure 1 trend)",
    config=dict(seed=0, n=20, d=5000, m=20, leak=0.1, mu_power=0.25, init_scale=1e-4, n_fresh=500, log_t1=200.0,
                first_log_t=0.5, n_save=30, rtol=1e-8, atol=1e-10, max_steps=50_000, kkt_saves=10,
                gd_scales=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], gd_lr=0.1, gd_steps=20,
                max_final_stable_rank=2.05, min_agreement=0.95),
    quick=dict(n=10, d=200, m=8, log_t1=50.0, n_save=15, kkt_saves=4, n_fresh=200, gd_steps=5),
    run=run, claims=claims, plot=plot,
)
