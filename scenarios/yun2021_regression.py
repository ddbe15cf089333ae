"""Yun, Krishnan & Mobahi (ICLR 2021), regression: for underdetermined squared-loss regression, gradient flow on
a linear tensor network converges to the interpolator that minimises an initialisation-dependent norm; for
diagonal (and orthogonally decomposable) networks it moves from ℓ2-like (large scale α) to ℓ1-like (small α).

Data: n < d Gaussian inputs, y = Xβ* for a 2-sparse teacher; the convolutional nets get circularly even inputs
(x_j = x_{−j mod d}), whose DFT is real, so their filters stay real and even and the network is a *real*
diagonal network in the DFT basis S (Yun, Krishnan & Mobahi, §4). Inits (all sign-free, β(0) = 0 except FC):
- diagonal and convolutional: layers α·1 (α·e_0, the identity filter), last layer 0. Reference: the mirror-map
  limit `fs.analysis.interpolation_limit` (L = 2: hyperbolic-entropy potential; L = 3: the tan·sec² map);
  for the convolutional net in ρ = (real) DFT coordinates with transform Re(S), exact on even data.
- fully connected (hidden width `fc_width`): the balanced rank-one init W_1 = αûe_1ᵀ, W_l = αe_1e_1ᵀ, w_L = αe_1, which stays rank one:
  β = ‖u‖^{L−1}u with u − αû in the row space of X. Its limit is β = X⁺y + κ(I − P)û, κ the root of
  κ = α(‖X⁺y‖² + κ²‖(I − P)û‖²)^{(L−1)/(2L)} (`fs.analysis.rank_one_limit`, derived in its docstring).
Each (network, L) compiles once (Diffrax caches the solve across α), in log time until the loss reaches
`target_loss`, with Kvaerno5 (`solver`): the log-time flow of deep nets from small α is stiff. A claim holds
only if every run reached its target (traj.ok) and interpolates to ‖Xβ − y‖/‖y‖ ≤ `max_residual`.
"""

import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs

NETWORKS = ("diagonal", "convolutional", "fully_connected")


def setup(network, depth, alpha, config):
    """(data X, y; initial model) for one network and scale."""
    d = config["d"]
    even = network == "convolutional"
    X, y = fs.data.underdetermined_regression(config["n"], d, config["seed"], config["sparsity"], symmetric=even)
    if network == "diagonal":
        return X, y, fs.networks.Diagonal.init(d, depth, scale=alpha, shape="last_zero")
    if network == "convolutional":
        return X, y, fs.networks.Convolutional.init(d, depth, scale=alpha, shape="last_zero")
    return X, y, fs.networks.FullyConnected.init(d, depth, config["fc_width"], scale=alpha, shape="balanced")


def reference(network, X, y, model, alpha, depth, S):
    """The exact limit: the mirror map (ODNs, real coordinates on this data) or the rank-one reduced flow (FC)."""
    if network == "fully_connected":
        return fs.analysis.rank_one_limit(X, y, np.ones(X.shape[1]), alpha, depth)
    a0 = np.real(np.asarray(model.margin_geometry().layer_coordinates))
    return fs.analysis.interpolation_limit(X, y, a0, transform=S).rho


def scales(network, config):
    return np.asarray(config["fc_alphas" if network == "fully_connected" else "alphas"], dtype=float)


def run(config):
    out = {}
    for network in NETWORKS:
        alphas = scales(network, config)
        out[f"{network}_alphas"] = alphas
        for depth in config["depths"]:
            key = f"{network}_L{depth}"
            X, y, _ = setup(network, depth, 1.0, config)
            models = [setup(network, depth, a, config)[2] for a in alphas]
            S = np.real(np.asarray(models[0].margin_geometry().transform))  # ρ is real: S x is real for even x
            # One compilation serves the whole sweep: the models differ only in their values.
            flows = [fs.simulate(fs.Problem(m, X, y, "squared"), log_t1=config["log_t1"], n_save=config["n_save"],
                                 rtol=config["rtol"], atol=config["atol"], max_steps=config["max_steps"],
                                 solver=config["solver"], target_log_loss=float(np.log(config["target_loss"]))) for m in fs.sweep(models, key)]
            finals = [flow.final for flow in flows]
            out[key] = {
                "flow": {f"alpha_{i}": flow for i, flow in enumerate(flows)},
                "rho": np.stack([np.real(fs.analysis.coordinates(m)) for m in finals]),
                "reference": np.stack([reference(network, X, y, m, a, depth, S) for m, a in zip(models, alphas)]),
                "min_l2": fs.analysis.min_norm_interpolant(X, y, 2.0, transform=S),
                "min_l1": fs.analysis.min_norm_interpolant(X, y, 1.0, transform=S),
                "residual": np.linalg.norm(np.stack([m.beta() for m in finals]) @ X.T - y, axis=1) / np.linalg.norm(y),
            }
    return out


def relative_error(rho, reference):
    return np.linalg.norm(rho - reference, axis=-1) / np.linalg.norm(reference, axis=-1)


