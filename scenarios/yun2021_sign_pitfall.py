"""The sign pitfall of diagonal networks (Yun, Krishnan & Mobahi, ICLR 2021): the depth-2 diagonal
network tends to an ℓ1 max-margin direction, but WHICH one depends on the signs the initialisation lets ρ take.

A balanced same-sign init (v_1 = v_2 = α·1) keeps v_1 = v_2 for all time, so ρ = v_1 ⊙ v_2 ≥ 0: the limit is
the *sign-constrained* ℓ1 max-margin solution. The sign-free init (v_1 = α·1, v_2 = 0) of the same network
heads to the unconstrained one. Data: separable Gaussian points labelled by a dense Gaussian teacher, so the sign
constraint binds (seed chosen so that a non-negative separator exists). Logistic loss, gradient flow in log time to log t = `log_t1`.

Measured from the flow: the normalised ℓ1 margin γ(t) = min_i y_i⟨x_i, β⟩/‖β‖₁ of both runs against both
references (LPs), the limit directions estimated from the late trajectory (`fs.analysis.limit_direction`)
against the LP solutions, and the sign-free run's margin overtaking the sign-constrained maximum — a value the
balanced run can never reach.
"""

import matplotlib.pyplot as plt
import numpy as np

import flowsim as fs

INITS = {"balanced": "balanced", "sign_free": "last_zero"}
unit = fs.analysis.unit


def run(config):
    X, y = fs.data.separable(config["n"], config["d"], config["seed"], config["gap"])
    out = {"X": X, "y": y}
    for sign, name in ((None, "unconstrained"), ("nonnegative", "nonnegative")):
        ref = fs.analysis.max_margin_solution(X, y, p=1.0, sign=sign)
        out[f"reference/{name}/direction"], out[f"reference/{name}/margin"] = ref.direction, ref.margin
    save_log_t = fs.analysis.log_log_grid(config["plot_from_log_t"], config["log_t1"], config["n_save"])
    for init, shape in INITS.items():
        net = fs.networks.Diagonal.init(config["d"], 2, scale=config["alpha"], shape=shape)
        flow = fs.simulate(fs.Problem(net, X, y, loss="logistic"), log_t1=config["log_t1"], save_log_t=save_log_t,
                           rtol=config["rtol"], atol=config["atol"], max_steps=config["max_steps"],
                           progress=fs.show_progress())
        limit = fs.analysis.limit_direction(flow, X, y, sign="auto")
        beta = fs.analysis.coordinates(flow)  # ρ = β = v₁ ⊙ v₂ at every save
        out[init] = {"flow": flow, "beta": beta, "margin": fs.analysis.normalized_margin(beta, X, y, p=1.0),
                     "limit_direction": limit.direction, "limit_margin": limit.margin,
                     "limit_kkt_residual": limit.kkt_residual, "limit_certified": limit.certified,
                     "sign_locked": np.asarray(limit.sign_constraint is not None and bool(np.any(limit.sign_constraint)))}
    return out


