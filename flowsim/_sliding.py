"""Event-driven sliding: gradient flow of a ReLU network on strata of its kinks, in log time.

The min-norm field of `_nonsmooth` treats a pair as "at its kink" inside a band, so an adaptive
solver lands near a kink, crosses the band's edge, and chatters. Here the kinks are handled as
events of a piecewise-smooth system (Filippov 1988; di Bernardo et al., "Piecewise-smooth
dynamical systems", 2008, ch. 2; Acary & Brogliato 2008 on event-driven schemes). The state is θ
plus a stratum S (the (sample, unit) pairs held at z = 0) and the sign pattern of the other pairs.
Between events the field is smooth:

- pairs r ∉ S have slope φ'(z_r) fixed by their sign: 1 or γ;
- pairs s ∈ S have Utkin's equivalent control: slopes d_S with ⟨∇z_s, θ'⟩ = −k z_s, i.e. with
  θ' = −(g₀ + G_S δ) (g₀ the scaled gradient at the sign slopes, G_S = ∂g/∂d_S, δ = d_S − base_S)

      (J_S G_S) δ = k z_S − J_S g₀,   J_S = ∂z_S/∂θ,

  a |S|×|S| solve (exact for models affine in the slopes: one kink layer per sample, e.g.
  two-layer nets). The Baumgarte term −k z_s (Baumgarte 1972) pulls drift back onto z_s = 0.

S is a traced index array of static length K (`max_sliding`), so one compiled segment solve serves
every stratum. Events (`diffrax.Event`, located by `optimistix.Bisection` on the step's bracket, direction: falls to 0;
`optimistix.Newton` failed to converge on the min of many margins)
fire on q = min(min_{r ∉ S} sign_r z_r, min_{s ∈ S} min(d_s − γ, 1 − d_s)):

- a pair r reaching z_r = 0: its one-sided rates ż_r(d_r = 1), ż_r(d_r = γ) (S kept on its
  kinks) decide. If ż_r(1) ≤ 0 ≤ ż_r(γ) both sides push into the kink (Filippov's attractive
  sliding): r joins S. Otherwise r crosses to the side its rates point to (its sign flips);
- a slope d_s of s ∈ S reaching γ or 1: s leaves S to the side of that slope.

The driver restarts the solve from the event state (eagerly, in Python). The pair an event just
moved sits at z ≈ 0, so it is left out of q for the next segment (else q would start at 0); a
segment that ends with such a pair on the wrong side counts as a missed event (`missed` in the
result) and the pair's sign is corrected at the restart.

Status: checked against closed forms (a sliding phase with its entry and exit times, a
transversal crossing), against the band field on a small two-layer net (to 1e-8), and on the noisy
two-layer net of issue 20 against the band field at rtol 1e-10 (to 1.5e-8 in W at log t = 1;
`benchmarks/sliding.py` runs it to log t = 100).

Limitations: models must be affine in the slopes (one kink layer per sample); an MLP of depth
> 2 is refused. Simultaneous events are taken one at a time (the others follow at once as
zero-length segments). Repulsive kinks (ż_r(1) > 0 > ż_r(γ)) are crossed, not held.
"""

import dataclasses
import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Float

from ._flow import make_field, time_from_log_t
from ._nonsmooth import AbstractNonsmoothModel, pair_columns
from ._problem import Problem

# Ridge on the equivalent-control system relative to its largest diagonal entry (a pair whose
# column vanishes, e.g. a unit with output weight 0, would make it singular).
_RIDGE = 1e-13


def _check_model(problem) -> AbstractNonsmoothModel:
    if not isinstance(problem, Problem):
        raise TypeError(f"simulate_sliding needs a flowsim.Problem, got {type(problem).__name__}")
    model = problem.model
    if not isinstance(model, AbstractNonsmoothModel):
        raise TypeError(
            "simulate_sliding needs a model with ReLU-type kinks (an AbstractNonsmoothModel such as "
            f"fs.networks.TwoLayer), got {type(model).__name__}: a smooth model has no kinks to slide on; "
            "use fs.simulate"
        )
    depth = getattr(model, "depth", None)
    if depth is not None and depth > 2:
        raise ValueError(
            f"simulate_sliding needs one kink layer per sample (a field affine in the slopes), got an MLP "
            f"of depth {depth}; use fs.simulate (min-norm band field) or fs.smoothed_limit"
        )
    return model


