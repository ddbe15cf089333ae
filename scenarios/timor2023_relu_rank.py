"""Does gradient flow on a 2×2 ReLU network find low-rank weights? (Timor, Vardi & Shamir, ALT 2023, §3.2).

The authors' setup, from their code: x ↦ W₂ relu(W₁x), no biases; x₁ = (1, 0.99)/‖·‖, x₂ = (−1, 0.99)/‖·‖,
targets e₁, e₂; every row of W₁ and W₂ uniform in a disk of radius 1e-4; mean squared error (= flowsim's
"squared" on this data); a run counts when its loss < 1e-4. They ran GD with lr 1e-4 for 3·10⁶ epochs (t = 300).
Here: all seeds as ONE vmapped gradient-flow solve (Tsit5, through the kinks by the minimum-norm Clarke
subgradient) to a long horizon, read off at t = 300 and at the end.

Measured: a rank-1 zero-loss solution exists (so rank-2 outcomes are not forced by the data); the fraction of
converged runs with stable rank of W₁ ≥ 1.9 and ≥ 1.5 against the paper's 43/79 and ≈66/79 (binomial CIs); the
rank-2 rate against the Theorem 3 bound 2(θ/2π)² — the probability that at initialisation each hidden unit is
active on exactly one input, counted here too; and why the other runs stop (dead units, a sample no unit sees).
"""

import equinox as eqx
import jax
import matplotlib.pyplot as plt
import numpy as np
import scipy.stats

import flowsim as fs

PAPER_COUNTS = np.array([4, 4, 2, 3, 5, 6, 9, 3, 43])  # stable rank of W₁, 9 bins from ≈1.2 to 2.0, 79 runs
PAPER_RUNS, PAPER_CONVERGED = 288, 79


def data():
    X = np.array([[1.0, 0.99], [-1.0, 0.99]])
    return X / np.linalg.norm(X, axis=1, keepdims=True), np.eye(2)


def wilson(k, n, level=0.95):
    z = scipy.stats.norm.ppf(0.5 + level / 2)
    p, den = k / n, 1 + z**2 / n
    mid, half = (p + z**2 / (2 * n)) / den, z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return mid - half, mid + half


def outcome(W1, W2, log_loss, X, target, dead_below):
    """Per run: converged, and for the others why: units dead on both inputs, inputs no unit sees. Unit u
    counts as active on x_i when it adds more than `dead_below` to the output, ‖W₂[:, u]‖·relu(⟨w_u, x_i⟩)
    (a unit sliding along its kink, or shrunk to ~1e-6, is dead in effect)."""
    z = np.einsum("bud,nd->bun", W1, X)
    active = np.linalg.norm(W2, axis=1)[:, :, None] * np.maximum(z, 0.0) > dead_below
    return {"converged": log_loss < np.log(target), "dead_units": (~active.any(2)).sum(1),
            "dead_samples": (~active.any(1)).sum(1), "stable_rank_W1": np.asarray(fs.analysis.stable_rank(W1)),
            "stable_rank_W2": np.asarray(fs.analysis.stable_rank(W2)), "log_loss": log_loss}


def run(config):
    X, Y = data()
    keys = jax.random.split(jax.random.key(0), config["seeds"])
    problems = eqx.filter_vmap(lambda k: fs.Problem(fs.networks.MLP.init(
        k, 2, [2], 2, scale=config["radius"], distribution="ball"), X, Y))(keys)
    grid = np.log(np.unique(np.concatenate([np.geomspace(1e-2, config["t_long"], config["n_save"]),
                                            [config["t_paper"]]])))
    traj = fs.simulate_batch(problems, t1=config["t_long"], solver="tsit5", save_log_t=grid,
                             rtol=config["rtol"], atol=config["atol"], max_steps=config["max_steps"])
    W1, W2 = np.asarray(traj.params.layers[0]), np.asarray(traj.params.layers[1])
    ll = np.asarray(traj.log_loss)
    log_t = np.asarray(traj.log_t[0])
    paper = int(np.argmin(np.abs(log_t - np.log(config["t_paper"]))))
    init = np.einsum("bud,nd->bun", W1[:, 0], X) > 0
    one_each = np.array([[1, 0], [0, 1]], bool)
    out = {"log_t": log_t, "log_loss": ll, "ok": np.asarray(traj.ok), "num_steps": np.asarray(traj.stats["num_steps"]),
           "W1_final": W1[:, -1], "W2_final": W2[:, -1], "init_one_input_each": np.all(init == one_each, (1, 2)) | np.all(init == ~one_each, (1, 2))}
    for name, i in (("paper", paper), ("long", -1)):
        for key, value in outcome(W1[:, i], W2[:, i], ll[:, i], X, config["target_loss"], config["dead_below"]).items():
            out[f"{name}/{key}"] = value
    # A rank-1 zero-loss solution: W₁ = [w; −w] with w = (c, 0) splits the inputs; W₂ rescales each.
    c = 1.0
    W1r = np.array([[c, 0.0], [-c, 0.0]])
    W2r = np.diag([1 / (c * X[0, 0]), 1 / (c * -X[1, 0])])
    rank1 = fs.Problem(fs.networks.MLP([W1r, W2r]), X, Y)
    out["rank1/loss"], out["rank1/stable_rank"] = float(rank1.loss_value()), float(fs.analysis.stable_rank(W1r))
    out["theta"] = float(np.arccos(X[0] @ X[1]))
    return out