def claims(results, config):
    refs = {"balanced": "nonnegative", "sign_free": "unconstrained"}
    # A solve that stopped short of its horizon, or an uncertified limit estimate, says nothing about the limit.
    ok = {init: bool(results[f"{init}/flow/ok"]) for init in refs}
    out = []
    for init, ref in refs.items():
        error = float(np.linalg.norm(unit(results[f"{init}/limit_direction"]) - unit(results[f"reference/{ref}/direction"])))
        certified = bool(results[f"{init}/limit_certified"])
        out.append(fs.Claim(f"{init}_limit_is_{ref}_l1_max_margin", error, config["max_direction_error"],
                            ok[init] and certified and error <= config["max_direction_error"],
                            f"‖u − u*‖₂ (unit ℓ2 directions): limit_direction estimate of the {init} run (horizon "
                            f"reached: {ok[init]}, certified: {certified}) vs the {ref} ℓ1 max-margin LP"))
    constrained = float(results["reference/nonnegative/margin"])
    overtake = float(results["sign_free/margin"][-1]) - constrained
    out.append(fs.Claim(
        "sign_free_margin_beyond_constrained_max", overtake, 0.0, ok["sign_free"] and overtake >= 0.0,
        f"γ₁(sign-free flow at log t = {results['sign_free/flow/log_t'][-1]:.3g}) − γ₁* (sign-constrained) "
        f"= {results['sign_free/margin'][-1]:.4f} − {constrained:.4f}: the balanced run (ρ ≥ 0) can never get there"))
    gap = float(results["reference/unconstrained/margin"]) - float(results["balanced/margin"][-1])
    out.append(fs.Claim(
        "balanced_margin_below_unconstrained_max", gap, config["min_margin_gap"],
        ok["balanced"] and gap >= config["min_margin_gap"],
        "γ₁* (unconstrained) − γ₁(balanced flow, last iterate): the balanced limit is a different, worse one"))
    return out


def plot(results, config):
    fig, (ax_m, ax_e) = plt.subplots(1, 2, figsize=(11, 3.6))
    styles = {"balanced": dict(color="C0", label="balanced init $v_1 = v_2 = \\alpha\\mathbf{1}$"),
              "sign_free": dict(color="C3", label="sign-free init $v_1 = \\alpha\\mathbf{1}$, $v_2 = 0$")}
    ref_style = {"nonnegative": dict(color="C0", ls=":", label=r"sign-constrained $\ell_1$ max margin ($\rho \geq 0$)"),
                 "unconstrained": dict(color="C3", ls=":", label=r"unconstrained $\ell_1$ max margin")}
    for ref, style in ref_style.items():
        ax_m.axhline(results[f"reference/{ref}/margin"], lw=1, **style)
    for init, style in styles.items():
        log_t = results[f"{init}/flow/log_t"]
        keep = np.isfinite(log_t) & (log_t > 0)
        ax_m.semilogx(log_t[keep], results[f"{init}/margin"][keep], **style)
        beta = results[f"{init}/beta"]
        for ref, ls in (("nonnegative", "-"), ("unconstrained", "--")):
            err = np.linalg.norm(unit(beta) - unit(results[f"reference/{ref}/direction"]), axis=1)
            ax_e.loglog(log_t[keep], err[keep], ls=ls, color=style["color"],
                        label=f"{init.replace('_', '-')} run → {ref} reference")
    ax_m.set(xlabel=r"$\log t$", ylabel=r"$\gamma_1(\beta) = \mathrm{min}_i\, y_i\langle x_i, \beta\rangle / \|\beta\|_1$",
             title=r"normalised $\ell_1$ margin, depth-2 diagonal")
    ax_m.legend(fontsize=7, loc="lower right")
    ax_e.set(xlabel=r"$\log t$", ylabel=r"$\|\beta/\|\beta\| - u^*\|$", title="direction error to each reference (last iterates)")
    ax_e.legend(fontsize=7)
    fig.suptitle(r"Balanced vs sign-free initialisation: different $\ell_1$ max-margin limits")
    return {"margins_and_directions": fig}


scenario = fs.Scenario(
    name="yun2021_sign_pitfall",
    title="Depth-2 diagonal nets: a balanced same-sign init converges to the sign-constrained ℓ1 max margin",
    reference="Yun, Krishnan & Mobahi, ICLR 2021 (diagonal networks → ℓ1 max margin, L = 2): the sign pitfall",
    config=dict(seed=6, n=10, d=8, gap=0.1, alpha=0.5, log_t1=1e6, n_save=120, plot_from_log_t=0.5,
                rtol=1e-8, atol=1e-10, max_steps=200_000, max_direction_error=1e-6, min_margin_gap=0.01),
    quick=dict(log_t1=1e3, n_save=60),
    run=run, claims=claims, plot=plot,
)
