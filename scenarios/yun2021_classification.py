"""Yun, Krishnan & Mobahi (ICLR 2021), classification: on separable data with the logistic loss, the direction of
an L-layer orthogonally decomposable network tends to a KKT point of  min ‖ρ‖_{2/L}  s.t.  y_i⟨S x_i, ρ⟩ ≥ 1
(S = I for diagonal nets, the DFT for full-length convolutions); a fully connected net tends to the ℓ2 max-margin
(SVM) direction at any depth (Ji & Telgarsky 2020; Gunasekar et al. 2018).

Data: separable Gaussian points labelled by a sparse teacher (generic inputs: the convolutional nets are complex
diagonal networks in the DFT basis here). Inits: diagonal and convolutional α·1 (identity filters), last layer 0
(sign-free: |a_1|² − |a_L|² = α² ≠ 0, so no coordinate is sign-locked); fully connected α·N(0, 1) entries.
Gradient flow in log time to log t = `log_t1`. Directional convergence is only logarithmic, so the limit is
estimated from the late trajectory with `fs.analysis.limit_direction` (support, signs or phases, active set →
KKT system → certificate) and compared with the convex references: the ℓ1 LP (diagonal), the DFT-ℓ1 SOCP
(convolutional), the SVM (fully connected); for L = 3 (non-convex ℓ_{2/3}) the KKT residual is the claim.
For L = 2 the last iterate's normalised margin is also compared with the reference's (`margin_gap`).

Findings (full config): the diagonal L = 3 run sits near one KKT point until log t ≈ 4·10^5 and then moves to
another (a horizon of 10^4 would certify the transient one). The convolutional L = 2 run passes a saddle it
cannot leave in any simulable time: the DFT-ℓ1 KKT point with the Nyquist coefficient ρ_3 held at 0, where that
coefficient's dual is |v_3| = 1.045 > 1. ρ_3/max|ρ| therefore grows like (log t)^0.045 (measured from the flow:
0.044), so the last iterate stays 1 − cos ≈ 7e-3 from the SOCP minimiser (margin 8e-4 short) until log t ≈ 10^45.
limit_direction identifies the saddle, checks the escape rate and certifies the minimiser; for such a network
the last-iterate margin claim is replaced by that rate (`saddle_escape_rate`).
"""

import jax
import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs

NETWORKS = ("diagonal", "convolutional", "fully_connected")


def initial_network(network, depth, config):
    d, alpha = config["d"], config["alpha"]
    if network == "diagonal":
        return fs.networks.Diagonal.init(d, depth, scale=alpha, shape="last_zero")
    if network == "convolutional":
        return fs.networks.Convolutional.init(d, depth, scale=alpha, shape="last_zero")
    return fs.networks.FullyConnected.init(d, depth, scale=alpha, shape="random", key=jax.random.key(config["seed"]))


def reference(X, y, net):
    """The convex max-margin reference of a depth-2 ODN or a fully connected net (q = 1 or 2 in the network's own
    geometry: the ℓ1 LP, the DFT-ℓ1 SOCP, the SVM), as a unit ℓ2 vector."""
    geometry = net.margin_geometry()
    return unit(fs.analysis.max_margin(X, y, p=geometry.q, transform=np.asarray(geometry.transform)))


unit = fs.analysis.unit


