"""Soudry, Hoffer, Nacson, Gunasekar & Srebro (JMLR 2018), "The implicit bias of gradient descent on
separable data": for linear logistic regression on separable data, w(t)/‖w(t)‖ → ŵ, the ℓ2 max-margin
(hard-margin SVM) direction, and for almost every dataset ‖w(t)/‖w(t)‖ − ŵ‖ = O(1/log t).

Data: n Gaussian points in R^d labelled by a random teacher, points within `gap` of its hyperplane
dropped (separable through the origin, no bias). Model f(x) = ⟨w, x⟩ from w = 0, mean logistic loss.
Gradient flow is solved in log time to log t = `log_t1`; gradient descent runs `gd_steps` steps of
size `gd_step`/β, β = λ_max(XᵀX)/(4n) the smoothness of L (Soudry et al. need η < 2/β).
The rate is the slope of log(direction error) against log(log t) for log t ≥ `fit_from_log_t`.
The flow is checkpointed: a killed `flowsim run` continues it from its last checkpoint when rerun.
"""

import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs


def direction_error(W, reference):
    """‖w/‖w‖ − ŵ‖ along the trajectory (NaN where w = 0)."""
    return np.linalg.norm(fs.analysis.unit(W) - reference, axis=-1)


def run(config, resume=None):
    X, y = fs.data.separable(config["n"], config["d"], seed=config["seed"], gap=config["gap"])
    reference = fs.analysis.max_margin(X, y, p=2.0)
    problem = fs.Problem(fs.networks.Linear(np.zeros(config["d"])), X, y, loss="logistic")

    save_log_t = fs.analysis.log_log_grid(config["plot_from_log_t"], config["log_t1"], config["n_save"])
    flow = fs.simulate(problem, log_t1=config["log_t1"], save_log_t=save_log_t, rtol=config["rtol"],
                       atol=config["atol"], progress=fs.show_progress(),
                       checkpoint=resume.checkpoint("flow") if resume else None)
    beta = np.linalg.eigvalsh(X.T @ X).max() / (4 * len(X))
    gd = fs.gradient_descent(problem, lr=config["gd_step"] / beta, steps=config["gd_steps"],
                             n_save=config["n_save"])

    out = {"X": X, "y": y, "max_margin_direction": reference,
           "max_margin": fs.analysis.max_margin_value(X, y, p=2.0), "flow": flow, "gd": gd}
    for name, traj in (("flow", flow), ("gd", gd)):
        W = fs.analysis.coordinates(traj)  # w at every save
        out[f"{name}_direction_error"] = direction_error(W, reference)
        out[f"{name}_margin"] = fs.analysis.normalized_margin(W, X, y, p=2.0)
    return out


def fitted_rate(log_t, error, from_log_t):
    """Slope of log(error) against log(log t) over log t ≥ from_log_t (−1 for a 1/log t rate)."""
    keep = (log_t >= from_log_t) & np.isfinite(error) & (error > 0)
    if keep.sum() < 3:
        return np.nan
    return np.polyfit(np.log(log_t[keep]), np.log(error[keep]), 1)[0]


def claims(results, config):
    log_t, error = results["flow/log_t"], results["flow_direction_error"]
    rate = fitted_rate(log_t, error, config["fit_from_log_t"])
    gap = (results["max_margin"] - results["flow_margin"][-1]) / results["max_margin"]
    # A solve that stopped short of its horizon says nothing about the limit: no claim holds then.
    reached = bool(results["flow/ok"])
    at = f" at log t = {log_t[-1]:.4g}" + ("" if reached else " — horizon NOT reached")
    return [
        fs.Claim("final_direction_error", error[-1], config["max_direction_error"],
                 reached and error[-1] <= config["max_direction_error"],
                 f"‖w/‖w‖ − ŵ‖{at}; ŵ the ℓ2 max-margin direction"),
        fs.Claim("fitted_rate", rate, -1.0, reached and abs(rate + 1) <= config["rate_tolerance"],
                 f"slope of log error vs log log t for log t ≥ {config['fit_from_log_t']:g}; "
                 f"1/log t predicts −1 (holds within ±{config['rate_tolerance']:g})"),
        fs.Claim("final_margin_gap", gap, config["max_margin_gap"], reached and gap <= config["max_margin_gap"],
                 f"(γ* − γ(w)) / γ*{at}, γ the normalised ℓ2 margin"),
    ]


def plot(results, config):
    fig, (ax_err, ax_margin, ax_gap) = plt.subplots(1, 3, figsize=(11, 3.3))
    gamma = results["max_margin"]
    styles = {"flow": dict(color="C0", label="gradient flow"),
              "gd": dict(color="C1", ls="--",
                         label=f"GD, η = {config['gd_step']:g}/β, {fs.harness.tex_number(config['gd_steps'])} steps")}
    for name, style in styles.items():
        log_t = results[f"{name}/log_t"]
        keep = log_t > 0
        margin = results[f"{name}_margin"][keep]
        ax_err.loglog(log_t[keep], results[f"{name}_direction_error"][keep], **style)
        ax_margin.semilogx(log_t[keep], margin, **style)
        ax_gap.loglog(log_t[keep], (gamma - margin) / gamma, **style)

    log_t, error = results["flow/log_t"], results["flow_direction_error"]
    rate = fitted_rate(log_t, error, config["fit_from_log_t"])
    xs = np.array([max(1.0, 1e-3 * log_t[-1]), log_t[-1]])
    ax_err.loglog(xs, 3 * error[-1] * log_t[-1] / xs, color="0.5", ls=":", label=r"$\propto 1/\log t$ (guide)")
    ax_err.set(xlabel=r"$\log t$", ylabel=r"$\|w/\|w\| - \hat{w}\|$",
               title=f"direction error (flow: fitted slope {rate:.3f})")
    ax_err.legend()
    ax_margin.axhline(gamma, color="k", lw=0.8, ls=":", label=r"$\ell_2$ max margin $\gamma^*$")
    ax_margin.set(xlabel=r"$\log t$", ylabel=r"$\gamma(w) = \mathrm{min}_i\, y_i \langle x_i, w\rangle / \|w\|$",
                  title="normalised margin")
    ax_margin.legend(loc="lower right")
    ax_gap.set(xlabel=r"$\log t$", ylabel=r"$(\gamma^* - \gamma(w)) / \gamma^*$", title="relative margin gap")
    fig.suptitle(r"Logistic regression on separable data → $\ell_2$ max-margin direction (Soudry et al. 2018)")
    return {"direction_and_margin": fig}


scenario = fs.Scenario(
    name="soudry2018_logistic",
    title="Linear logistic regression on separable data tends to the ℓ2 max-margin direction at rate 1/log t",
    reference="Soudry, Hoffer, Nacson, Gunasekar & Srebro, The implicit bias of gradient descent on separable "
              "data, JMLR 2018: ‖w/‖w‖ − ŵ‖ = O(1/log t) for almost every dataset",
    config=dict(seed=0, n=40, d=5, gap=0.2, log_t1=1e6, n_save=200, plot_from_log_t=0.5, rtol=1e-8, atol=1e-8,
                gd_step=1.0, gd_steps=1_000_000, fit_from_log_t=100.0, rate_tolerance=0.05,
                max_direction_error=2e-6, max_margin_gap=2e-6),
    quick=dict(log_t1=1e3, n_save=60, gd_steps=10_000, fit_from_log_t=30.0, max_direction_error=2e-3,
               max_margin_gap=2e-3),
    run=run, claims=claims, plot=plot,
)