def claims(results, config):
    r = {k: np.asarray(v) for k, v in results.items()}
    n = r["ok"].size
    conv = r["paper/converged"]
    k = int(conv.sum())
    out = [fs.Claim("rank1_zero_loss_solution_exists", float(r["rank1/loss"]), 1e-28,
                    r["rank1/loss"] <= 1e-28 and abs(r["rank1/stable_rank"] - 1) < 1e-12,
                    "W₁ = [[1, 0], [−1, 0]] (rank 1), W₂ = diag(1/x₁₁, 1/|x₂₁|): loss (mean ½‖f − y‖²)"),
           fs.Claim("all_solves_reached_horizon", float(r["ok"].mean()), 1.0, bool(r["ok"].all()),
                    f"{int(r['ok'].sum())}/{n} members reached t = {config['t_long']:g}; steps max "
                    f"{int(r['num_steps'].max())}, mean {r['num_steps'].mean():.0f}")]
    lo, hi = wilson(k, n)
    paper = PAPER_CONVERGED / PAPER_RUNS
    out.append(fs.Claim("converged_fraction_matches_paper", k / n, paper, lo <= paper <= hi,
                        f"loss < {config['target_loss']:g} at t = {config['t_paper']:g}: {k}/{n}, 95% CI "
                        f"[{lo:.3f}, {hi:.3f}]; paper 79/288 = {paper:.3f}"))
    for thr, paper_k, note in ((1.9, 43, "top bin"), (1.5, int(PAPER_COUNTS[4:].sum()), "bins 5–9, edges ≈1.56–2.0")):
        top = int((r["paper/stable_rank_W1"][conv] >= thr).sum())
        lo, hi = wilson(top, max(k, 1))
        out.append(fs.Claim(f"converged_stable_rank_ge_{thr}_matches_paper", top / max(k, 1), paper_k / 79,
                            k > 0 and lo <= paper_k / 79 <= hi,
                            f"{top}/{k} converged runs with srank(W₁) ≥ {thr}, 95% CI [{lo:.3f}, {hi:.3f}]; "
                            f"paper {paper_k}/79 ({note})"))
    bound = 2 * (r["theta"] / (2 * np.pi)) ** 2
    near2 = int((conv & (r["paper/stable_rank_W1"] >= 1.9)).sum())
    lo, hi = wilson(near2, n)
    out.append(fs.Claim("rank2_rate_not_below_theorem3_bound", near2 / n, bound, hi >= bound,
                        f"converged with srank(W₁) ≥ 1.9: {near2}/{n}, 95% CI [{lo:.3f}, {hi:.3f}]; "
                        f"Theorem 3: ≥ 2(θ/2π)² = {bound:.4f} (θ = {np.degrees(r['theta']):.2f}°)"))
    event = r["init_one_input_each"]
    lo, hi = wilson(int(event.sum()), n)
    ev_conv = event & conv
    out.append(fs.Claim("theorem3_event_rate", float(event.mean()), bound, lo <= bound <= hi,
                        f"inits with each hidden unit active on exactly one input: {int(event.sum())}/{n}, "
                        f"95% CI [{lo:.3f}, {hi:.3f}] vs 2(θ/2π)² = {bound:.4f}; of these {int(ev_conv.sum())} "
                        f"converged, {int((ev_conv & (r['paper/stable_rank_W1'] >= 1.9)).sum())} with srank ≥ 1.9"))
    same = bool(np.all(r["paper/converged"] == r["long/converged"]))
    drift = float(np.max(np.abs(r["paper/stable_rank_W1"] - r["long/stable_rank_W1"])[conv], initial=0.0))
    out.append(fs.Claim("longer_horizon_changes_nothing", drift, 1e-3, same and drift <= 1e-3,
                        f"t = {config['t_paper']:g} → {config['t_long']:g}: converged set unchanged ({same}), "
                        f"{int(r['long/converged'].sum())} converged; max |Δ srank(W₁)| over converged = {drift:.2e}"))
    stuck = ~r["long/converged"]
    du, ds = r["long/dead_units"][stuck], r["long/dead_samples"][stuck]
    plateau = np.round(r["long/log_loss"][stuck] / np.log(0.5)) * np.log(0.5)
    explained = (ds > 0) | (du > 0)
    out.append(fs.Claim("nonconverged_runs_explained", float(explained.mean()) if stuck.any() else 1.0, 1.0,
                        bool(explained.all()),
                        f"{int(stuck.sum())} runs not converged at t = {config['t_long']:g}: both units dead "
                        f"{int((du == 2).sum())}; one unit dead {int((du == 1).sum())}; no dead unit but an input no "
                        f"unit sees {int(((du == 0) & (ds > 0)).sum())}; neither {int((~explained).sum())}. Loss "
                        f"plateaus: ¼ (one output unfit) {int(np.isclose(plateau, np.log(0.25)).sum())}, ½ (both) "
                        f"{int(np.isclose(plateau, np.log(0.5)).sum())}"))
    return out