def run(config):
    X, y = fs.data.separable(config["n"], config["d"], config["seed"], config["gap"], config["sparsity"])
    out = {"X": X, "y": y}
    save_log_t = fs.analysis.log_log_grid(config["plot_from_log_t"], config["log_t1"], config["n_save"])
    for network in NETWORKS:
        for depth in config["depths"]:
            net = initial_network(network, depth, config)
            flow = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=config["log_t1"], save_log_t=save_log_t,
                               rtol=config["rtol"], atol=config["atol"], max_steps=config["max_steps"],
                               progress=fs.show_progress())
            limit = fs.analysis.limit_direction(flow, X, y)
            rho = fs.analysis.coordinates(flow)
            geometry = net.margin_geometry()
            p, S = geometry.q, np.asarray(geometry.transform)
            result = {"flow": flow, "coordinates": rho, "limit_direction": limit.direction,
                      "limit_kkt_residual": limit.kkt_residual, "limit_certified": limit.certified,
                      "distance_to_limit": limit.distance}  # 1 − cos to the estimate, per save
            if limit.saddle is not None:
                kept = ("direction", "coordinates", "dual", "predicted_exponent", "measured_exponent", "distance",
                        "log10_escape_log_t")
                result["saddle"] = {k: np.asarray(v) for k, v in limit.saddle._asdict().items() if k in kept}
            if p in (1.0, 2.0):  # a convex problem: a reference from a convex solver
                ref = reference(X, y, net)
                result["reference"] = ref
                result["distance_to_reference"] = 1 - np.real(np.conj(unit(rho)) @ ref)
                result["margin"] = fs.analysis.normalized_margin(rho, X, y, p, transform=S)
                result["reference_margin"] = fs.analysis.normalized_margin(ref, X, y, p, transform=S)
            else:
                late = np.flatnonzero(flow.log_t >= config["kkt_from_log_t"])
                result["kkt_log_t"] = np.asarray(flow.log_t)[late]
                result["kkt_residual"] = np.array([fs.analysis.kkt_residual(
                    rho[k], X, y, depth, S, active_tol=config["trajectory_kkt_tol"],
                    support_tol=config["trajectory_kkt_tol"]) for k in late])
            out[f"{network}_L{depth}"] = result
    return out


def claims(results, config):
    out = []
    for network in NETWORKS:
        for depth in config["depths"]:
            key = f"{network}_L{depth}"
            # A solve that stopped short of its horizon, or a limit estimate that is not certified, says nothing
            # about the limit: no claim holds then.
            ok = bool(results[f"{key}/flow/ok"])
            certified = bool(results[f"{key}/limit_certified"])
            reached = ok and certified
            at = f"log t = {results[f'{key}/flow/log_t'][-1]:.3g}" + ("" if ok else " — horizon NOT reached")
            if f"{key}/reference" in results:
                ref = results[f"{key}/reference"]
                error = float(np.linalg.norm(unit(results[f"{key}/limit_direction"]) - ref))
                last = float(np.linalg.norm(unit(results[f"{key}/coordinates"][-1]) - ref))
                name = {"diagonal": "ℓ1 max margin (LP)", "convolutional": "DFT-ℓ1 max margin (SOCP)",
                        "fully_connected": "ℓ2 max margin (SVM)"}[network]
                out.append(fs.Claim(f"{key}_limit_direction_error", error, config["max_direction_error"],
                                    reached and error <= config["max_direction_error"],
                                    f"‖û − u*‖ between the limit_direction estimate (needs certified, is: {certified}) "
                                    f"and the {name}; the last iterate at {at} is still {last:.2e} away"))
                gamma, gamma_ref = results[f"{key}/margin"][-1], float(results[f"{key}/reference_margin"])
                gap = (gamma_ref - gamma) / gamma_ref
                if f"{key}/saddle/coordinates" in results:
                    out.append(saddle_claim(results, key, config, at, gap, reached))
                    continue
                out.append(fs.Claim(f"{key}_margin_gap", gap, config["max_margin_gap"],
                                    ok and gap <= config["max_margin_gap"],
                                    f"(γ* − γ(last iterate))/γ* at {at}, γ the normalised margin of the {name}: "
                                    f"{gamma:.7f} vs {gamma_ref:.7f}"))
            else:
                residual = float(results[f"{key}/limit_kkt_residual"])
                out.append(fs.Claim(f"{key}_limit_kkt_residual", residual, config["max_kkt_residual"],
                                    reached and residual <= config["max_kkt_residual"],
                                    f"KKT residual of min ‖ρ‖_(2/{depth}) s.t. margins ≥ 1 at the limit_direction "
                                    f"estimate (certified: {certified})"))
                trend = results[f"{key}/kkt_residual"]
                ratio = float(trend[-1] / trend[0])
                out.append(fs.Claim(
                    f"{key}_kkt_residual_decrease", ratio, config["max_kkt_ratio"], ok and ratio <= config["max_kkt_ratio"],
                    f"KKT residual (active/support tolerance {config['trajectory_kkt_tol']:g}) of the iterate at {at} "
                    f"over that at log t = {results[f'{key}/kkt_log_t'][0]:.3g} ({trend[-1]:.2e} / {trend[0]:.2e})"))
    return out


