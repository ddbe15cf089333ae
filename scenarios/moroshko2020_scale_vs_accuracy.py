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
        rich, extra = (l1.rho, {}) if D == 2 else rich_vertex(sw.beta[-1], X, y, D)
        reduced_error = np.full(sw.beta.shape[:2], np.nan)
        for a in fs.sweep(range(0, len(alphas), config["check_every"]), desc=f"D={D}: reduced ODE"):
            ref = A.reduced_scale_flow(X, y, alphas[a], D, lams).beta
            reduced_error[:, a] = np.linalg.norm(sw.beta[:, a] - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        out[f"D{D}"] = {"beta": sw.beta, "ok": sw.ok, "num_steps": sw.num_steps, "row_wall_s": sw.wall_time_s,
                        "reached": sw.log_inv_eps_reached, "reduced_error": reduced_error,
                        "rich": rich, **extra, "c": A.phase_coordinate(sw.beta, X, y, 2.0 / D, rich),
                        "one_minus_cos_l2": 1 - A.unit(sw.beta) @ A.unit(l2.direction),
                        "l1_gap": l1.margin - np.asarray(A.normalized_margin(sw.beta, X, y, 1.0))}
        if D == 2:  # flow vs the Q_μ minimiser, μ = α²/γ with γ the flow's smallest margin
            gamma = np.min(sw.beta @ (y[:, None] * X).T, axis=-1)
            q = [[A.q_minimizer(X, y, log_inv_mu=np.log(g / a**2)).beta for g, a in zip(row, alphas)] for row in gamma]
            q = np.asarray(q)
            out["D2"]["q_error"] = np.linalg.norm(sw.beta / gamma[..., None] - q, axis=-1) / np.linalg.norm(q, axis=-1)
            out["D2"]["q_c"] = A.phase_coordinate(q, X, y, 1.0, l1.rho)
    taus = np.logspace(0, np.log10(config["q_log_inv_mu_max"]), 40)  # the Q_μ program alone, far beyond float64 ε
    taus = np.concatenate([np.linspace(-8, 0, 12)[:-1], taus])
    q_betas = np.array([A.q_minimizer(X, y, log_inv_mu=t).beta for t in taus])
    out["q_tau"], out["q_gap"] = taus, l1.margin - np.asarray(A.normalized_margin(q_betas, X, y, 1.0))
    out["q_c_of_tau"] = A.phase_coordinate(q_betas, X, y, 1.0, l1.rho)  # c of argmin Q_μ, μ = e^(−τ)
    net = fs.networks.SignedDiagonal.init(config["d"], 2, config["gd_alpha"])
    gd = fs.gradient_descent(fs.Problem(net, X, y, loss="exponential"), lr=config["gd_lr"], steps=config["gd_steps"])
    out["gd"] = gd
    return out


def rich_vertex(betas, X, y, D):
    """ℓ_{2/D} is not convex: read a vertex off each α's deepest-ε state, keep the certified KKT points, and
    use the one with the largest ℓ_{2/D} margin as the rich reference (the smallest α's is reported apart)."""
    vertices = [A.vertex_kkt_point(b, X, y, D) for b in betas]
    margins = np.array([float(A.normalized_margin(v.beta, X, y, 2.0 / D)) for v in vertices])
    certified = np.array([v.kkt_residual <= 1e-8 for v in vertices])
    best = int(np.argmax(np.where(certified, margins, -np.inf)))
    return vertices[best].beta, {"rich_kkt": vertices[best].kkt_residual, "rich_alpha_index": best,
                                 "small_alpha_kkt": vertices[0].kkt_residual, "small_alpha_margin": margins[0],
                                 "small_alpha_support": int(vertices[0].support.sum()), "rich_margin": margins[best]}


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


def q_transition(results):
    """log(1/μ*) where the Q_μ minimiser's c crosses 1/2 (the D = 2 prediction of the transition line)."""
    c_q, tau = results["q_c_of_tau"], results["q_tau"]
    k = np.flatnonzero((c_q[:-1] < 0.5) & (c_q[1:] >= 0.5))[0]
    return tau[k] + (0.5 - c_q[k]) * (tau[k + 1] - tau[k]) / (c_q[k + 1] - c_q[k])


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
    cross, _ = transition(results, 2, config["transition_min_alpha_D"])
    predicted = 2 * np.log10(alphas) + q_transition(results) / np.log(10)
    miss = np.nanmax(np.abs(cross - predicted))
    out.append(fs.Claim.at_most("D2_transition_at_q_prediction", miss, config["max_transition_miss"],
                                f"max |log10 log(1/ε)| between the flow's c = 1/2 contour and the line α²/log(1/ε) = μ* = "
                                f"e^(−{q_transition(results):.3g}) where argmin Q_μ has c = 1/2 (no fit)"))
    if "D3/rich_kkt" in results:
        best = results["alphas"][int(results["D3/rich_alpha_index"])]
        out.append(fs.Claim.at_most("D3_rich_reference_is_kkt_point", results["D3/rich_kkt"], 1e-8,
                                    f"KKT residual of the ℓ_{{2/3}} vertex read off the deepest-ε flow at α = {best:.3g} "
                                    f"(largest ℓ_{{2/3}} margin, {float(results['D3/rich_margin']):.4f}, of the certified ones)"))
        out.append(fs.Claim.at_most("D3_small_alpha_limit_is_another_kkt_point", results["D3/small_alpha_kkt"], 1e-8,
                                    f"α = {alphas[0]:.3g} reaches a different certified KKT point: {int(results['D3/small_alpha_support'])} "
                                    f"non-zeros, ℓ_{{2/3}} margin {float(results['D3/small_alpha_margin']):.4f} < "
                                    f"{float(results['D3/rich_margin']):.4f} (non-convex: the rich limit depends on α)"))
    lag = alphas[None, :] ** 2 * lams[:, None] <= config["lag_alpha2_lam"]
    deep, gap = lag[:, 0] & (lams >= 10), results["D2/l1_gap"][:, 0]
    p = -power_fit(lams[deep], gap[deep])[0]
    tau = np.log(lams[deep] / alphas[0] ** 2)  # log(1/μ) along the cut
    p_inv_log = np.log(tau[-1] / tau[0]) / np.log(lams[deep][-1] / lams[deep][0])
    out.append(fs.Claim("D2_small_alpha_l1_gap_law", p, config["max_gap_power"],
                        bool(np.all(np.diff(gap[deep]) < 0)) and 0 < p <= config["max_gap_power"],
                        f"α = {alphas[0]:.3g}, α²·log(1/ε) ≤ {config['lag_alpha2_lam']:g}: γ₁* − γ₁(β) falls monotonically "
                        f"{gap[deep][0]:.3g} → {gap[deep][-1]:.3g} as log(1/ε) goes {lams[deep][0]:.3g} → {lams[deep][-1]:.3g}: "
                        f"gap ∝ log(1/ε)^(−p), p shown (∝ 1/log(1/μ) would be p ≈ {p_inv_log:.3g}); past α²·log(1/ε) ≈ 1 it "
                        f"drops to {gap[-1]:.2g} at log(1/ε) = {lams[-1]:.3g}"))
    out.append(fs.Claim.at_least("D2_flow_lags_q_minimiser_while_alpha2_log_small", np.min(results["D2/q_error"][lag]), 1e-2,
                                 f"min ‖β/γ − argmin Q_μ‖/‖·‖ over the {lag.sum()} grid points with α²·log(1/ε) ≤ "
                                 f"{config['lag_alpha2_lam']:g}: the flow is not yet at the Q_μ minimiser there"))
    track = (alphas[None, :] ** 2 * lams[:, None] >= config["track_alpha2_lam"]) & (lams[:, None] >= config["track_min_lam"])
    out.append(fs.Claim.at_most("D2_flow_tracks_q_minimiser", np.max(results["D2/q_error"][track]), 1e-2,
                                f"max ‖β/γ − argmin Q_μ‖/‖·‖, μ = α²/γ (γ the flow's smallest margin), over the {track.sum()} "
                                f"grid points with α²·log(1/ε) ≥ {config['track_alpha2_lam']:g} and log(1/ε) ≥ "
                                f"{config['track_min_lam']:g}"))
    tau, qgap = results["q_tau"], np.asarray(results["q_gap"])
    floor = np.flatnonzero((qgap < 1e-12) & (tau > 0))
    ok = (tau >= 3) & (np.arange(tau.size) < (floor[0] if floor.size else tau.size))
    ratio = (qgap[ok] * tau[ok])[0] / (qgap[ok] * tau[ok])[-1]
    rate = -np.polyfit(tau[ok][tau[ok] >= 10], np.log(qgap[ok][tau[ok] >= 10]), 1)[0]
    slack = results["l1_dual_slack"]
    out.append(fs.Claim.at_least("q_gap_faster_than_inverse_log", ratio, 100.0,
                                 f"the Q_μ minimiser's ℓ1 gap × log(1/μ) falls {ratio:.3g}× over log(1/μ) = "
                                 f"{tau[ok][0]:.3g} → {tau[ok][-1]:.3g} (then below 1e-12, round-off, up to log(1/μ) = "
                                 f"{tau[-1]:.3g}): not ∝ 1/log(1/μ) but ≈ μ^r, fitted r = {rate:.3f} (smallest LP dual "
                                 f"slack {np.min(slack[slack > 1e-9]):.3f})"))
    a, b, per_step = gd_extrapolation(results, config)
    log10_wall = np.log10(per_step) + (lams[-1] - a) / (b * np.log(10))
    out.append(fs.Claim.at_least("gd_cannot_reach_deepest_eps", log10_wall, 17.64,
                                 f"GD (α = {config['gd_alpha']:g}, lr {config['gd_lr']:g}) reaches log(1/ε) ≈ {a:.3g} + "
                                 f"{b:.3g}·log k at {per_step:.2g} s/step: log(1/ε) = {lams[-1]:.3g} would take 10^{log10_wall:.3g} s "
                                 f"(threshold: the age of the universe, 10^17.64 s); the flow's row took "
                                 f"{results['D2/row_wall_s'][-1]:.3g} s"))
    return out


LOG_ALPHA, LOG_LAM = r"$\log_{10}\alpha$", r"$\log_{10}\log(1/\varepsilon)$"


def plot(results, config):
    tex = fs.harness.tex_power
    alphas, lams = np.log10(results["alphas"]), np.log10(results["log_inv_eps"])
    depths = config["depths"]
    fig, axes = plt.subplots(1, len(depths), figsize=(5.6 * len(depths), 4.2), squeeze=False, layout="constrained")
    for ax, D in zip(axes[0], depths):
        # c runs from 0 (kernel) to 1 (rich): the colour bar spans that; the few cells below 0 (at the loosest
        # ε, β can still be on the far side of the kernel limit) show as the bar's triangle.
        c = np.asarray(results[f"D{D}/c"])
        below = bool(np.nanmin(c) < 0) if np.isfinite(c).any() else False
        mesh = ax.pcolormesh(alphas, lams, c, vmin=0.0, vmax=1.0, cmap="viridis", shading="nearest")
        ax.contour(alphas, lams, results[f"D{D}/c"], levels=[0.5], colors="w")
        cross, slope = transition(results, D, config["transition_min_alpha_D"])
        keep = np.isfinite(cross)
        if D == 2:  # predicted: c(argmin Q_μ) = 1/2 at μ*, i.e. log(1/ε) = α²/μ*
            tau_star = q_transition(results)
            ax.plot(alphas, 2 * alphas + tau_star / np.log(10), "r--",
                    label=rf"predicted: $\alpha^2/\log(1/\varepsilon) = \mu^* =$ {tex('e', -tau_star)} ($Q_\mu$); "
                          f"measured slope {slope:.2f}")
        elif keep.any():  # no Q_μ for D > 2: the slope-D line through the measured contour's median point
            a0, l0 = np.median(alphas[keep]), np.median(cross[keep])
            ax.plot(alphas, l0 + D * (alphas - a0), "r--",
                    label=rf"$\alpha^{{{D}}}/\log(1/\varepsilon)$ const (slope {D}); measured {slope:.2f}")
        rich = r"$\ell_1$" if D == 2 else rf"$\ell_{{2/{D}}}$ KKT"
        ax.set(xlabel=LOG_ALPHA, ylabel=LOG_LAM + r"  ($\varepsilon$: summed loss)", ylim=(lams[0], lams[-1]),
               title=rf"$D = {D}$: $c = 0$ kernel ($\ell_2$) … 1 rich ({rich})")
        ax.legend(fontsize=7, loc="upper left")
        fig.colorbar(mesh, ax=ax, label=r"$c$ (white: $c = 1/2$)" + (r"; ▼: $c < 0$" if below else ""),
                     extend="min" if below else "neither")
    fig.suptitle(r"$\beta$ between the kernel and rich limits when the loss reaches $\varepsilon$")

    cuts, (ax_a, ax_e, ax_g) = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for a in range(0, len(alphas), 2):
        color = plt.cm.viridis(a / len(alphas))
        ax_a.plot(lams, results["D2/c"][:, a], "-o", ms=3, color=color, label=r"$\alpha =$ " + tex(10, alphas[a], 1))
        if 3 in depths:
            ax_a.plot(lams, results["D3/c"][:, a], ":", color=color)
    ax_a.set(xlabel=LOG_LAM, ylabel="$c$", title="fixed α" + (" (solid D = 2, dotted D = 3)" if 3 in depths else
                                                                 ", D = 2"))
    ax_a.legend(fontsize=6)
    for k in range(0, len(lams), 2):
        color = plt.cm.plasma(k / len(lams))
        ax_e.plot(alphas, results["D2/c"][k], "-o", ms=3, color=color, label=r"$\log(1/\varepsilon) =$ " + tex(10, lams[k], 1))
        ax_e.plot(alphas, results["D2/q_c"][k], "x", color=color)
    ax_e.set(xlabel=LOG_ALPHA, ylabel="$c$", title=r"fixed ε, D = 2 (×: $Q_\mu$ minimiser, $\mu = \alpha^2/\gamma$)")
    ax_e.legend(fontsize=6)
    for a in (0, 2, len(alphas) // 2):  # the flow against log(1/μ), μ = α²/log(1/ε), next to the Q_μ program
        tau_flow = np.log(results["log_inv_eps"] / results["alphas"][a] ** 2)
        ax_g.semilogy(tau_flow, results["D2/l1_gap"][:, a], "-o", ms=3,
                      label=r"flow, $\alpha =$ " + fs.harness.tex_number(results["alphas"][a]))
    tau, qgap = results["q_tau"], np.asarray(results["q_gap"])
    keep = (tau <= 80) & (tau >= 1)
    ax_g.semilogy(tau[keep], np.maximum(qgap[keep], 1e-16), "k:", label=r"argmin $Q_\mu$ (margin ≥ 1)")
    ax_g.set(xlabel=r"$\log(1/\mu) = \log(\log(1/\varepsilon)/\alpha^2)$", ylabel=r"$\gamma_1^* - \gamma_1(\beta)$",
             title=r"$\ell_1$ margin gap (D = 2)", ylim=(1e-16, 1))
    ax_g.legend(fontsize=7)
    return {"phase_diagram": fig, "cuts": cuts}


scenario = fs.Scenario(
    name="moroshko2020_scale_vs_accuracy",
    title="Deep diagonal nets: the implicit bias at accuracy ε depends on α^D / log(1/ε)",
    reference="Moroshko, Gunasekar, Woodworth, Lee, Srebro & Soudry, NeurIPS 2020 (initialization scale vs training accuracy)",
    config=dict(seed=0, n=6, d=12, gap=0.1, depths=[2, 3], log10_alpha_lo=-3.0, log10_alpha_hi=3.0, n_alpha=9,
                log10_lam_lo=0.0, log10_lam_hi=6.0, n_eps=9, rtol=1e-10, atol=1e-12, check_every=2,
                max_reduced_error=1e-7, kernel_mu=100.0, kernel_min_lam=30.0, slope_tolerance=0.3, max_transition_miss=0.2, transition_min_alpha_D=1.0, max_gap_power=0.3,
                lag_alpha2_lam=0.1, track_alpha2_lam=1e4, track_min_lam=1e3, q_log_inv_mu_max=1e6, gd_alpha=1.0, gd_lr=0.05, gd_steps=20000),
    quick=dict(depths=[2], n_eps=5, log10_lam_hi=4.0, check_every=4, gd_steps=2000, q_log_inv_mu_max=1e3),
    run=run, claims=claims, plot=plot,
)