class _Segment(eqx.Module):
    """The sliding field and its event function, for one problem (the stratum is an argument)."""

    field: eqx.Module
    leak: float = eqx.field(static=True)
    drift_rate: float = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)

    def _gradient(self, theta, slopes, log_scale):
        problem = self.field.problem

        def predictions(t):
            return jax.vmap(self.field.model(t).forward)(problem.X, slopes)

        preds, pullback = jax.vjp(predictions, theta)
        cotangent = problem.loss.scaled_gradient(preds, problem.y, log_scale) / problem.num_samples
        (grad,) = pullback(cotangent)
        return grad, cotangent

    def z(self, theta: Float[Array, " p"]) -> Float[Array, " nU"]:
        return jax.vmap(self.field.model(theta).pre_activations)(self.field.problem.X).ravel()

    def normals(self, theta, index, valid):
        """J_S: ∇_θ z_s for each pair of the stratum, shape (K, p) (zero rows where not valid)."""
        X = self.field.problem.X
        sample, unit = jnp.divmod(index, self.shape[1])

        def row(i, u, ok):
            return jnp.where(ok, jax.grad(lambda t: self.field.model(t).pre_activations(X[i])[u])(theta), 0.0)

        return jax.vmap(row)(sample, unit, valid)

    def rates(self, s, theta, base, index, valid):
        """(dθ/ds, slopes d_S) with the stratum held by the equivalent control."""
        slopes = base.reshape(self.shape)
        g0, weights = self._gradient(theta, slopes, s)
        sample, unit = jnp.divmod(index, self.shape[1])
        G = pair_columns(self.field, theta, self.field.problem.X, weights, slopes, sample, unit, valid)
        J = self.normals(theta, index, valid)
        M = J @ G
        scale = jnp.max(jnp.where(valid, jnp.abs(jnp.diagonal(M)), 0.0))
        mask = valid[:, None] & valid[None, :]
        M = jnp.where(mask, M, 0.0) + jnp.diag(jnp.where(valid, _RIDGE * scale, 1.0))
        z_S = jnp.where(valid, self.z(theta)[index], 0.0)
        rhs = jnp.where(valid, self.drift_rate * z_S - J @ g0, 0.0)
        delta = jnp.linalg.solve(M, rhs)
        return -(g0 + G @ delta), base[index] + delta

    def vector_field(self, s, theta, args):
        base, index, valid, _ = args
        return self.rates(s, theta, base, index, valid)[0]

    def margins(self, s, theta, args):
        """q per pair outside S (sign_r z_r) and per stratum pair (slope margin); +inf where unused."""
        base, index, valid, fresh = args
        z = self.z(theta)
        sign = jnp.where(base == 1.0, 1.0, -1.0)
        held = jnp.zeros(z.shape, bool).at[index].max(valid)
        pair = jnp.where(held | fresh, jnp.inf, sign * z)
        _, d = self.rates(s, theta, base, index, valid)
        slope = jnp.where(valid, jnp.minimum(d - self.leak, 1.0 - d), jnp.inf)
        return pair, slope

    def event(self, t, y, args, **kwargs):
        pair, slope = self.margins(t, y, args)
        return jnp.minimum(jnp.min(pair), jnp.min(slope))


@eqx.filter_jit
def _z(seg, theta):
    return seg.z(theta)


@eqx.filter_jit
def _rates(seg, s, theta, base, index, valid):
    return seg.rates(s, theta, base, index, valid)


@eqx.filter_jit
def _margins(seg, s, theta, args):
    return seg.margins(s, theta, args)


@eqx.filter_jit
def _drift(seg, theta, index, valid):
    return jnp.max(jnp.where(valid, jnp.abs(seg.z(theta)[index]), 0.0))


@eqx.filter_jit
def _one_sided(seg, s, theta, base, index, valid, r):
    """(ż_r with d_r = 1, ż_r with d_r = γ), the stratum S held on its kinks."""
    normal = seg.normals(theta, r[None], jnp.array([True]))[0]
    return jnp.stack([normal @ seg.rates(s, theta, base.at[r].set(v), index, valid)[0] for v in (1.0, seg.leak)])