def saddle_claim(results, key, config, at, gap, reached):
    """A flow passing a saddle (fs.analysis.SaddleEscape): its escape rate read from the flow against the dual's."""
    predicted = results[f"{key}/saddle/predicted_exponent"]
    measured = results[f"{key}/saddle/measured_exponent"]
    error = float(np.max(np.abs(measured - predicted) / predicted))
    return fs.Claim(
        f"{key}_saddle_escape_rate", error, config["max_escape_rate_error"],
        reached and error <= config["max_escape_rate_error"],
        f"relative error of the escape rate: ρ_j/max|ρ| for j in {results[f'{key}/saddle/coordinates'].tolist()} grows "
        f"like (log t)^{np.array2string(measured, precision=4)} along the flow vs (log t)^(|v_j| − 1) = "
        f"{np.array2string(predicted, precision=4)} from the saddle's dual; the last iterate at {at} sits at the "
        f"saddle ({gap:.1e} short of the max margin) and reaches the limit near log t ≈ "
        f"10^{float(results[f'{key}/saddle/log10_escape_log_t']):.0f}")


def display(key):
    """ "fully_connected_L2" → "fully connected, L = 2" (in mathtext)."""
    network, depth = key.rsplit("_L", 1)
    return f"{network.replace('_', ' ')}, $L = {depth}$"


def plot(results, config):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, network in zip(axes, NETWORKS):
        for depth, color in zip(config["depths"], ("C0", "C3", "C2")):
            key = f"{network}_L{depth}"
            log_t = results[f"{key}/flow/log_t"]
            keep = np.isfinite(log_t) & (log_t > 0)
            ax.loglog(log_t[keep], results[f"{key}/distance_to_limit"][keep], color=color,
                      label=f"$L = {depth}$: to the limit-direction estimate")
            if f"{key}/distance_to_reference" in results:
                ax.loglog(log_t[keep], results[f"{key}/distance_to_reference"][keep], color=color, ls=":", lw=2,
                          label=f"$L = {depth}$: to the convex reference")
            if f"{key}/kkt_residual" in results:
                ax.loglog(results[f"{key}/kkt_log_t"], results[f"{key}/kkt_residual"], color=color, ls="--",
                          label=f"$L = {depth}$: KKT residual of the iterate")
        ax.set(xlabel=r"$\log t$", title=network.replace("_", " "))
        fs.harness.log_ticks(ax)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("1 − cos(iterate, limit);  KKT residual")
    fig.suptitle("Directional convergence on separable data (logistic loss) — Yun, Krishnan & Mobahi 2021")

    keys = [f"{n}_L{L}" for n in NETWORKS for L in config["depths"]]
    fig2, axes2 = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 3.2))
    for ax, key in zip(axes2, keys):
        est, last = np.abs(results[f"{key}/limit_direction"]), np.abs(unit(results[f"{key}/coordinates"][-1]))
        j = np.arange(len(est))
        ax.bar(j - 0.2, est, width=0.4, color="C0", label="limit estimate")
        ax.bar(j + 0.2, last, width=0.4, color="C1", label="last iterate")
        if f"{key}/reference" in results:
            ax.plot(j, np.abs(results[f"{key}/reference"]), "k_", ms=9, label="convex reference")
        ax.set(title=display(key), xlabel="coordinate $j$")
    axes2[0].set_ylabel(r"$|\rho_j|$ (unit $\ell_2$; $\beta$ for fully connected)")
    axes2[0].legend(fontsize=7)
    fig2.suptitle("Limit direction estimated from the late trajectory vs the last iterate ($\\log t =$ "
                  f"{fs.harness.tex_number(results[f'{keys[0]}/flow/log_t'][-1])})")
    return {"direction_error": fig, "limit_vs_last_iterate": fig2, "saddle_escape": plot_saddle(results, keys)}


