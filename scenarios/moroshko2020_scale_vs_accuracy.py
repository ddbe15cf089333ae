"""Moroshko, Gunasekar, Woodworth, Lee, Srebro & Soudry (NeurIPS 2020), "Implicit bias in deep linear
classification: initialization scale vs training accuracy": for β = u₊^D − u₋^D, u±(0) = α·1, exponential loss,
the predictor at the moment the training loss reaches ε is kernel-like (ℓ2 max margin) or rich (ℓ1 for D = 2,
an ℓ_{2/D} KKT point for D > 2) depending on α and ε together, through μ = α^D / log(1/ε).

Data: n Gaussian points in R^d, separable through the origin. ε is the paper's SUMMED loss; flowsim trains the
mean loss to log L = log ε − log n (`fs.analysis.mean_log_loss`). Each row of the sweep (one ε, all α) is one
vmapped solve over α and over `target_log_loss`, checked against the reduced ODE (`fs.analysis.reduced_scale_flow`).
Position between the regimes: c = (γ_q(β) − γ_q(ℓ2)) / (γ_q(rich) − γ_q(ℓ2)), γ_q the normalised ℓ_{2/D} margin.
D = 2 is compared with the Q_μ minimiser (Woodworth et al. 2020), μ = α²/γ, γ the flow's smallest margin.
GD: plain gradient descent at α = `gd_alpha`, its log(1/ε) against log k fitted and extrapolated.
"""

import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs

A = fs.analysis