def claims(results, config):
    out = []
    names = {"diagonal": "mirror map (interpolation_limit)", "convolutional": "mirror map in real DFT coordinates "
             "(even data)", "fully_connected": "rank-one reduced flow, closed form up to a scalar root"}
    for network in NETWORKS:
        for depth in config["depths"]:
            key = f"{network}_L{depth}"
            error = relative_error(results[f"{key}/rho"], results[f"{key}/reference"])
            residual = results[f"{key}/residual"]
            reached = all(bool(results[f"{key}/flow/alpha_{i}/ok"]) for i in range(len(error)))
            converged = reached and bool(np.all(residual <= config["max_residual"]))
            worst = float(np.max(error))
            out.append(fs.Claim(
                f"{network}_L{depth}_limit_error", worst, config["max_limit_error"],
                converged and worst <= config["max_limit_error"],
                f"max over {len(error)} scales α ∈ [{min(scales(network, config)):g}, {max(scales(network, config)):g}] of "
                f"‖ρ_flow − ρ_ref‖/‖ρ_ref‖, reference: {names[network]}; every run reached its target: {reached}, and "
                f"‖Xβ − y‖/‖y‖ ≤ {np.max(residual):.1e} (need ≤ {config['max_residual']:g})"))
    return out


DEPTH_STYLE = {2: dict(ls="-", marker="o"), 3: dict(ls="--", marker="s"), 4: dict(ls=":", marker="^")}
NETWORK_NAMES = {"diagonal": "diagonal", "convolutional": "convolutional", "fully_connected": "fully connected"}
REL_ERROR = r"$\|\rho(\infty) - \rho_{\rm ref}\| \,/\, \|\rho_{\rm ref}\|$"


def plot(results, config):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, network in zip(axes, NETWORKS):
        alphas = results[f"{network}_alphas"]
        for depth in config["depths"]:
            key = f"{network}_L{depth}"
            rho = results[f"{key}/rho"]
            for ref, color, norm in (("min_l2", "C0", r"$\ell_2$"), ("min_l1", "C3", r"$\ell_1$")):
                ax.loglog(alphas, relative_error(rho, results[f"{key}/{ref}"]), color=color, ms=3.5,
                          **DEPTH_STYLE[depth], label=f"$L = {depth}$: to the min-{norm} interpolant")
        space = r"$\beta$" if network == "fully_connected" else r"$\rho$ (DFT)" if network == "convolutional" \
            else r"$\rho = \beta$"
        ax.set(xlabel=r"initialisation scale $\alpha$", title=f"{NETWORK_NAMES[network]} network, in {space}")
        fs.harness.log_ticks(ax)
    axes[0].set_ylabel(REL_ERROR)
    axes[0].legend(fontsize=7)
    fig.suptitle(r"Gradient-flow limit vs $\alpha$: $\ell_1$-like (small $\alpha$) to $\ell_2$-like (large $\alpha$)"
                 " — Yun, Krishnan & Mobahi 2021")

    fig2, (ax_c, ax_e) = plt.subplots(1, 2, figsize=(11.5, 3.8))
    key, alphas = "diagonal_L2", results["diagonal_alphas"]
    rho = results[f"{key}/rho"]
    for j in range(rho.shape[1]):
        ax_c.semilogx(alphas, rho[:, j], color=f"C{j % 10}", marker="o", ms=3)
        for ref, x, mk in (("min_l1", alphas[0], "<"), ("min_l2", alphas[-1], ">")):
            ax_c.plot(x, results[f"{key}/{ref}"][j], mk, color=f"C{j % 10}", ms=7, mfc="none")
    ax_c.set(xlabel=r"$\alpha$", ylabel=r"coordinates of $\beta(\infty)$",
             title=r"diagonal, $L = 2$: flow (lines); min-$\ell_1$ ◁ and min-$\ell_2$ ▷ interpolants")
    fs.harness.log_ticks(ax_c)
    for network, color in zip(NETWORKS, ("C0", "C2", "C4")):
        for depth in config["depths"]:
            key = f"{network}_L{depth}"
            ax_e.loglog(results[f"{network}_alphas"], relative_error(results[f"{key}/rho"], results[f"{key}/reference"]),
                        color=color, ms=3.5, **DEPTH_STYLE[depth], label=f"{NETWORK_NAMES[network]}, $L = {depth}$")
    ax_e.axhline(config["max_limit_error"], color="k", lw=0.8, ls="-.", label="claimed bound")
    ax_e.set(xlabel=r"$\alpha$", ylabel=r"$\|\rho_{\rm flow} - \rho_{\rm ref}\| \,/\, \|\rho_{\rm ref}\|$",
             title="flow vs exact reference limit")
    fs.harness.log_ticks(ax_e)
    ax_e.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return {"distance_to_l1_l2": fig, "coordinates_and_error": fig2}


scenario = fs.Scenario(
    name="yun2021_regression",
    title="Underdetermined regression: the gradient-flow limit is the interpolation-norm minimiser (ℓ1 ↔ ℓ2 in α)",
    reference="Yun, Krishnan & Mobahi, A unifying view on implicit bias in training linear neural networks, "
              "ICLR 2021 (regression with linear tensor networks); Woodworth et al., COLT 2020",
    config=dict(seed=0, n=5, d=12, sparsity=2, alphas=[float(a) for a in np.logspace(-2, 4, 13)],
                fc_alphas=[float(a) for a in np.logspace(-5, 1, 13)], fc_width=12, depths=[2, 3], log_t1=60.0, target_loss=1e-22,
                n_save=40, rtol=1e-8, atol=1e-10, solver="kvaerno5", max_steps=20_000, max_limit_error=1e-6, max_residual=1e-9),
    quick=dict(alphas=[1e-2, 1.0, 1e4], fc_alphas=[1e-5, 1e-2, 10.0], fc_width=2, n_save=10),
    run=run, claims=claims, plot=plot,
)
