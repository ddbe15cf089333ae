"""Stable rank of ReLU layers against depth on a teacher–student task (beyond Timor, Vardi & Shamir, ALT 2023).

Their positive results for deep nets are theorems without experiments. The argument (their §5, restated here
for regression, as recalled): if θ* = (W_1, …, W_L) is a minimum-norm bias-free ReLU network with
N_θ*(x_i) = y_i, it is balanced (‖W_l‖_F equal, else rescaling layers lowers the norm), its norm is at most
that of any interpolating network of the same depth, and |y_i| ≤ Π_l ‖W_l‖₂ ‖x_i‖. A depth-k teacher with
Π‖W_l‖_F ≤ P, padded with identity layers I_m (‖I_m‖_F = √m, m its width), interpolates at depth L ≥ k, so

    ( Π_l ‖W_l‖₂/‖W_l‖_F )^{1/L}  ≥  ( ρ / (P · m^{(L−k)/2}) )^{1/L},    ρ = max_i |y_i| / ‖x_i‖,

and the mean over layers of ‖W_l‖₂/‖W_l‖_F (≥ the geometric mean) obeys the same bound; with ρ = 1, m = 2
and P = B^k it is the paper's (1/√2)(√2/B)^{k/L} → 1/√2: most layers of a deep min-norm net have stable
rank ‖W‖_F²/‖W‖₂² near 2 or below, more so as L grows. Gradient flow from small initialisation is only
conjectured to approach minimum-norm interpolants; this study measures what it does.

Setup: n unit-norm inputs in R^d labelled by f*(x) = relu(⟨u_1, x⟩) − relu(⟨u_2, x⟩) (orthonormal u_j, so
k = 2, m = 2, P = 2; `fs.data.relu_teacher_student`); students `fs.networks.MLP` of depth L with hidden
width h, entries scale·N(0, 1), squared loss, gradient flow (Tsit5 through the kinks) until loss ≤ target or
the horizon, every seed of a (scale, depth) through one compiled solve. A run whose exact (minimum-norm) solve
stalls at a corner — a sample at kinks in two layers at once, where that field is only linearised and chatters
(deep students only) — is solved again as the smoothed-width limit (`fs.simulate_or_smoothed`: softplus kinks
of widths 1e-3, 1e-4, 1e-5, extrapolated to 0), and the claims count how many did. Runs that still miss the
target are counted and excluded. Measured: the stable rank of every layer at the end and along t; the mean over hidden layers
W_1 … W_{L−1} (the output layer is a vector, stable rank 1) against depth; the bound above at the flow's
solutions.
"""

import equinox as eqx
import jax
import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs

TARGET_REACHED = int(fs.Status.TARGET_REACHED)


def teacher(config):
    return fs.data.relu_teacher_student(config["n"], config["d"], width=2, seed=config["data_seed"])


def min_norm_bound(depth, rho, path_norm=2.0, teacher_depth=2, teacher_width=2):
    """(ρ / (P·m^{(L−k)/2}))^{1/L}: the bound above on the (geometric) mean of ‖W_l‖₂/‖W_l‖_F."""
    return (rho / (path_norm * teacher_width ** ((depth - teacher_depth) / 2))) ** (1.0 / depth)


def layer_ratios(layers):
    """Per layer: stable rank and ‖W‖₂/‖W‖_F (a vector layer: 1, 1). `layers`: arrays (..., rows, cols)."""
    matrix = layers[0].ndim  # the last layer is a vector (one axis fewer) for a scalar output
    sr = [np.asarray(fs.analysis.stable_rank(W if W.ndim == matrix else W[..., None, :])) for W in layers]
    return np.stack(sr, -1), np.stack([1 / np.sqrt(s) for s in sr], -1)


def solve(config, X, y, group):
    """Every seed of one (init scale, depth): one compiled solve, members one at a time (`chunk_size=1`),
    so a member sliding along a kink until `max_steps` does not hold the others in lockstep. A member whose
    exact solve stalls at a corner (a sample at kinks in two layers, where the min-norm field chatters) is
    solved again as the smoothed-width extrapolation (`fs.simulate_or_smoothed`; its message says so)."""
    scale, L = group
    keys = jax.random.split(jax.random.key(100 * L), config["seeds"])
    problems = eqx.filter_vmap(lambda k: fs.Problem(fs.networks.MLP.init(
        k, config["d"], [config["width"]] * (L - 1), "scalar", scale=scale), X, y))(keys)
    return {"flow": fs.simulate_or_smoothed(
        problems, batched=True, chunk_size=1, t1=config["t1"], solver="tsit5", rtol=config["rtol"],
        atol=config["atol"], target_log_loss=np.log(config["target_loss"]), max_steps=config["max_steps"],
        save_log_t=np.log(np.geomspace(1e-2, config["t1"], config["n_save"])),
        smoothed_options=dict(max_steps=config["smoothed_max_steps"]))}


