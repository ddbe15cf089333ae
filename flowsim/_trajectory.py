"""The result of a gradient-flow solve or a discrete GD run."""

import enum
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree


class Status(enum.IntEnum):
    """Why a run stopped. Stored per batch member as an integer array; `Trajectory.message` puts it in words.

    `HORIZON_REACHED` and `TARGET_REACHED` are the successes. `LOSS_INCREASED` is a run that reached its
    horizon with a loss far above its start: gradient flow never increases L (dL/dt = −‖∇L‖²), so such a
    solve is wrong (tolerances too loose), and gradient descent that grows L has a step above its stability
    bound 2/λ_max(∇²L). `INVALID_INPUT` is a batch member refused before running (a traced value it was
    given is invalid); the others say where and why the solver stopped early.
    """

    HORIZON_REACHED = 0
    TARGET_REACHED = 1
    MAX_STEPS = 2
    NON_FINITE = 3
    STEP_SIZE_UNDERFLOW = 4
    SOLVER_FAILURE = 5
    DIVERGED = 6
    NON_FINITE_FIELD = 7
    INVALID_INPUT = 8
    TARGET_AT_START = 9
    LOSS_INCREASED = 10


_SUCCESS = (Status.HORIZON_REACHED, Status.TARGET_REACHED)


class Trajectory(eqx.Module):
    """A trajectory θ(t) saved at increasing times, as returned by `fs.simulate` and
    `fs.gradient_descent`.

    - `log_t`: natural log of physical time at each save (−inf at t = 0); finite for any
      horizon, including t = e^(10^6), where t itself is not representable.
    - `params`: the model with a leading time axis on every array leaf.
    - `final`: the model at the last saved time.
    - `loss`, `log_loss`: L and log L at each save (L may underflow to 0; log L does not; both
      are NaN at a state where any prediction is NaN).
    - `stats`: `num_steps`, `num_accepted_steps`, `num_rejected_steps`, `wall_time_s`.
    - `ok`: the horizon (or `target_log_loss`) was reached and the loss did not grow
      (`status` is `HORIZON_REACHED` or `TARGET_REACHED`); otherwise `message` says why,
      how far the run got, and what to try.
    - `metadata`: solver, tolerances, horizon, time variable: what the numbers depend on.

    Save points a run did not reach (it stopped at a target or failed) hold the last
    reached state and its time; non-finite states are kept non-finite.
    """

    log_t: Float[Array, " n_save"]
    params: PyTree
    final: PyTree
    loss: Float[Array, " n_save"]
    log_loss: Float[Array, " n_save"]
    stats: dict
    status: Int[Array, ""]
    log_t_reached: Float[Array, ""]
    metadata: tuple = eqx.field(static=True)
    # Values the run depended on that may be traced or batched (tolerances, horizon, target, lr).
    settings: dict = eqx.field(default_factory=dict)
    # The model's kink sites and which field ran (`flowsim._kinks.kink_summary`); None for a smooth model.
    kinks: str | None = eqx.field(static=True, default=None)

    def __post_init__(self):
        from ._kinks import kink_summary, unwrap  # the user's model, not the kink adapter around it

        if self.kinks is None:
            self.kinks = kink_summary(self.params)
        self.params, self.final = unwrap(self.params), unwrap(self.final)

    @property
    def ok(self) -> Bool[Array, ""]:
        return (self.status == Status.HORIZON_REACHED) | (self.status == Status.TARGET_REACHED)

    @property
    def info(self) -> dict:
        """What the numbers depend on: solver, tolerances, horizon, target, what "auto" ran.

        Settings that were batched (vmapped) come back as arrays, one value per member."""
        info = dict(self.metadata)
        if info.get("nonsmooth") is True:
            info["nonsmooth"] = "band"  # which field ran for a model with kinks: "band" or "sliding"
        if self.kinks is not None:
            info["kinks"] = self.kinks
        for key, value in self.settings.items():
            if isinstance(value, jax.core.Tracer):
                continue
            array = np.asarray(value)
            if array.ndim == 0:
                number = float(array)
                info[key] = None if (key == "target_log_loss" and np.isnan(number)) else number
            else:
                info[key] = array
        return info

    @property
    def message(self) -> str:
        """Why the run stopped, in words ('' for a run that reached its horizon).

        For a batch (from `eqx.filter_vmap`), one line per member that did not succeed.
        """
        status = np.atleast_1d(np.asarray(self.status))
        reached = np.atleast_1d(np.asarray(self.log_t_reached))
        batched = np.ndim(self.status) > 0
        info = self.info
        lines = []
        for index, (code, log_t) in enumerate(zip(status.ravel(), reached.ravel())):
            member = {k: (v.ravel()[index] if isinstance(v, np.ndarray) and v.size == status.size else v)
                      for k, v in info.items()}
            member["rejected_fraction"] = _rejected_fraction(self.stats, index, status.size)
            if int(code) == Status.LOSS_INCREASED:
                log_loss = np.asarray(self.log_loss).reshape(status.size, -1)[index]
                member["log_loss_first"], member["log_loss_last"] = float(log_loss[0]), float(log_loss[-1])
            if "pairs_at_kink" in self.stats:
                member["pairs_at_kink"] = int(np.asarray(self.stats["pairs_at_kink"]).ravel()[index])
                member["band_overflow"] = bool(np.asarray(self.stats["band_overflow"]).ravel()[index])
            text = _describe(Status(int(code)), float(log_t), member)
            if text and info.get("sliding_note"):
                text = f"{info['sliding_note']}; {text}"
            if "smoothed_fallback" in self.stats and bool(np.asarray(self.stats["smoothed_fallback"]).ravel()[index]):
                text = "; ".join(filter(None, (_fallback_note(self.stats, index, info), text)))
            if text and batched:
                text = f"member {index}: {text}"
            if text:
                lines.append(text)
        return "\n".join(lines)

    def __len__(self) -> int:
        return self.log_t.shape[-1]