def plot_saddle(results, keys):
    """The slowest coordinate of each depth-2 ODN limit: its share of max|ρ| along the flow against its share in
    the limit; for a flow passing a saddle, the predicted (log t)^(|v_j| − 1) growth extrapolated to the limit."""
    keys = [k for k in keys if k.endswith("_L2") and not k.startswith("fully")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        log_t = results[f"{key}/flow/log_t"]
        keep = np.isfinite(log_t) & (log_t > 0)
        share = np.abs(results[f"{key}/coordinates"][keep])
        share = share / share.max(axis=1, keepdims=True)
        limit = np.abs(results[f"{key}/limit_direction"]) / np.abs(results[f"{key}/limit_direction"]).max()
        support = np.flatnonzero(limit > 1e-9)
        j = int(support[np.argmin(share[-1, support] / limit[support])])
        ax.loglog(log_t[keep], share[:, j], "C0", label=rf"$|\rho_{{{j}}}|\,/\,\mathrm{{max}}_k|\rho_k|$ along the flow")
        ax.axhline(limit[j], color="k", ls=":", label=f"its share in the limit ({limit[j]:.3f})")
        if f"{key}/saddle/coordinates" in results:
            p = float(results[f"{key}/saddle/predicted_exponent"][0])
            end = float(results[f"{key}/saddle/log10_escape_log_t"])
            tau = np.logspace(np.log10(log_t[keep][-1]), end, 50)
            ax.loglog(tau, share[-1, j] * (tau / log_t[keep][-1]) ** p, "C3--",
                      label=rf"predicted escape $\propto (\log t)^{{{p:.4f}}}$  ($|v_{{{j}}}| - 1$ at the saddle)")
            ax.set_title(f"{display(key)}: at a saddle until $\\log t \\approx 10^{{{end:.0f}}}$", fontsize=10)
        else:
            ax.set_title(f"{display(key)}: its slowest coordinate", fontsize=10)
        ax.set(xlabel=r"$\log t$", ylabel="share of the largest coordinate")
        fs.harness.log_ticks(ax)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("The coordinate the flow is missing: escape from a saddle on the log log t scale")
    return fig


scenario = fs.Scenario(
    name="yun2021_classification",
    title="Separable classification: linear tensor networks tend to ℓ_{2/L} (ODN) or ℓ2 (FC) max-margin KKT points",
    reference="Yun, Krishnan & Mobahi, A unifying view on implicit bias in training linear neural networks, "
              "ICLR 2021 (classification, Theorems on ODNs); Gunasekar et al. 2018; Ji & Telgarsky 2020",
    config=dict(seed=0, n=12, d=6, gap=0.1, sparsity=2, alpha=0.5, depths=[2, 3], log_t1=1e6, n_save=100,
                plot_from_log_t=0.5, kkt_from_log_t=30.0, trajectory_kkt_tol=1e-2, rtol=1e-8, atol=1e-10,
                max_steps=200_000, max_direction_error=1e-6, max_kkt_residual=1e-8, max_kkt_ratio=0.1,
                max_margin_gap=1e-4, max_escape_rate_error=0.1),
    quick=dict(log_t1=1e4, n_save=40, max_margin_gap=1e-2),
    run=run, claims=claims, plot=plot,
)