def run(config, resume=None):
    X, y, _, _ = teacher(config)
    names = [f"scale{i}/depth{L}" for i in range(len(config["scales"])) for L in config["depths"]]
    groups = [(float(s), int(L)) for s in config["scales"] for L in config["depths"]]
    members = fs.sweep(groups, "scale, depth", unit="group", cache=resume,
                       each=lambda group: solve(config, X, y, group))
    out = {"X": X, "y": y}
    out.update(zip(names, members, strict=True))
    return out


def measure(r, i, L):
    """Converged mask, per-run final stable ranks (seeds, L) and ratios, and the trajectory's ranks."""
    g = f"scale{i}/depth{L}/flow"
    layers = [r[f"{g}/params/layers/{l}"] for l in range(L)]
    sr_t, ratio_t = layer_ratios(layers)  # (seeds, n_save, L)
    return {"converged": r[f"{g}/status"] == TARGET_REACHED, "sr": sr_t[:, -1], "ratio": ratio_t[:, -1],
            "sr_t": sr_t, "log_t": r[f"{g}/log_t"], "log_loss": r[f"{g}/log_loss"],
            "steps": r[f"{g}/stats/num_steps"], "rejected": r[f"{g}/stats/num_rejected_steps"],
            "crossings": r[f"{g}/stats/kink_crossings"], "fallback": r[f"{g}/stats/smoothed_fallback"]}


def hidden_medians(r, config, i):
    """Per depth: (median over converged runs of the mean hidden-layer stable rank, the values)."""
    out = {}
    for L in config["depths"]:
        m = measure(r, i, L)
        values = m["sr"][m["converged"], : L - 1].mean(1)
        out[L] = (float(np.median(values)) if values.size else np.nan, values)
    return out


def trend_claim(r, config, i):
    med = hidden_medians(r, config, i)
    depths = config["depths"]
    rises = [med[b][0] - med[a][0] for a, b in zip(depths[:-1], depths[1:], strict=True)]
    text = "; ".join(f"L={L}: {med[L][0]:.3f} [{np.min(med[L][1], initial=np.inf):.3f}, "
                     f"{np.max(med[L][1], initial=-np.inf):.3f}] ({med[L][1].size} runs)" for L in depths)
    return fs.Claim.at_most(f"hidden_stable_rank_nonincreasing_in_depth_scale{config['scales'][i]:g}",
                            max(rises), 0.0, f"median [min, max] over converged runs of the mean stable rank of "
                            f"W_1…W_(L−1), init scale {config['scales'][i]:g}: {text}; value = largest rise")


def claims(results, config):
    r = {k: np.asarray(v) for k, v in results.items()}
    rho = float(np.max(np.abs(r["y"]) / np.linalg.norm(r["X"], axis=1)))
    counts, stats, gaps = [], [], []
    for i, scale in enumerate(config["scales"]):
        for L in config["depths"]:
            m = measure(r, i, L)
            c = m["converged"]
            counts.append(int(c.sum()))
            stats.append(f"s={scale:g} L={L}: {int(c.sum())}/{c.size} converged "
                         f"({int(m['fallback'].sum())} by the smoothed-width fallback), steps median "
                         f"{int(np.median(m['steps']))} (rejected {int(np.median(m['rejected']))}), kink crossings "
                         f"median {int(np.median(m['crossings']))}, srank(W_1) "
                         f"{np.median(m['sr'][c, 0]) if c.any() else np.nan:.3f}")
            gm = np.exp(np.log(m["ratio"][c]).mean(1))
            gaps.append(np.min(gm - min_norm_bound(L, rho), initial=np.inf))
    out = [fs.Claim.at_least("every_group_has_two_converged_runs", min(counts), 2,
                             f"loss ≤ {config['target_loss']:g} by t = {config['t1']:g}; runs that miss it are "
                             f"excluded from every other claim: " + "; ".join(stats))]
    out += [trend_claim(r, config, i) for i in range(len(config["scales"]))]
    if len(config["scales"]) > 1:
        med = [hidden_medians(r, config, i) for i in range(len(config["scales"]))]
        diff = [med[-1][L][0] - med[0][L][0] for L in config["depths"]]
        out.append(fs.Claim.at_most("smaller_init_lowers_hidden_stable_rank", max(diff), 0.0,
                                    f"median mean hidden stable rank at scale {config['scales'][-1]:g} minus at "
                                    f"{config['scales'][0]:g}, per depth {config['depths']}: "
                                    + ", ".join(f"{x:+.3f}" for x in diff)))
    out.append(fs.Claim.at_least("min_norm_bound_holds_at_flow_solutions", min(gaps), 0.0,
                                 f"geometric mean over layers of ‖W‖₂/‖W‖_F minus (ρ/(2·2^((L−2)/2)))^(1/L) "
                                 f"(ρ = {rho:.3f}; {', '.join(f'L={L}: {min_norm_bound(L, rho):.3f}' for L in config['depths'])}), "
                                 "smallest over converged runs; a theorem for min-norm nets, measured on the flow's"))
    return out