def _fallback_note(stats: dict, index: int, info: dict) -> str:
    """What `fs.simulate_or_smoothed` did for a member whose exact solve stalled at a kink."""
    pick = lambda key: np.asarray(stats[key]).ravel()[index]  # noqa: E731
    widths = ", ".join(f"{w:g}" for w in info.get("smoothed_fallback_widths", ()))
    return (f"smoothed-width fallback: the exact minimum-norm solve stopped ({Status(int(pick('exact_status'))).name} "
            f"at log t = {float(pick('exact_log_t_reached')):.6g}, {int(pick('exact_pairs_at_kink'))} (neuron, sample) "
            f"pairs at kinks, {int(pick('exact_corner_samples'))} samples at kinks in two layers at once, where that "
            "field is only linearised and chatters), so this member is "
            f"fs.smoothed_limit's extrapolation to width 0 of widths {widths} (uncertainty "
            f"{float(pick('smoothed_error')):.1e} in the parameters)")


def _rejected_fraction(stats: dict, index: int, size: int) -> float:
    try:
        steps = np.asarray(stats["num_steps"]).ravel()
        rejected = np.asarray(stats["num_rejected_steps"]).ravel()
        if steps.size == size and steps[index] > 0:
            return float(rejected[index] / steps[index])
    except (KeyError, TypeError):
        pass
    return float("nan")


def _solver_advice(info: dict) -> str:
    """What to try next, fitted to what was running."""
    solver = info.get("solver")
    implicit = info.get("implicit", isinstance(solver, str) and solver.startswith(("kvaerno", "kencarp")))
    stiffness, needed = info.get("stiffness"), info.get("explicit_steps_needed")  # set when out of steps
    if not info.get("nonsmooth", True) and stiffness is not None:
        if not implicit and solver != "auto" and stiffness >= 1.0:
            return (f"the flow is stiff here (h·ρ = {stiffness:.3g}: the steps are held by stability): use an "
                    "implicit solver (solver='kvaerno5' or 'auto') or looser rtol/atol")
        if (implicit or solver == "auto") and needed is not None and needed >= info.get("max_steps", 1):
            return (f"loosen rtol/atol (rtol = {info.get('rtol'):.3g}: the steps are held by accuracy there). The flow "
                    f"is stiff (an explicit solver would need about {needed:.2g} steps to the horizon), so an implicit "
                    "solver is the right one")
    if solver == "auto" or info.get("auto"):
        return "loosen rtol/atol, or fix the solver (solver='tsit5' or 'kvaerno5') and compare"
    if implicit:
        return ("try the explicit solver='tsit5' (cheaper per step when the flow is not stiff, and at large "
                "parameter counts) or solver='auto'")
    if info.get("time") == "linear":
        return "for long classification horizons use log time (log_t1=…); for a stiff flow try solver='kvaerno5' or 'auto'"
    return "the flow may be stiff here: try solver='kvaerno5' or solver='auto'"