PAPER_LO, PAPER_WIDTH = 1.2, 0.8 / 9  # the paper's 9 bins of stable rank, from ≈1.2 to 2.0


def plot(results, config):
    r = {k: np.asarray(v) for k, v in results.items()}
    conv = r["paper/converged"]
    fig_h, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    # The paper's bins (width 0.8/9 ≈ 0.089), continued below 1.2 down to the least stable rank, 1.
    edges = PAPER_LO + PAPER_WIDTH * np.arange(-3, 10)
    for a, name, sub in zip(ax, ("W1", "W2"), ("₁", "₂"), strict=True):
        a.hist(r[f"paper/stable_rank_{name}"][conv], bins=edges, color="C0", alpha=0.7,
               label=f"flow, t = {config['t_paper']:g} ({int(conv.sum())}/{conv.size} converged)")
        a.set(xlabel=f"stable rank of W{sub}", ylabel="runs", xlim=(edges[0], edges[-1] + 0.02))
    centers = PAPER_LO + (np.arange(9) + 0.5) * PAPER_WIDTH
    ax[0].bar(centers, PAPER_COUNTS * conv.sum() / 79, width=PAPER_WIDTH, fill=False, edgecolor="C3",
              label="paper (GD), 79 runs, scaled to ours")
    ax[0].legend(fontsize=7, loc="upper left")
    ax[1].legend(fontsize=7, loc="upper left")
    fig_h.suptitle("Timor et al. 2×2 ReLU net: stable rank over converged runs (the paper's bins, width 0.089)")
    fig_d, ax = plt.subplots(1, 2, figsize=(8, 4.2))
    X, _ = data()
    sr = r["paper/stable_rank_W1"]
    lowest = np.flatnonzero(conv)[np.argsort(sr[conv])[:1]]
    for a, pick, name in ((ax[0], lowest, "lowest-rank converged"),
                          (ax[1], np.flatnonzero(conv & (sr >= 1.9)), "rank-2-like")):
        if pick.size:
            W = r["W1_final"][pick[0]]
            for u, w in enumerate(W):
                a.arrow(0, 0, *(w / np.abs(W).max()), width=0.01, color=f"C{u}", label=f"row {u + 1} of W₁")
        for k, x in enumerate(X):
            a.plot([0, x[0]], [0, x[1]], "k--", lw=1, zorder=3, label="inputs x₁, x₂" if k == 0 else None)
        a.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", xlabel="first input coordinate",
              ylabel="second input coordinate",
              title=f"{name} run (seed {pick[0]}, stable rank {sr[pick[0]]:.2f})" if pick.size else name)
        a.legend(fontsize=7, loc="lower left")
    fig_d.suptitle("Neuron directions (rows of W₁, normalised) and the inputs (dashed)")
    fig_l, a = plt.subplots(figsize=(6, 3.6))
    t = np.exp(r["log_t"])
    final = r["long/log_loss"]
    for cls, (mask, color) in {"converged": (r["long/converged"], "C0"),
                               "one output unfit (loss ¼)": (np.isclose(final, np.log(0.25), atol=0.05), "C1"),
                               "both unfit (loss ½)": (np.isclose(final, np.log(0.5), atol=0.05), "C3")}.items():
        idx = np.flatnonzero(mask)[:10]
        for j, i in enumerate(idx):
            a.loglog(t, np.exp(r["log_loss"][i]), color=color, lw=0.8, label=f"{cls} ({int(mask.sum())})" if j == 0 else None)
    a.axhline(config["target_loss"], color="k", ls=":", lw=1, label=f"target loss {config['target_loss']:g}")
    a.axvline(config["t_paper"], color="gray", ls="-.", lw=1, label=f"the paper's t = {config['t_paper']:g}")
    a.set(xlabel="$t$", ylabel="loss", title="Loss curves of the three outcome classes (10 each)")
    fs.harness.log_ticks(a)
    a.legend(fontsize=7)
    return {"stable_rank_histogram": fig_h, "neuron_directions": fig_d, "loss_curves": fig_l}


scenario = fs.Scenario(
    name="timor2023_relu_rank",
    title="2×2 ReLU nets under gradient flow: how often the learned W₁ is near rank 1 vs rank 2",
    reference="Timor, Vardi & Shamir, ALT 2023, §3.2 and Theorem 3 (their code's setup, 288 seeds)",
    config=dict(seeds=288, radius=1e-4, t_paper=300.0, t_long=1e4, n_save=60, target_loss=1e-4, dead_below=1e-4,
                rtol=1e-8, atol=1e-10, max_steps=200_000),
    quick=dict(seeds=32, t_long=600.0, n_save=30),
    run=run, claims=claims, plot=plot,
)