def run(config):
    X, y = fs.data.separable(config["n"], config["d"], seed=config["seed"], gap=config["gap"])
    alphas = np.logspace(config["log10_alpha_lo"], config["log10_alpha_hi"], config["n_alpha"])
    lams = np.logspace(config["log10_lam_lo"], config["log10_lam_hi"], config["n_eps"])  # log(1/ε), summed loss
    l2, l1 = A.max_margin_solution(X, y, 2.0), A.max_margin_solution(X, y, 1.0)
    out = {"X": X, "y": y, "alphas": alphas, "log_inv_eps": lams, "l2": l2.direction, "l1": l1.rho,
           "l1_margin": l1.margin, "l1_dual_slack": A.l1_dual_slack(X, y)}
    for D in config["depths"]:
        sw = A.scale_accuracy_sweep(X, y, D, alphas, lams, rtol=config["rtol"], atol=config["atol"],
                                    progress=lambda rows: fs.sweep(rows, desc=f"D={D}: rows of ε"))
        rich = l1.rho if D == 2 else A.vertex_kkt_point(sw.beta[-1, 0], X, y, D)
        reduced_error = np.full(sw.beta.shape[:2], np.nan)
        for a in fs.sweep(range(0, len(alphas), config["check_every"]), desc=f"D={D}: reduced ODE"):
            ref = A.reduced_scale_flow(X, y, alphas[a], D, lams).beta
            reduced_error[:, a] = np.linalg.norm(sw.beta[:, a] - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        out[f"D{D}"] = {"beta": sw.beta, "ok": sw.ok, "num_steps": sw.num_steps, "row_wall_s": sw.wall_time_s,
                        "reached": sw.log_inv_eps_reached, "reduced_error": reduced_error,
                        "rich": rich if D == 2 else rich.beta, "rich_kkt": 0.0 if D == 2 else rich.kkt_residual,
                        "c": A.phase_coordinate(sw.beta, X, y, 2.0 / D, rich if D == 2 else rich.beta),
                        "one_minus_cos_l2": 1 - A.unit(sw.beta) @ A.unit(l2.direction),
                        "l1_gap": l1.margin - np.asarray(A.normalized_margin(sw.beta, X, y, 1.0))}
        if D == 2:  # flow vs the Q_μ minimiser, μ = α²/γ with γ the flow's smallest margin
            gamma = np.min(sw.beta @ (y[:, None] * X).T, axis=-1)
            q = [[A.q_minimizer(X, y, log_inv_mu=np.log(g / a**2)).beta for g, a in zip(row, alphas)] for row in gamma]
            q = np.asarray(q)
            out["D2"]["q_error"] = np.linalg.norm(sw.beta / gamma[..., None] - q, axis=-1) / np.linalg.norm(q, axis=-1)
            out["D2"]["q_c"] = A.phase_coordinate(q, X, y, 1.0, l1.rho)
    taus = np.logspace(0, np.log10(config["q_log_inv_mu_max"]), 40)  # the Q_μ program alone, far beyond float64 ε
    out["q_tau"] = taus
    out["q_gap"] = [l1.margin - float(A.normalized_margin(A.q_minimizer(X, y, log_inv_mu=t).beta, X, y, 1.0)) for t in taus]
    net = fs.networks.SignedDiagonal.init(config["d"], 2, config["gd_alpha"])
    gd = fs.gradient_descent(fs.Problem(net, X, y, loss="exponential"), lr=config["gd_lr"], steps=config["gd_steps"])
    out["gd"] = gd
    return out


def power_fit(x, y):
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return np.polyfit(np.log10(x[keep]), np.log10(y[keep]), 1)


def transition(results, D, min_alpha_D):
    """log10 log(1/ε) where c rises through 1/2, per α with α^D ≥ min_alpha_D (those that start kernel-like;
    smaller α cross 1/2 at the end of the early transient, c < 0), NaN elsewhere; and the slope vs log10 α."""
    c, lam, alphas = results[f"D{D}/c"], np.log10(results["log_inv_eps"]), np.log10(results["alphas"])
    cross = np.full(len(alphas), np.nan)
    for a in np.flatnonzero(results["alphas"] ** D >= min_alpha_D):
        up = np.flatnonzero((c[:-1, a] < 0.5) & (c[1:, a] >= 0.5))
        if up.size:
            k = up[-1]
            cross[a] = lam[k] + (0.5 - c[k, a]) * (lam[k + 1] - lam[k]) / (c[k + 1, a] - c[k, a])
    keep = np.isfinite(cross)
    slope = np.polyfit(alphas[keep], cross[keep], 1)[0] if keep.sum() >= 2 else np.nan
    return cross, slope


def gd_extrapolation(results, config):
    """Fit log(1/ε) = a + b log k to GD's last decade of steps k; seconds per step from its wall time."""
    k = np.exp(results["gd/log_t"]) / config["gd_lr"]  # GD saves t = k·lr
    lam = -A.summed_log_loss(results["gd/log_loss"], config["n"])
    keep = k >= k.max() / 10
    b, a = np.polyfit(np.log(k[keep]), lam[keep], 1)
    return a, b, float(results["gd/stats/wall_time_s"]) / k.max()


def claims(results, config):
    out = []
    lams, alphas = results["log_inv_eps"], results["alphas"]
    for D in config["depths"]:
        # β = u₊^D − u₋^D is a difference of two numbers of size ~α^D: the flow's relative accuracy on β is rtol
        # times cond = ‖u₊^D + u₋^D‖/‖β‖ ≈ √(1 + 4dα^{2D}/‖β‖²) (1 for small α, ~α^D/‖β‖ in the kernel regime)
        beta_norm = np.linalg.norm(results[f"D{D}/beta"], axis=-1)
        cond = np.sqrt(1 + 4 * config["d"] * alphas[None, :] ** (2 * D) / beta_norm**2)
        err = np.nanmax(results[f"D{D}/reduced_error"] / cond)
        ok = bool(np.all(results[f"D{D}/ok"]))
        out.append(fs.Claim(f"D{D}_flow_matches_reduced_ode", err, config["max_reduced_error"],
                            ok and err <= config["max_reduced_error"],
                            f"max ‖β_flow − β_reduced‖/‖β_reduced‖ / cond over every checked (α, ε) (raw max "
                            f"{np.nanmax(results[f'D{D}/reduced_error']):.2g} at cond up to {np.max(cond):.2g}); all "
                            f"{results[f'D{D}/ok'].size} targets reached: {ok}"))
        mu = alphas[None, :] ** D / lams[:, None]
        mild = (mu >= config["kernel_mu"]) & (lams[:, None] >= config["kernel_min_lam"])
        out.append(fs.Claim.at_most(f"D{D}_large_alpha_mild_eps_is_l2", np.max(results[f"D{D}/one_minus_cos_l2"][mild]), 1e-3,
                                    f"max 1 − cos(β, ℓ2 max margin) over the {mild.sum()} grid points with "
                                    f"α^D/log(1/ε) ≥ {config['kernel_mu']:g} and log(1/ε) ≥ {config['kernel_min_lam']:g}"))
        cross, slope = transition(results, D, config["transition_min_alpha_D"])
        out.append(fs.Claim(f"D{D}_transition_slope", slope, D, abs(slope - D) <= config["slope_tolerance"],
                            f"d log log(1/ε) / d log α along the c = 1/2 contour ({np.isfinite(cross).sum()} α with "
                            f"α^D ≥ {config['transition_min_alpha_D']:g}), "
                            f"against D = {D} from μ = α^D/log(1/ε) fixed"))
    if "D3/rich_kkt" in results:
        out.append(fs.Claim.at_most("D3_rich_reference_is_kkt_point", results["D3/rich_kkt"], 1e-6,
                                    "KKT residual of the ℓ_{2/3} vertex read off the smallest-α, deepest-ε flow"))
    gap = results["D2/l1_gap"][:, 0]
    deep = lams >= 10
    p = -power_fit(lams[deep], gap[deep])[0]
    out.append(fs.Claim("D2_small_alpha_l1_gap_law", p, 0.0, bool(np.all(np.diff(gap[deep]) < 0)) and p > 0,
                        f"α = {alphas[0]:.3g}: γ₁* − γ₁(β) falls monotonically from {gap[deep][0]:.3g} to {gap[-1]:.3g} as "
                        f"log(1/ε) goes {lams[deep][0]:.3g} → {lams[-1]:.3g}; measured law gap ∝ log(1/ε)^(−p) (p shown; "
                        f"at fixed α that is ∝ μ^p); the Q_μ minimiser at the deepest ε is {results['D2/q_error'][-1, 0]:.2g} "
                        f"away (relative): the flow lags it"))
    track = (alphas[None, :] >= config["track_alpha"]) & (lams[:, None] >= config["track_lam"])
    out.append(fs.Claim.at_most("D2_flow_tracks_q_minimiser", np.max(results["D2/q_error"][track]), 1e-2,
                                f"max ‖β/γ − argmin Q_μ‖/‖·‖, μ = α²/γ, over α ≥ {config['track_alpha']:g}, "
                                f"log(1/ε) ≥ {config['track_lam']:g} (min over α = {alphas[0]:.3g}: "
                                f"{np.min(results['D2/q_error'][:, 0]):.3g}: no tracking there)"))
    tau, qgap = results["q_tau"], np.asarray(results["q_gap"])
    ok = (qgap > 1e-13) & (tau >= 3)
    ratio = (qgap[ok] * tau[ok])[0] / (qgap[ok] * tau[ok])[-1]
    out.append(fs.Claim.at_least("q_gap_faster_than_inverse_log", ratio, 100.0,
                                 f"the Q_μ minimiser's ℓ1 gap × log(1/μ) falls {ratio:.3g}× over log(1/μ) = "
                                 f"{tau[ok][0]:.3g} → {tau[ok][-1]:.3g}: not ∝ 1/log(1/μ); it decays like "
                                 f"μ^s, smallest LP dual slack s = {np.min(results['l1_dual_slack'][results['l1_dual_slack'] > 1e-9]):.3f}"))
    a, b, per_step = gd_extrapolation(results, config)
    log10_wall = np.log10(per_step) + (lams[-1] - a) / (b * np.log(10))
    out.append(fs.Claim.at_least("gd_cannot_reach_deepest_eps", log10_wall, 17.64,
                                 f"GD (α = {config['gd_alpha']:g}, lr {config['gd_lr']:g}) reaches log(1/ε) ≈ {a:.3g} + "
                                 f"{b:.3g}·log k at {per_step:.2g} s/step: log(1/ε) = {lams[-1]:.3g} would take 10^{log10_wall:.3g} s "
                                 f"(threshold: the age of the universe, 10^17.64 s); the flow's row took "
                                 f"{results['D2/row_wall_s'][-1]:.3g} s"))
    return out


def plot(results, config):
    alphas, lams = np.log10(results["alphas"]), np.log10(results["log_inv_eps"])
    depths = config["depths"]
    fig, axes = plt.subplots(1, len(depths), figsize=(5.6 * len(depths), 4.2), squeeze=False, layout="constrained")
    for ax, D in zip(axes[0], depths):
        mesh = ax.pcolormesh(alphas, lams, results[f"D{D}/c"], vmin=-0.2, vmax=1.0, cmap="viridis", shading="nearest")
        ax.contour(alphas, lams, results[f"D{D}/c"], levels=[0.5], colors="w")
        cross, slope = transition(results, D, config["transition_min_alpha_D"])
        keep = np.isfinite(cross)
        if keep.any():  # μ = α^D / log(1/ε) constant through the measured contour's median point
            a0, l0 = np.median(alphas[keep]), np.median(cross[keep])
            ax.plot(alphas, l0 + D * (alphas - a0), "r--", label=f"μ = α^{D}/log(1/ε) const (slope {D}); measured {slope:.2f}")
        ax.set(xlabel="log10 α", ylabel="log10 log(1/ε)  (ε: summed loss)", ylim=(lams[0], lams[-1]),
               title=f"D = {D}: c = 0 kernel (ℓ2) … 1 rich ({'ℓ1' if D == 2 else 'ℓ_{2/D} KKT'})")
        ax.legend(fontsize=7, loc="upper left")
        fig.colorbar(mesh, ax=ax, label="c (white: c = 1/2)")
    fig.suptitle("Where the flow's β sits between the kernel and rich limits when the loss reaches ε")

    cuts, (ax_a, ax_e, ax_g) = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for a in range(0, len(alphas), 2):
        ax_a.plot(lams, results["D2/c"][:, a], "-o", ms=3, color=plt.cm.viridis(a / len(alphas)), label=f"α = 10^{alphas[a]:.2g}")
        if 3 in depths:
            ax_a.plot(lams, results["D3/c"][:, a], ":", color=plt.cm.viridis(a / len(alphas)))
    ax_a.set(xlabel="log10 log(1/ε)", ylabel="c", title="fixed α (solid D = 2, dotted D = 3)")
    ax_a.legend(fontsize=6)
    for k in range(0, len(lams), 2):
        ax_e.plot(alphas, results["D2/c"][k], "-o", ms=3, color=plt.cm.plasma(k / len(lams)), label=f"log(1/ε) = 10^{lams[k]:.2g}")
        ax_e.plot(alphas, results["D2/q_c"][k], "x", color=plt.cm.plasma(k / len(lams)))
    ax_e.set(xlabel="log10 α", ylabel="c", title="fixed ε, D = 2 (×: Q_μ minimiser, μ = α²/γ)")
    ax_e.legend(fontsize=6)
    ax_g.loglog(results["log_inv_eps"], results["D2/l1_gap"][:, 0], "-o", label=f"flow, α = {results['alphas'][0]:.2g}")
    ax_g.loglog(results["log_inv_eps"], results["D2/l1_gap"][:, len(alphas) // 2], "-s", label=f"flow, α = {results['alphas'][len(alphas) // 2]:.2g}")
    tau = results["q_tau"][results["q_tau"] < 600]
    ax_g.loglog(np.exp(tau) * results["alphas"][0] ** 2, np.maximum(results["q_gap"][: len(tau)], 1e-17), "k:",
                label=f"Q_μ minimiser, μ = α²/log(1/ε), α = {results['alphas'][0]:.2g}")
    ax_g.set(xlabel="log(1/ε)", ylabel="γ₁* − γ₁(β)", title="ℓ1 margin gap (D = 2)", ylim=(1e-16, 1))
    ax_g.legend(fontsize=7)
    return {"phase_diagram": fig, "cuts": cuts}


scenario = fs.Scenario(
    name="moroshko2020_scale_vs_accuracy",
    title="Deep diagonal nets: the implicit bias at accuracy ε depends on α^D / log(1/ε)",
    reference="Moroshko, Gunasekar, Woodworth, Lee, Srebro & Soudry, NeurIPS 2020 (initialization scale vs training accuracy)",
    config=dict(seed=0, n=6, d=12, gap=0.1, depths=[2, 3], log10_alpha_lo=-3.0, log10_alpha_hi=3.0, n_alpha=9,
                log10_lam_lo=0.0, log10_lam_hi=6.0, n_eps=9, rtol=1e-10, atol=1e-12, check_every=2,
                max_reduced_error=1e-7, kernel_mu=100.0, kernel_min_lam=30.0, slope_tolerance=0.3, transition_min_alpha_D=1.0, max_gap_power=0.2,
                track_alpha=1.0, track_lam=1e3, q_log_inv_mu_max=1e8, gd_alpha=1.0, gd_lr=0.05, gd_steps=20000),
    quick=dict(depths=[2], log10_alpha_lo=-1.0, n_alpha=5, n_eps=5, log10_lam_hi=4.0, check_every=4, gd_steps=2000, q_log_inv_mu_max=1e3),
    run=run, claims=claims, plot=plot,
)