def _describe(status: Status, log_t: float, info: dict) -> str:
    where = f"stopped at log t = {log_t:.6g}"
    horizon = info.get("log_t1")
    if horizon is not None and np.ndim(horizon) == 0:
        where += f" of log t1 = {float(horizon):.6g}"
    if status == Status.HORIZON_REACHED:
        return ""
    if status == Status.TARGET_REACHED:
        return f"target log loss {info.get('target_log_loss')} reached at log t = {log_t:.6g}"
    if status == Status.MAX_STEPS:
        rejected = info.get("rejected_fraction", float("nan"))
        text = f"max_steps = {info.get('max_steps')} reached: {where}."
        if info.get("pairs_at_kink"):
            text += (f" {int(info['pairs_at_kink'])} (neuron, sample) pairs sit at a ReLU kink at the last state: the "
                     "flow is sliding along a kink.")
        if info.get("band_overflow"):
            text += (" More pairs sit at kinks than the model's max_kinks, so the field there is not the minimum-norm "
                     "subgradient: build the network with a larger max_kinks, or solve it exactly with "
                     "nonsmooth='sliding' (event-driven sliding on strata, two-layer networks).")
        if rejected == rejected and rejected > 0.3:
            cause = ("a kink of the model, or a field that is not finite just past this state" if info.get("nonsmooth", True)
                     else "tolerances below what the field's round-off allows, or a field that is not finite just past "
                     "this state")
            text += f" {100 * rejected:.0f}% of the steps were rejected: the field changes abruptly here ({cause})."
        if info.get("pairs_at_kink"):
            # An implicit solver steps over a kink no better (its steps are held by the kink too, and the
            # min-norm field costs 40-100x more there): the band is what decides whether the flow slides.
            if info.get("nonsmooth") == "band":
                text += (" nonsmooth='sliding' solves a network with one kink layer per sample exactly, without "
                         "the band (each stratum of sliding pairs a smooth ODE, kinks as events).")
            return text + (" Increase max_steps, or loosen rtol/atol: the kink band is a multiple of the tolerances, "
                           "and a wider band slides where a narrow one chatters (an implicit solver is no help at a "
                           "kink). Deep ReLU networks can chatter at corners where a sample sits at kinks in several "
                           "layers: fs.smoothed_limit solves smoothed activations and extrapolates their width to 0.")
        return text + f" Increase max_steps, or {_solver_advice(info)}."
    if status == Status.NON_FINITE:
        return (
            f"the state became non-finite (NaN/Inf): {where}. Check the model and data for overflow; "
            "tighter tolerances may help."
        )
    if status == Status.NON_FINITE_FIELD:
        return (
            f"the gradient field is not finite (NaN/Inf) at the last state or one step past it: {where}. The model "
            "or the loss overflows, or is undefined, there; the solver cannot step past it."
        )
    if status == Status.STEP_SIZE_UNDERFLOW:
        return (
            f"the step size underflowed: {where}. The flow may blow up in finite time; otherwise "
            f"{_solver_advice(info)}."
        )
    if status == Status.DIVERGED:
        return (
            f"gradient descent diverged (non-finite loss): {where}. The step lr = {info.get('lr')} likely exceeds "
            "2/λ_max(∇²L) along the path: try a smaller lr."
        )
    if status == Status.INVALID_INPUT:
        if info.get("solver") == "gradient_descent":
            return (f"refused before running: a traced (vmapped) value was invalid for this member — lr must be "
                    f"positive and finite (got {info.get('lr')}), the labels of a margin loss exactly ±1, and the targets of "
                    "cross_entropy probability rows")
        return ("refused before solving: a traced (vmapped) value was invalid for this member — rtol/atol must be "
                "positive and finite, the horizon finite, the save times (save_log_t) strictly increasing and within "
                "the horizon, and classification labels exactly ±1")
    if status == Status.LOSS_INCREASED:
        first, last = info.get("log_loss_first"), info.get("log_loss_last")
        grown = "" if first is None else f" (log L = {first:.6g} at the first save, {last:.6g} at the last)"
        if info.get("solver") == "gradient_descent":
            return (f"gradient descent made the loss grow far above its start{grown}: the step lr = {info.get('lr')} "
                    "exceeds the stability bound 2/λ_max(∇²L) along the path (fs.analysis.sharpness gives λ_max): "
                    "try a smaller lr.")
        return (f"the loss at the end is above its starting value{grown}, at log t = {log_t:.6g}. Gradient flow "
                "never increases L, so the solve is wrong: the tolerances are too loose. Tighten rtol/atol.")
    if status == Status.TARGET_AT_START:
        target = info.get("target_log_loss")
        return (f"refused before solving: target_log_loss = {target} is not below the starting log loss, so the "
                "run would stop at t = 0 (pass log ε, not ε)")
    return f"the solver failed (Diffrax reported a failure other than max_steps or step-size underflow): {where}."


def run_timed(compiled_run, *args) -> Trajectory:
    """Call a compiled run and record its wall time (compilation included) in `stats`.

    Under an outer jit or vmap the result is traced and no time can be measured: it stays NaN."""
    start = time.perf_counter()
    trajectory = compiled_run(*args)
    if not isinstance(trajectory.log_t, jax.core.Tracer):
        jax.block_until_ready(trajectory)
        wall_time = jnp.asarray(time.perf_counter() - start)
        trajectory = eqx.tree_at(lambda tr: tr.stats["wall_time_s"], trajectory, wall_time)
    return trajectory


def saved_losses(problem, models) -> tuple[Array, Array]:
    """L and log L for a model with a leading save axis; log L is NaN wherever L is."""
    loss = eqx.filter_vmap(problem.loss_value)(models)
    log_loss = eqx.filter_vmap(problem.log_loss_value)(models)
    return loss, jnp.where(jnp.isnan(loss), jnp.nan, log_loss)


def log_t_from_log_time(s: Array) -> Array:
    """log t for s = log(1 + t): log(e^s − 1) = s + log(−expm1(−s)), −inf at s = 0."""
    s = jnp.asarray(s)
    safe = jnp.where(s > 0, s, 1.0)
    return jnp.where(s > 0, safe + jnp.log(-jnp.expm1(-safe)), -jnp.inf)


def log_t_from_time(t: Array) -> Array:
    t = jnp.asarray(t)
    safe = jnp.where(t > 0, t, 1.0)
    return jnp.where(t > 0, jnp.log(safe), -jnp.inf)