@dataclasses.dataclass(frozen=True)
class SlidingSolution:
    """What `simulate_sliding` returns.

    - `log_t`: log of physical time at the start, the end of each segment (an event) and the end
      (simultaneous events share one entry);
    - `theta`: the flat trainable parameters there, shape (E + 2, p); `final`: the model at the end;
    - `stratum_size`, `max_drift`: |S| and max_{s ∈ S} |z_s| at each point, for the stratum of the
      segment that ends there (at the start: the initial stratum);
    - `events`: list of (kind, pair) with kind in "slide", "cross", "leave"; `missed`: events
      found only at a restart (module docstring); `num_steps`: solver steps, all segments;
    - `ok`: the horizon was reached; `message`: why not, otherwise "".
    """

    log_t: np.ndarray
    theta: np.ndarray
    final: object
    stratum_size: np.ndarray
    max_drift: np.ndarray
    events: list
    missed: int
    num_steps: int
    ok: bool
    message: str


def simulate_sliding(
    problem: Problem,
    log_t1: float,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    solver=None,
    root_finder=None,
    max_sliding: int | None = None,
    drift_rate: float = 10.0,
    max_events: int = 10_000,
    max_steps_per_segment: int = 100_000,
) -> SlidingSolution:
    """Gradient flow of a ReLU network from t = 0 to t = e^{log_t1} by event-driven sliding.

    In log time s = log(1 + t): dθ/ds = −e^s ∂L(θ), with the stratum's slopes by Utkin's
    equivalent control and kink events located by a root finder (module docstring).

    **Arguments:** `problem` (a `Problem` whose model is an `AbstractNonsmoothModel` affine in
    its slopes: `TwoLayer`, a depth-2 `MLP`, a `Kinked` with one kink layer); `log_t1`: the
    horizon; `rtol`, `atol`: the PID controller's tolerances; `solver`: a Diffrax solver (Tsit5); `root_finder`: an
    optimistix root finder for the event times (Bisection, rtol 1e-10, atol 1e-12);
    `max_sliding`: K, the most pairs held at once (the model's `max_kinks`, at most n·U);
    `drift_rate`: k of the Baumgarte term (per unit of s); `max_events`, `max_steps_per_segment`.
    """
    model = _check_model(problem)
    log_t1 = float(log_t1)
    if not np.isfinite(log_t1):
        raise ValueError(f"log_t1 must be finite, got {log_t1}")
    for name, value in (("rtol", rtol), ("atol", atol), ("drift_rate", drift_rate)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    theta, field = make_field(problem, log_time=True, rtol=rtol, atol=atol)
    n = problem.num_samples
    units = jax.eval_shape(model.pre_activations, problem.X[0]).shape[0]
    pairs = n * units
    K = min(int(model.max_kinks if max_sliding is None else max_sliding), pairs)
    if K < 1:
        raise ValueError(f"max_sliding must be at least 1, got {max_sliding}")
    seg = _Segment(field, float(model.leak), float(drift_rate), (n, units))
    solver = diffrax.Tsit5() if solver is None else solver
    root_finder = optx.Bisection(rtol=1e-10, atol=1e-12) if root_finder is None else root_finder
    s1 = float(time_from_log_t(log_t1, True))

    @eqx.filter_jit
    def solve(seg, theta, s0, args):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(seg.vector_field), solver, s0, s1, None, theta, args,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4),
            event=diffrax.Event(seg.event, root_finder, direction=False),
            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps_per_segment, throw=False,
        )
        return sol.ts[-1], sol.ys[-1], sol.result == diffrax.RESULTS.event_occurred, sol.result, sol.stats["num_steps"]

    z_fn = functools.partial(_z, seg)
    one_sided = functools.partial(_one_sided, seg)
    margins = functools.partial(_margins, seg)
    drift = functools.partial(_drift, seg)
    rates = functools.partial(_rates, seg)

    z0 = np.asarray(z_fn(theta))
    base = np.where(z0 > 0, 1.0, model.leak)
    index = np.zeros(K, np.int64)
    valid = np.zeros(K, bool)
    fresh = np.zeros(pairs, bool)
    events, missed, steps = [], 0, 0
    s = 0.0

    def decide(r, th, s):
        """Join S, or cross: from the one-sided rates of pair r at its kink."""
        nonlocal base, index, valid
        up, down = np.asarray(one_sided(jnp.asarray(s), th, jnp.asarray(base), jnp.asarray(index), jnp.asarray(valid),
                                         jnp.asarray(r)))
        if up <= 0.0 <= down and not valid.all():
            slot = int(np.argmin(valid))
            index, valid = index.copy(), valid.copy()
            index[slot], valid[slot] = r, True
            events.append(("slide", int(r)))
        else:
            base = base.copy()
            base[r] = 1.0 if (up > 0.0 and down > 0.0) or (up > 0.0 >= down and base[r] != 1.0) else model.leak
            fresh[r] = True
            events.append(("cross", int(r)))

    for r in np.flatnonzero(z0 == 0.0):
        decide(int(r), theta, s)
    record = [(s, np.asarray(theta), int(valid.sum()), 0.0)]
    ok, message = False, ""
    def handle(pair, slope, theta, s):
        """The event with the smallest margin, at the current state."""
        nonlocal base, valid
        if np.min(slope) <= np.min(pair):
            k = int(np.argmin(slope))
            r = int(index[k])
            _, d = rates(jnp.asarray(s), theta, jnp.asarray(base), jnp.asarray(index), jnp.asarray(valid))
            base = base.copy()
            base[r] = 1.0 if float(d[k]) > 0.5 * (1.0 + model.leak) else model.leak
            valid = valid.copy()
            valid[k] = False
            fresh[r] = True
            events.append(("leave", r))
        else:
            decide(int(np.argmin(pair)), theta, s)

    while True:
        if len(events) >= max_events:
            message = f"max_events = {max_events} reached at log t = {np.log(np.expm1(s)):.6g}"
            break
        args = (jnp.asarray(base), jnp.asarray(index), jnp.asarray(valid), jnp.asarray(fresh))
        # A margin already at or below 0 (events at the same time) would never trigger the event
        # (it fires when q falls through 0): take such events now, as zero-length segments.
        pair, slope = (np.asarray(v) for v in margins(jnp.asarray(s), theta, args))
        if min(np.min(pair), np.min(slope)) <= 0.0:
            handle(pair, slope, theta, s)
            continue
        s_new, theta, hit, result, nsteps = solve(seg, theta, jnp.asarray(s), args)
        s, steps = float(s_new), steps + int(nsteps)
        if not bool(hit) and result != diffrax.RESULTS.successful:
            pair, slope = (np.asarray(v) for v in margins(jnp.asarray(s), theta, args))
            message = (f"the segment solve failed at log t = {np.log(np.expm1(s)):.6g}: {result} "
                       f"(min pair margin {pair.min():.3g}, min slope margin {slope.min():.3g})")
            break
        # Pairs left out of q this segment that ended up on the wrong side: missed crossings.
        z = np.asarray(z_fn(theta))
        wrong = fresh & (np.where(base == 1.0, 1.0, -1.0) * z < 0)
        missed += int(wrong.sum())
        base = np.where(wrong, np.where(z > 0, 1.0, model.leak), base)
        fresh = np.zeros(pairs, bool)
        record.append((s, np.asarray(theta), int(valid.sum()), float(drift(theta, jnp.asarray(index),
                                                                               jnp.asarray(valid)))))
        if not bool(hit):
            ok = True
            break
        handle(*(np.asarray(v) for v in margins(jnp.asarray(s), theta, args)), theta, s)
    log_t = np.array([-np.inf if v == 0.0 else np.log(np.expm1(v)) for v, *_ in record])
    return SlidingSolution(
        log_t=log_t,
        theta=np.stack([th for _, th, *_ in record]),
        final=field.model(theta),
        stratum_size=np.array([c for *_, c, _ in record]),
        max_drift=np.array([m for *_, m in record]),
        events=events,
        missed=missed,
        num_steps=steps,
        ok=ok,
        message=message,
    )