def solve_names(config):
    """What the figures call each stored solve: "scale0/depth4/flow", member 3 → "init scale 0.1, depth 4, seed 3"
    (for their NOT CONVERGED notes)."""
    def describe(result, member):
        group = result.split("/")
        i, L = int(group[0].removeprefix("scale")), int(group[1].removeprefix("depth"))
        return f"init scale {config['scales'][i]:g}, depth {L}" + ("" if member is None else f", seed {member}")

    return describe


def plot(results, config):
    r = {k: np.asarray(v) for k, v in results.items()}
    depths, scales = config["depths"], config["scales"]
    fig_d, ax = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.8), squeeze=False, sharey=True)
    for i, a in enumerate(ax[0]):
        med = hidden_medians(r, config, i)
        for L in depths:
            m = measure(r, i, L)
            c = m["converged"]
            jitter = np.linspace(-0.12, 0.12, c.size)
            a.scatter(L + jitter[c], m["sr"][c, : L - 1].mean(1), color="C0", s=16,
                      label=r"mean over $W_1, \dots, W_{L-1}$, per seed" if L == depths[0] else None)
            a.scatter(L + jitter[c] + 0.03, m["sr"][c, 0], color="C1", marker="x", s=16,
                      label="$W_1$, per seed" if L == depths[0] else None)
        a.plot(depths, [med[L][0] for L in depths], "k-o", label="median (mean hidden)")
        a.set(xlabel="depth $L$", xticks=depths, title=f"init scale {scales[i]:g}")
    ax[0, 0].set_ylabel(r"final stable rank $\|W\|_F^2/\|W\|_2^2$")
    ax[0, 0].legend(fontsize=7)
    fig_d.suptitle("ReLU students of a width-2 teacher:" + ("\n" if len(scales) < 2 else " ")
                   + "stable rank vs depth (converged runs)", fontsize=9)
    fig_t, ax = plt.subplots(2, len(depths), figsize=(3.6 * len(depths), 5.4), sharex=True, squeeze=False)
    for j, L in enumerate(depths):
        m = measure(r, 0, L)
        seed = int(np.flatnonzero(m["converged"])[0]) if m["converged"].any() else 0
        t = np.exp(m["log_t"][seed])
        for l, style in zip(range(L - 1), fs.harness.series_styles(L - 1)):
            ax[0, j].semilogx(t, m["sr_t"][seed, :, l], **style, label=f"$W_{{{l + 1}}}$")
        ax[1, j].loglog(t, np.exp(m["log_loss"][seed]), "k")
        ax[0, j].set(title=f"depth {L}, seed {seed}, scale {scales[0]:g}", ylabel="stable rank")
        ax[1, j].set(xlabel="$t$", ylabel="loss")
        fs.harness.log_ticks(ax[1, j])
        ax[0, j].legend(fontsize=7)
    describe = solve_names(config)
    return {"stable_rank_vs_depth": fs.harness.describe_solves(fig_d, describe),
            "stable_rank_along_t": fs.harness.describe_solves(fig_t, describe)}


scenario = fs.Scenario(
    name="timor2023_rank_vs_depth",
    title="Deeper ReLU students of a width-2 teacher: does the layers' stable rank fall with depth?",
    reference="Timor, Vardi & Shamir, ALT 2023, §5 (deep ReLU nets biased to low rank; theory only there)",
    config=dict(d=5, n=20, data_seed=0, width=8, depths=[2, 3, 4], scales=[0.1, 0.03], seeds=4, t1=1e5,
                target_loss=1e-6, rtol=1e-7, atol=1e-9, max_steps=12_000, smoothed_max_steps=200_000, n_save=40),
    quick=dict(depths=[2, 3], scales=[0.1], seeds=2),
    showcase=False,  # the full run takes longer than the showcase's budget (README)
    run=run, claims=claims, plot=plot,
)
