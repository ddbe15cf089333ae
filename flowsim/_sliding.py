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
  For first-layer kinks z_iu = ⟨w_u, x_i⟩ (the models' closed form, `SameUnitSystem`) ż_iu depends only on
  the slopes of unit u, so J_S G_S is block-diagonal by unit: one small solve per unit (`unit_blocks`, in
  blocks of a few static sizes, `BLOCK_SIZES`) instead of one |S|×|S| solve (10 ms against 170 ms per field
  evaluation with 900 pairs held on the n = 100, m = 100, d = 10^3 net).

S is a traced index array (its pairs in the first slots), passed to the field in the smallest of a few
static sizes (`STRATUM_SIZES`, capped at the capacity: every pair for the models' closed form, else the
model's `max_kinks`) that holds it: one compiled segment solve
per size serves every stratum of that size. Events (`diffrax.Event`, located by `optimistix.Bisection`
on the step's bracket, direction: falls to 0; `optimistix.Newton` failed to converge on the min of many
margins) fire on q = min(min_{r ∉ S} sign_r z_r, min_{s ∈ S} min(d_s − γ, 1 − d_s)):

- a pair r reaching z_r = 0: its one-sided rates ż_r(d_r = 1), ż_r(d_r = γ) (S kept on its
  kinks) decide. If ż_r(1) ≤ 0 ≤ ż_r(γ) both sides push into the kink (Filippov's attractive
  sliding): r joins S. Otherwise r crosses to the side its rates point to (its sign flips);
- a slope d_s of s ∈ S reaching γ or 1: s leaves S to the side of that slope.

A transversal crossing flips one pair's side and leaves S as it is, so `fs.simulate` takes crossings inside the
compiled solve (`_solve_crossings`: a `lax.while_loop` over smooth solves and crossings, recording each crossing);
it returns to the driver (eagerly, in Python) only for the other events, the horizon, a failure or a budget, and
the driver restarts the solve from the event state (`simulate_sliding` returns at every event). The pair an event just
moved sits at z ≈ 0, so for the next segment its margin is sign_r z_r + h_r with a small hysteresis h_r > 0
(`fresh_offset`; else q would start at 0 and never fall through it): it fires if the pair comes back through its
kink (a pair that leaves S at γ may return at once). A segment that ends (other than at an event) with such a pair beyond the
hysteresis on the wrong side counts as a missed event (`missed` in the result); the restart takes it as an event
due at once (its margin is below 0), so its one-sided rates still decide whether it slides or crosses.

`fs.simulate(..., nonsmooth="sliding")` runs a `Plan` here (`simulate_on_strata`): saves on the plan's grid
(a sub-`SaveAt` per segment), `target_log_loss` as one more event margin, `max_steps` over all segments,
`solver="auto"` deciding per segment with `AutoSolver` on the stratum's field (counted work, never the clock),
progress, and checkpoints of the fixed-shape `SlidingCarry` with the policy's state.
`simulate_sliding` is the same loop recording every event (for the tests of event times).

Status: checked against closed forms (a sliding phase with its entry and exit times, a
transversal crossing, two pairs at once), against the min-norm Clarke element at states on a stratum,
against Lyu & Li's monotone smoothed margin, against the band field (tests/test_sliding*.py), and on the
noisy two-layer net against the band field (`benchmarks/sliding.py`, `benchmarks/relu.py --table`).

Limitations: models must be affine in the slopes (one kink layer per sample); an MLP of depth
> 2 is refused; on the autodiff path (no closed form), more pairs sliding than `max_kinks` stops the solve. Simultaneous events are taken one at a time (the others follow at once as
zero-length segments). Repulsive kinks (ż_r(1) > 0 > ż_r(γ)) are crossed, not held.
"""

import dataclasses
import math
import re
import time as _time
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int

from ._checkpoint import CheckpointStore, fingerprint
from ._driver import ProgressBar, log_t_of
from ._engine import Carry, finish, krylov_iterations, spectral_radius
from ._flow import make_field, time_from_log_t
from ._kinks import kink_summary
from ._nonsmooth import AbstractNonsmoothModel, SameUnitSystem, pair_columns
from ._policy import Measurement
from ._problem import Problem
from ._solvers import is_implicit, make_solver
from ._trajectory import Status

# Ridge on the equivalent-control system relative to its largest diagonal entry (a pair whose
# column vanishes, e.g. a unit with output weight 0, would make it singular).
_RIDGE = 1e-13
# A `SameUnitSystem`'s blocks read ⟨x_i, x_j⟩ from X Xᵀ, precomputed for up to this many samples.
_GRAM_SAMPLES = 4096
# Baumgarte rate k (per unit of log time s) pulling drift back onto z_S = 0.
DRIFT_RATE = 10.0
# The event times' root finder: bisection on the step's bracket (Newton did not converge on the minimum of
# many margins); 1e-12 in s did not converge on the noisy two-layer net either.
ROOT_RTOL, ROOT_ATOL = 1e-10, 1e-12
EVENT_KINDS = ("slide", "cross", "leave")
# The stratum sizes the field is compiled for (each is one compiled program): the equivalent control costs
# ~|S|²·p per evaluation, so a field sized for the model's max_kinks when few pairs slide wastes most of it.
STRATUM_SIZES = (8, 32, 128, 512, 2048)
# With the models' closed form a small stratum costs little either way: fewer sizes, fewer compiled solves.
CLOSED_FORM_SIZES = (32, 128, 512, 2048)
# The unit-block sizes of a `SameUnitSystem`'s solve (one compiled program per stratum size and block size).
BLOCK_SIZES = (4, 16, 64, 256, 1024, 4096)
# Strata of fewer slots are solved densely (K³ is then cheap, and each block size would compile again).
BLOCKS_FROM = 512
# fs.simulate takes transversal crossings inside the compiled solve (`_solve_crossings`); False: each event returns
# to Python, as `simulate_sliding` does (the tests compare the two).
INLINE_CROSSINGS = True
# solver="auto" measures the stiffness of a stratum after a segment of at least this many steps.
MEASURED_SEGMENT_STEPS = 16


def check_model(problem, who: str = "simulate_sliding") -> AbstractNonsmoothModel:
    """The model of a sliding solve: kinks, one kink layer per sample (a field affine in the slopes)."""
    if not isinstance(problem, Problem):
        raise TypeError(f"{who} needs a flowsim.Problem, got {type(problem).__name__}")
    model = problem.model
    if not isinstance(model, AbstractNonsmoothModel):
        raise TypeError(
            f"{who} needs a model with ReLU-type kinks (an AbstractNonsmoothModel such as fs.networks.TwoLayer, "
            f"or a model whose kinks fs.Problem found), got {type(model).__name__}: a smooth model has no kinks to "
            "slide on; use fs.simulate without nonsmooth='sliding'"
        )
    depth = getattr(model, "depth", None)
    if depth is not None and depth > 2:
        raise ValueError(
            f"{who} needs one kink layer per sample (a field affine in the slopes), got an MLP of depth {depth}; "
            "use the band field (nonsmooth='band') or fs.smoothed_limit"
        )
    return model


def _model_name(model) -> str:
    inner = model.__dict__.get("model", model)  # a Kinked wraps the user's module
    return type(inner).__name__


@eqx.filter_jit
def _slopes_interact(field, theta, X):
    """Whether the gradient ∇_θ f(x; θ, d) is not affine in the slopes d (a kink downstream of another): the
    Hessian in d of a random projection of it, at generic slopes on a few samples, is not exactly zero
    (automatic differentiation of an affine map gives exact zeros)."""
    units = jax.eval_shape(field.model(theta).pre_activations, X[0]).shape[0]
    slopes = jnp.linspace(0.3, 0.9, units)
    direction = jnp.cos(jnp.arange(theta.shape[0], dtype=theta.dtype))

    def projected(x, d):
        return direction @ jax.grad(lambda t: jnp.sum(field.model(t).forward(x, d)))(theta)

    curvature = jax.vmap(lambda x: jax.hessian(lambda d: projected(x, d))(slopes))(X[:3])
    return jnp.any(curvature != 0)


def sliding_refusal(the_plan) -> str | None:
    """Why `nonsmooth="auto"` runs the plan on the band field rather than by sliding, in words; None where
    sliding applies: a model with kinks, one kink layer per sample (its gradient affine in the slopes), an
    eager solve (not under `jit`/`vmap`) in log time."""
    problem = the_plan.problem
    model = getattr(problem, "model", None)
    if not isinstance(problem, Problem):
        return f"sliding needs a plain fs.Problem, got {type(problem).__name__}"
    if not isinstance(model, AbstractNonsmoothModel):
        return "the model is smooth"
    depth = getattr(model, "depth", None)
    if depth is not None and depth > 2:
        return f"an MLP of depth {depth} has kinks feeding each other"
    if the_plan.traced:
        return "under jax.jit or eqx.filter_vmap (sliding runs eagerly)"
    if not the_plan.log_time:
        return "integrated in linear time (sliding runs in log time: pass log_t1 or time='log')"
    if bool(_slopes_interact(the_plan.field, the_plan.theta0, problem.X)):
        return f"the kinks of {_model_name(model)} feed each other"
    return None


def _check_slopes_affine(field, theta, problem, who: str) -> None:
    # One compiled program (op-by-op, the nested derivatives dispatch thousands of small kernels).
    if bool(_slopes_interact(field, theta, problem.X)):
        raise ValueError(
            f"{who} needs one kink layer per sample (a field affine in the slopes), but the kinks of "
            f"{_model_name(problem.model)} feed each other (its gradient is not affine in their slopes, as with two "
            "ReLU layers); use the band field (nonsmooth='band') or fs.smoothed_limit"
        )


def unit_blocks(unit: Int[Array, " K"], valid: Bool[Array, " K"], blocks: int, size: int) -> Int[Array, "B c"]:
    """The held slots grouped by unit: row b lists the slots of the b-th unit present (in slot order), padded
    with K (no slot). `blocks` ≥ the number of units present and `size` ≥ the most slots of one unit, or the
    excess is dropped (the caller sizes both: `_block_shape`)."""
    K = unit.shape[0]
    key = jnp.where(valid, unit, jnp.iinfo(unit.dtype).max)
    order = jnp.argsort(key, stable=True)
    sorted_key = key[order]
    positions = jnp.arange(K)
    first = jnp.concatenate([jnp.ones(1, bool), sorted_key[1:] != sorted_key[:-1]])
    block = jnp.cumsum(first) - 1
    rank = positions - jax.lax.cummax(jnp.where(first, positions, 0))
    ok = valid[order] & (block < blocks) & (rank < size)
    layout = jnp.full((blocks, size), K, order.dtype)
    return layout.at[jnp.where(ok, block, blocks), jnp.where(ok, rank, 0)].set(order, mode="drop")


def _block_shape(unit: np.ndarray, valid: np.ndarray, units: int) -> tuple[int, int] | None:
    """(B, c) for `unit_blocks` on a stratum of K slots (numpy, between segments): B = min(U, K) blocks of the
    smallest size in `BLOCK_SIZES` holding every unit's held slots; None below `BLOCKS_FROM` slots or where one
    block would hold them all (the dense K×K solve costs no more)."""
    K = unit.shape[0]
    if K < BLOCKS_FROM:
        return None
    most = int(np.bincount(unit[valid], minlength=1).max()) if valid.any() else 0
    size = next((c for c in BLOCK_SIZES if c >= most), None)
    if size is None or size >= K:
        return None
    return min(units, K), size


class _Segment(eqx.Module):
    """The sliding field and its event function, for one problem (the stratum is an argument).

    `blocks`: (B, c) to solve a `SameUnitSystem` (the models' closed form) unit by unit, B blocks of c slots
    (`unit_blocks`); None: one dense K×K solve. `gram`: X Xᵀ (n×n) when n is small, for the blocks' entries."""

    field: eqx.Module
    leak: float = eqx.field(static=True)
    drift_rate: float = eqx.field(static=True)
    shape: tuple = eqx.field(static=True)
    gram: Array | None = None
    blocks: tuple | None = eqx.field(static=True, default=None)

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

    def solve(self, M, rhs, valid):
        """δ from (J_S G_S) δ = rhs, with a ridge of `_RIDGE` × its largest valid diagonal entry; slots that are not
        valid get δ = 0. `M`: a K×K matrix, or a `SameUnitSystem` (solved by unit blocks where `blocks` is set)."""
        if isinstance(M, SameUnitSystem):
            slots = jnp.arange(M.sample.shape[0])
            diagonal = M.inner(slots, slots, self.gram) * M.beta
        else:
            diagonal = jnp.diagonal(M)
        scale = jnp.max(jnp.where(valid, jnp.abs(diagonal), 0.0))
        ridge = jnp.where(valid, _RIDGE * scale, 1.0)
        rhs = jnp.where(valid, rhs, 0.0)
        if isinstance(M, SameUnitSystem) and self.blocks is not None:
            return self._solve_blocks(M, rhs, valid, ridge)
        if isinstance(M, SameUnitSystem):
            M = M.dense(self.gram)
        mask = valid[:, None] & valid[None, :]
        M = jnp.where(mask, M, 0.0) + jnp.diag(ridge)
        return jnp.linalg.solve(M, rhs)

    def _solve_blocks(self, system, rhs, valid, ridge):
        """The same solve as the dense one, unit by unit: J_S G_S is block-diagonal by unit (`SameUnitSystem`),
        so B systems of c×c (padding slots hold the identity) replace one K×K."""
        K = rhs.shape[0]
        layout = unit_blocks(system.unit, valid, *self.blocks)
        pad = layout == K
        slot = jnp.where(pad, 0, layout)
        entries = system.inner(slot[:, :, None], slot[:, None, :], self.gram) * system.beta[slot][:, None, :]
        keep = ~pad[:, :, None] & ~pad[:, None, :]
        eye = jnp.eye(self.blocks[1], dtype=rhs.dtype)
        M = jnp.where(keep, entries, 0.0) + eye * jnp.where(pad, 1.0, ridge[slot])[:, :, None]
        delta = jnp.linalg.solve(M, jnp.where(pad, 0.0, rhs[slot])[..., None])[..., 0]
        return jnp.zeros(K, rhs.dtype).at[layout.ravel()].set(delta.ravel(), mode="drop")

    def system(self, theta, g0, weights, index, valid):
        """The model's closed form of the equivalent-control system (`stratum_system`), or None."""
        sample, unit = jnp.divmod(index, self.shape[1])
        X = self.field.problem.X
        return self.field.model(theta).stratum_system(X, weights, self.field.unravel(g0), sample, unit, valid)

    def rates(self, s, theta, base, index, valid):
        """(dθ/ds, slopes d_S) with the stratum held by the equivalent control."""
        slopes = base.reshape(self.shape)
        g0, weights = self._gradient(theta, slopes, s)
        sample, unit = jnp.divmod(index, self.shape[1])
        X = self.field.problem.X
        system = self.system(theta, g0, weights, index, valid)
        if system is None:
            G = pair_columns(self.field, theta, X, weights, slopes, sample, unit, valid)
            J = self.normals(theta, index, valid)
            M, Jg = J @ G, J @ g0
        elif isinstance(system, SameUnitSystem):  # the models' closed form (two-layer nets): no K×p matrices
            M, Jg = system, system.jg
        else:
            M, Jg = system
        z_S = jnp.where(valid, self.z(theta)[index], 0.0)
        delta = self.solve(M, self.drift_rate * z_S - Jg, valid)
        if system is None:
            return -(g0 + G @ delta), base[index] + delta
        # g is affine in the slopes: g0 + G δ is the gradient at the held slopes (invalid slots add 0).
        held = base.at[index].add(jnp.where(valid, delta, 0.0)).reshape(self.shape)
        return -self._gradient(theta, held, s)[0], base[index] + delta

    def vector_field(self, s, theta, args):
        base, index, valid = args[:3]
        return self.rates(s, theta, base, index, valid)[0]

    def margins(self, s, theta, args):
        """q per pair outside S (sign_r z_r + h_r) and per stratum pair (slope margin); +inf where unused.

        h_r > 0 only for a pair an event just moved (`fresh`, `fresh_offset`): it sits at its kink, so its margin
        starts at h_r > 0 rather than 0 and the event fires if it comes back through the kink."""
        base, index, valid, fresh = args[:4]
        z = self.z(theta)
        sign = jnp.where(base == 1.0, 1.0, -1.0)
        held = jnp.zeros(z.shape, bool).at[index].max(valid)
        pair = jnp.where(held, jnp.inf, sign * z + fresh)
        _, d = self.rates(s, theta, base, index, valid)
        slope = jnp.where(valid, jnp.minimum(d - self.leak, 1.0 - d), jnp.inf)
        return pair, slope

    def target_margin(self, theta, target):
        """log L(θ) − target (+inf without a target, `target` NaN)."""
        return jnp.where(jnp.isnan(target), jnp.inf, self.field.log_loss(theta) - target)

    def event(self, t, y, args, **kwargs):
        pair, slope = self.margins(t, y, args)
        return jnp.minimum(jnp.minimum(jnp.min(pair), jnp.min(slope)), self.target_margin(y, args[4]))


@eqx.filter_jit
def _z(seg, theta):
    return seg.z(theta)


def fresh_offset(z, r):
    """The hysteresis h_r of pair r, just moved by an event at its kink: |z_r| (the event's root is found to a
    tolerance, so r may sit a little on either side) plus 1e-12 of the largest |z|. Pairs an event moved used to
    be left out of the next segment's events, and one that came back through its kink in that segment was missed
    (found only at the restart, on the wrong side, its slide or crossing not taken)."""
    xp = jnp if isinstance(z, jax.Array) else np
    return xp.abs(z[r]) + 1e-12 * (1.0 + xp.max(xp.abs(z)))


@eqx.filter_jit
def _margins(seg, s, theta, args):
    pair, slope = seg.margins(s, theta, args)
    return pair, slope, seg.target_margin(theta, args[4])


@eqx.filter_jit
def _after_segment(seg, theta, base, index, valid, fresh):
    """(pairs an event moved that ended beyond their hysteresis on the wrong side, z, max_{s ∈ S} |z_s|) at a
    segment's end."""
    z = seg.z(theta)
    wrong = (fresh > 0) & (jnp.where(base == 1.0, 1.0, -1.0) * z + fresh < 0)
    return wrong, z, jnp.max(jnp.where(valid, jnp.abs(z[index]), 0.0))


@eqx.filter_jit
def _one_sided(seg, s, theta, base, index, valid, r):
    """(ż_r with d_r = 1, ż_r with d_r = γ), the stratum S held on its kinks: ż = ⟨∇z_r, θ'⟩ by one
    forward-mode derivative of z along θ'."""
    return _rates_one_sided(seg, s, theta, base, index, valid, r)


def _rates_one_sided(seg, s, theta, base, index, valid, r):
    def rate(v):
        velocity = seg.rates(s, theta, base.at[r].set(v), index, valid)[0]
        return jax.jvp(seg.z, (theta,), (velocity,))[1][r]

    return jnp.stack([rate(1.0), rate(seg.leak)])


@eqx.filter_jit
def _held_slopes(seg, s, theta, base, index, valid):
    return seg.rates(s, theta, base, index, valid)[1]


@eqx.filter_jit
def _solve(seg, solver, controller, root_finder, theta, s0, s1, args, save_times, max_steps):
    """One stratum: a smooth solve from s0 until an event or s1, saving at the grid times it passes."""
    return _smooth_solve(seg, solver, controller, root_finder, theta, s0, s1, args, save_times, max_steps)


def _smooth_solve(seg, solver, controller, root_finder, theta, s0, s1, args, save_times, max_steps):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(seg.vector_field),
        solver,
        s0,
        s1,
        None,
        theta,
        args,
        stepsize_controller=controller,
        event=diffrax.Event(seg.event, root_finder, direction=False),
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=jnp.clip(save_times, s0, s1)), diffrax.SubSaveAt(t1=True)]),
        max_steps=max_steps,
        throw=False,
    )
    (grid_ts, end_ts), (grid_ys, end_ys) = sol.ts, sol.ys
    steps = jnp.stack([sol.stats["num_steps"], sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]])
    return end_ts[-1], end_ys[-1], grid_ts, grid_ys, sol.result, steps


# Why `_solve_crossings` returned: still running (a budget or the log of crossings is full), an event that is not a
# crossing is due (the driver takes it), or the last smooth solve ended without an event (its `result` says how).
_RUNNING, _EVENT, _ENDED = 0, 1, 2
# Crossings recorded per `_solve_crossings` call (it returns when the log is full, so every one reaches `run.log`).
CROSSING_LOG = 64


class _Loop(NamedTuple):
    """`_solve_crossings`' loop state: the carry's moving parts, why it stops, and the crossings it took."""

    theta: Array
    s: Array
    base: Array
    fresh: Array
    saves: Array
    save_time: Array
    filled: Array
    steps: Array
    events: Array
    max_drift: Array
    exit: Array
    result: object  # a diffrax.RESULTS item: how the last smooth solve ended
    pending: Array  # the last smooth solve ended at an event not yet taken
    log: Array
    logged: Array


def _take_crossing(seg, st: _Loop, index, valid, target) -> _Loop:
    """The event due at the loop's state, in the compiled loop (as `_take_event` and `_join_or_cross`): a pair
    at its kink whose one-sided rates do not both push into it crosses (its side flips, it is marked fresh);
    any other event (the target, a held slope at γ or 1, a pair that slides) is left to the driver."""
    pair, slope = seg.margins(st.s, st.theta, (st.base, index, valid, st.fresh, target))
    target_margin = seg.target_margin(st.theta, target)
    q = jnp.minimum(jnp.min(pair), jnp.min(slope))
    is_pair = (target_margin > q) & (jnp.min(slope) > jnp.min(pair))
    r = jnp.argmin(pair)
    up, down = _rates_one_sided(seg, st.s, st.theta, st.base, index, valid, r)
    cross = is_pair & ~((up <= 0.0) & (0.0 <= down))
    to_active = ((up > 0.0) & (down > 0.0)) | ((up > 0.0) & (down <= 0.0) & (st.base[r] != 1.0))
    crossed = st._replace(
        base=st.base.at[r].set(jnp.where(to_active, 1.0, seg.leak)),
        fresh=st.fresh.at[r].set(fresh_offset(seg.z(st.theta), r)),
        events=st.events.at[EVENT_KINDS.index("cross")].add(1),
        log=st.log.at[st.logged].set(r),
        logged=st.logged + 1,
        pending=jnp.asarray(False),
    )
    left = st._replace(exit=jnp.asarray(_EVENT), pending=jnp.asarray(False))
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cross, a, b), crossed, left)


def _smooth_part(seg, solver, controller, root_finder, st: _Loop, index, valid, s1, target, save_times, max_steps):
    """One smooth solve of the stratum from the loop's state (as `_segment`): saves, counts, drift, missed events."""
    args = (st.base, index, valid, st.fresh, target)
    s_end, theta, grid_ts, grid_ys, result, steps = _smooth_solve(
        seg, solver, controller, root_finder, st.theta, st.s, s1, args, save_times, max_steps
    )
    new = ~st.filled & (save_times >= st.s) & (grid_ts == save_times)
    z = seg.z(theta)
    wrong = (st.fresh > 0) & (jnp.where(st.base == 1.0, 1.0, -1.0) * z + st.fresh < 0)
    drift = jnp.max(jnp.where(valid, jnp.abs(z[index]), 0.0))
    hit = result == diffrax.RESULTS.event_occurred
    # A solve that ends at an event may end with the pair that fired it just past its margin: that is the event,
    # taken next (as any pair on its wrong side: the next iteration finds its margin below 0), not a missed one.
    wrong = wrong & ~hit
    return st._replace(
        theta=theta,
        s=s_end,
        fresh=jnp.zeros_like(st.fresh),
        saves=jnp.where(new[:, None], grid_ys, st.saves),
        save_time=jnp.where(new, save_times, st.save_time),
        filled=st.filled | new,
        steps=st.steps + steps,
        events=st.events.at[3].add(jnp.sum(wrong)),
        max_drift=jnp.maximum(st.max_drift, drift),
        exit=jnp.where(hit, _RUNNING, _ENDED),
        result=result,
        pending=hit,
    )


@eqx.filter_jit
def _solve_crossings(
    seg, solver, controller, root_finder, st: _Loop, index, valid, s1, target, save_times, limits, max_steps
):
    """Smooth solves of one stratum and the transversal crossings between them, in one compiled loop: a crossing
    flips one pair's side and leaves S as it is, so only the other events (and the horizon, a failure, the step
    and event budgets `limits` = (total steps, steps of this call, events), a full crossing log) return to the
    driver. Each smooth solve and each crossing is the one `_segment` and `_take_event` would take."""
    steps0 = st.steps[0]

    def budget(st):
        return (
            (st.steps[0] < limits[0])
            & (st.steps[0] - steps0 < limits[1])
            & (jnp.sum(st.events[:3]) < limits[2])
            & (st.logged < CROSSING_LOG)
        )

    def cond(st):
        return (st.exit == _RUNNING) & (budget(st) | st.pending)

    def body(st):
        # As `_step`: an event due now (the one the last solve ended at, or one at the same time) is taken before
        # any solve, so a solve never starts with a margin at or below 0 (it could not fire).
        pair, slope = seg.margins(st.s, st.theta, (st.base, index, valid, st.fresh, target))
        q = jnp.minimum(jnp.minimum(jnp.min(pair), jnp.min(slope)), seg.target_margin(st.theta, target))
        return jax.lax.cond(
            st.pending | (q <= 0.0),
            lambda st: _take_crossing(seg, st, index, valid, target),
            lambda st: _smooth_part(
                seg, solver, controller, root_finder, st, index, valid, s1, target, save_times, max_steps
            ),
            st,
        )

    return jax.lax.while_loop(cond, body, st)


class SlidingCarry(eqx.Module):
    """The state between segments, fixed shapes (checkpointed as is): θ at s, the stratum (`index`, `valid`),
    the sides of the other pairs (`base`: their slope, 1 or γ), the pairs an event just moved (`fresh`), the
    saves filled so far, step counts (total, accepted, rejected), event counts (slide, cross, leave, missed),
    the largest drift max |z_S| seen, and the status (−1 while running)."""

    theta: Array
    s: Array
    base: Array
    index: Array
    valid: Array
    fresh: Array
    saves: Array
    save_time: Array
    filled: Array
    steps: Array
    events: Array
    max_drift: Array
    status: Array


@dataclasses.dataclass
class _Run:
    """What one sliding solve runs with: the segment field, the solver pieces and the limits."""

    seg: _Segment
    solvers: dict  # name -> Diffrax solver, every solver the policy may choose
    current: str  # the one that runs next
    controller: object
    root_finder: object
    save_times: np.ndarray
    s1: float
    target: float
    max_steps: int
    max_steps_per_segment: int
    max_events: int
    capacity: int  # K, the most pairs held at once
    log: list = dataclasses.field(default_factory=list)  # (kind, pair) of every event, in order
    note: str = ""  # why the solve stopped early, when the status alone does not say
    policy: object = None  # an `AutoSolver` (solver="auto"), or None: `current` throughout
    policy_state: object = None
    auto_record: list = dataclasses.field(default_factory=list)  # (log t, solver, reason) of each decision
    linear_solver: str = "dense"
    closed_form: bool = True  # the model's stratum_system may be a `SameUnitSystem` (solved by unit blocks)
    inline_crossings: bool = False  # crossings taken in the compiled loop (`_solve_crossings`)

    @property
    def solver(self):
        return self.solvers[self.current]

    def segment_end(self, c: SlidingCarry) -> float:
        if self.policy is None:
            return self.s1
        return self.policy.segment_end(self.policy_state, float(c.s), self.s1)

    def segment_steps(self) -> int:
        """The step budget of the next segment (static: one compiled solve per value): `auto`'s segments are
        short enough to measure, a fixed solver's run to the next event."""
        if self.policy is None:
            return self.max_steps_per_segment
        return self.policy.segment_steps(self.policy_state, self.max_steps_per_segment)

    def args(self, c: SlidingCarry):
        index, valid = self.stratum(c)
        return (jnp.asarray(c.base), index, valid, jnp.asarray(c.fresh), jnp.asarray(self.target))

    def seg_of(self, c: SlidingCarry) -> _Segment:
        """The segment field for the carry's stratum: unit blocks sized for it where the model has the closed
        form (`_block_shape`), else the field as built."""
        if not self.closed_form:
            return self.seg
        index, valid = (np.asarray(a) for a in self.stratum(c))
        blocks = _block_shape(index % self.seg.shape[1], valid, self.seg.shape[1])
        return self.seg if blocks == self.seg.blocks else dataclasses.replace(self.seg, blocks=blocks)

    def stratum(self, c: SlidingCarry):
        """The held pairs as the field sees them: the first B slots, B the smallest size in `STRATUM_SIZES`
        (`CLOSED_FORM_SIZES` for a model with the closed form; capped at the capacity) that holds them all. The
        held pairs fill the first slots of the carry."""
        held = int(c.valid.sum())
        sizes = CLOSED_FORM_SIZES if self.closed_form else STRATUM_SIZES
        size = next(b for b in (*(b for b in sizes if b < self.capacity), self.capacity) if b >= held)
        return jnp.asarray(c.index[:size]), jnp.asarray(c.valid[:size])


def _numpy(carry: SlidingCarry) -> SlidingCarry:
    return jax.tree_util.tree_map(lambda leaf: np.array(leaf), carry)


def _start(run: _Run, theta) -> SlidingCarry:
    """The carry at s = 0: signs from the initial pre-activations, pairs exactly at a kink decided at once."""
    seg = run.seg
    z0 = np.asarray(_z(seg, theta))
    pairs, K, n_grid = z0.shape[0], run.capacity, run.save_times.shape[0]
    carry = SlidingCarry(
        theta=np.asarray(theta),
        s=np.float64(0.0),
        base=np.where(z0 > 0, 1.0, seg.leak),
        index=np.zeros(K, np.int64),
        valid=np.zeros(K, bool),
        fresh=np.zeros(pairs),
        saves=np.zeros((n_grid, theta.shape[0])),
        save_time=np.zeros(n_grid),
        filled=np.zeros(n_grid, bool),
        steps=np.zeros(3, np.int64),
        events=np.zeros(4, np.int64),
        max_drift=np.float64(0.0),
        status=np.int32(-1),
    )
    for r in np.flatnonzero(z0 == 0.0):
        carry = _join_or_cross(run, carry, int(r))
    return carry


def _count(run: _Run, carry: SlidingCarry, kind: str, pair: int) -> SlidingCarry:
    run.log.append((kind, pair))
    events = carry.events.copy()
    events[EVENT_KINDS.index(kind)] += 1
    return dataclasses.replace(carry, events=events)


def _join_or_cross(run: _Run, carry: SlidingCarry, r: int) -> SlidingCarry:
    """Pair r at its kink: it joins S if both one-sided rates push into the kink (Filippov's attractive
    sliding, ż_r(1) ≤ 0 ≤ ż_r(γ)); otherwise it crosses to the side its rates point to."""
    up, down = np.asarray(
        _one_sided(
            run.seg_of(carry),
            jnp.asarray(carry.s),
            jnp.asarray(carry.theta),
            jnp.asarray(carry.base),
            *run.stratum(carry),
            jnp.asarray(r),
        )
    )
    if up <= 0.0 <= down:
        if carry.valid.all():
            run.note = (
                f"pair {r} reached its kink and slides, but the stratum already holds {carry.valid.size} "
                "pairs (the model's max_kinks, which bounds sliding for models without a closed form): raise it, "
                "for your own module with fs.Problem(dataclasses.replace(problem.model, max_kinks=...), X, y, ...)"
            )
            return dataclasses.replace(carry, status=np.int32(Status.SOLVER_FAILURE))
        slot = int(np.argmin(carry.valid))
        index, valid = carry.index.copy(), carry.valid.copy()
        index[slot], valid[slot] = r, True
        return _count(run, dataclasses.replace(carry, index=index, valid=valid), "slide", r)
    base, fresh = carry.base.copy(), carry.fresh.copy()
    to_active = (up > 0.0 and down > 0.0) or (up > 0.0 >= down and base[r] != 1.0)
    base[r] = 1.0 if to_active else run.seg.leak
    fresh[r] = fresh_offset(np.asarray(_z(run.seg, jnp.asarray(carry.theta))), r)
    return _count(run, dataclasses.replace(carry, base=base, fresh=fresh), "cross", r)


def _take_event(run: _Run, carry: SlidingCarry, pair, slope, target) -> SlidingCarry:
    """The event with the smallest margin at the current state: the target, a held slope reaching γ or 1
    (its pair leaves S to that side), or a pair reaching its kink."""
    if target <= min(np.min(pair), np.min(slope)):
        return dataclasses.replace(carry, status=np.int32(Status.TARGET_REACHED))
    if np.min(slope) > np.min(pair):
        return _join_or_cross(run, carry, int(np.argmin(pair)))
    k = int(np.argmin(slope))
    r = int(carry.index[k])
    slopes = np.asarray(
        _held_slopes(
            run.seg_of(carry),
            jnp.asarray(carry.s),
            jnp.asarray(carry.theta),
            jnp.asarray(carry.base),
            *run.stratum(carry),
        )
    )
    base, fresh = carry.base.copy(), carry.fresh.copy()
    base[r] = 1.0 if float(slopes[k]) > 0.5 * (1.0 + run.seg.leak) else run.seg.leak
    fresh[r] = fresh_offset(np.asarray(_z(run.seg, jnp.asarray(carry.theta))), r)
    # The held pairs stay in the first slots.
    index = np.append(np.delete(carry.index, k), 0)
    valid = np.append(np.delete(carry.valid, k), False)
    return _count(run, dataclasses.replace(carry, base=base, index=index, valid=valid, fresh=fresh), "leave", r)


def _segment(run: _Run, carry: SlidingCarry) -> tuple[SlidingCarry, bool]:
    """One stratum's smooth solve from the carry, then its saves, counts and drift. Returns (carry, whether
    an event ended it); the caller takes the event."""
    s_end, theta, grid_ts, grid_ys, result, steps = _solve(
        run.seg_of(carry),
        run.solver,
        run.controller,
        run.root_finder,
        jnp.asarray(carry.theta),
        jnp.asarray(carry.s),
        jnp.asarray(run.segment_end(carry)),
        run.args(carry),
        jnp.asarray(run.save_times),
        run.segment_steps(),
    )
    grid_ts, grid_ys = np.asarray(grid_ts), np.asarray(grid_ys)
    new = ~carry.filled & (run.save_times >= carry.s) & (grid_ts == run.save_times)
    wrong, z, drift = (
        np.asarray(v)
        for v in _after_segment(
            run.seg_of(carry),
            theta,
            jnp.asarray(carry.base),
            *run.stratum(carry),
            jnp.asarray(carry.fresh),
        )
    )
    events = carry.events.copy()
    # A segment that ends at an event may end with the pair that fired it just past its margin: that is the event,
    # which `_step` takes next (as any pair on its wrong side, its margin now below 0), not a missed one.
    events[3] += 0 if result == diffrax.RESULTS.event_occurred else int(wrong.sum())
    status = -1
    if result == diffrax.RESULTS.successful:
        status = Status.HORIZON_REACHED if float(s_end) >= run.s1 else -1  # else: a segment the policy asked for
    elif result == diffrax.RESULTS.max_steps_reached:
        status = Status.MAX_STEPS if int(carry.steps[0] + steps[0]) >= run.max_steps else -1
    elif result != diffrax.RESULTS.event_occurred:
        run.note = f"the segment solve failed at log t = {log_t_of(float(s_end), True):.6g}: {result}"
        status = Status.STEP_SIZE_UNDERFLOW if result == diffrax.RESULTS.dt_min_reached else Status.SOLVER_FAILURE
    return dataclasses.replace(
        carry,
        theta=np.asarray(theta),
        s=np.float64(s_end),
        fresh=np.zeros_like(carry.fresh),
        saves=np.where(new[:, None], grid_ys, carry.saves),
        save_time=np.where(new, run.save_times, carry.save_time),
        filled=carry.filled | new,
        steps=carry.steps + np.asarray(steps),
        events=events,
        max_drift=np.maximum(carry.max_drift, drift),
        status=np.int32(status),
    ), bool(result == diffrax.RESULTS.event_occurred)


def _segment_with_crossings(run: _Run, carry: SlidingCarry) -> tuple[SlidingCarry, bool]:
    """`_solve_crossings` from the carry: the stratum's smooth solves and the crossings between them, until
    another event, the end of the solve or a budget. Returns (carry, whether an event is due for the driver);
    the crossings join `run.log`."""
    index, valid = run.stratum(carry)
    state = _Loop(
        theta=jnp.asarray(carry.theta),
        s=jnp.asarray(carry.s),
        base=jnp.asarray(carry.base),
        fresh=jnp.asarray(carry.fresh),
        saves=jnp.asarray(carry.saves),
        save_time=jnp.asarray(carry.save_time),
        filled=jnp.asarray(carry.filled),
        steps=jnp.asarray(carry.steps),
        events=jnp.asarray(carry.events),
        max_drift=jnp.asarray(carry.max_drift),
        exit=jnp.asarray(_RUNNING),
        result=diffrax.RESULTS.successful,
        pending=jnp.asarray(False),
        log=jnp.zeros(CROSSING_LOG + 1, carry.index.dtype),
        logged=jnp.asarray(0),
    )
    limits = jnp.asarray([run.max_steps, run.segment_steps(), run.max_events])
    st = _solve_crossings(
        run.seg_of(carry),
        run.solver,
        run.controller,
        run.root_finder,
        state,
        index,
        valid,
        jnp.asarray(run.segment_end(carry)),
        jnp.asarray(run.target),
        jnp.asarray(run.save_times),
        limits,
        run.segment_steps(),
    )
    run.log.extend(("cross", int(r)) for r in np.asarray(st.log)[: int(st.logged)])
    exit_code, result, s_end = int(st.exit), st.result, float(st.s)
    steps = np.asarray(st.steps)
    status = -1
    if exit_code == _ENDED:
        if result == diffrax.RESULTS.successful:
            status = Status.HORIZON_REACHED if s_end >= run.s1 else -1  # else: a segment the policy asked for
        elif result == diffrax.RESULTS.max_steps_reached:
            status = Status.MAX_STEPS if int(steps[0]) >= run.max_steps else -1
        else:
            run.note = f"the segment solve failed at log t = {log_t_of(s_end, True):.6g}: {result}"
            status = Status.STEP_SIZE_UNDERFLOW if result == diffrax.RESULTS.dt_min_reached else Status.SOLVER_FAILURE
    carry = dataclasses.replace(
        carry,
        theta=np.asarray(st.theta),
        s=np.float64(s_end),
        base=np.asarray(st.base),
        fresh=np.asarray(st.fresh),
        saves=np.asarray(st.saves),
        save_time=np.asarray(st.save_time),
        filled=np.asarray(st.filled),
        steps=steps,
        events=np.asarray(st.events),
        max_drift=np.float64(st.max_drift),
        status=np.int32(status),
    )
    return carry, exit_code == _EVENT


def _step_with_crossings(run: _Run, carry: SlidingCarry, on_segment=None) -> tuple[SlidingCarry, bool]:
    """`_step` with the crossings taken in the compiled loop (`_segment_with_crossings`)."""
    if int(carry.events[:3].sum()) >= run.max_events:
        run.note = f"max_events = {run.max_events} reached"
        return dataclasses.replace(carry, status=np.int32(Status.MAX_STEPS)), False
    if int(carry.steps[0]) >= run.max_steps:
        return dataclasses.replace(carry, status=np.int32(Status.MAX_STEPS)), False
    before = carry
    carry, due = _segment_with_crossings(run, carry)
    ran = float(carry.s) != float(before.s) or int(carry.steps[0]) != int(before.steps[0])
    if ran and run.policy is not None:
        _decide(run, before, carry)
    if ran and on_segment is not None:
        on_segment(carry)
    if due and int(carry.status) < 0:
        pair, slope, target = (
            np.asarray(v)
            for v in _margins(run.seg_of(carry), jnp.asarray(carry.s), jnp.asarray(carry.theta), run.args(carry))
        )
        carry = _take_event(run, carry, pair, slope, float(target))
    return carry, ran


def _step(run: _Run, carry: SlidingCarry, on_segment=None) -> tuple[SlidingCarry, bool]:
    """Advance to the next event (or the horizon) and take it. Returns (carry, whether a segment ran);
    `on_segment(carry)` sees each segment's end before its event is taken."""
    if run.inline_crossings:
        return _step_with_crossings(run, carry, on_segment)
    if int(carry.events[:3].sum()) >= run.max_events:
        run.note = f"max_events = {run.max_events} reached"
        return dataclasses.replace(carry, status=np.int32(Status.MAX_STEPS)), False
    if int(carry.steps[0]) >= run.max_steps:
        return dataclasses.replace(carry, status=np.int32(Status.MAX_STEPS)), False
    # A margin already at or below 0 (events due at the same time) never triggers the event, which fires when q
    # falls through 0: take such events now, as zero-length segments.
    pair, slope, target = (
        np.asarray(v)
        for v in _margins(run.seg_of(carry), jnp.asarray(carry.s), jnp.asarray(carry.theta), run.args(carry))
    )
    if min(np.min(pair), np.min(slope), float(target)) <= 0.0:
        return _take_event(run, carry, pair, slope, float(target)), False
    before = carry
    carry, hit = _segment(run, carry)
    if run.policy is not None:
        _decide(run, before, carry)
    if on_segment is not None:
        on_segment(carry)
    if hit and int(carry.status) < 0:
        pair, slope, target = (
            np.asarray(v)
            for v in _margins(run.seg_of(carry), jnp.asarray(carry.s), jnp.asarray(carry.theta), run.args(carry))
        )
        carry = _take_event(run, carry, pair, slope, float(target))
    return carry, True


class _StratumField(eqx.Module):
    """One stratum's smooth field v(s, θ), as `flowsim._engine`'s measurements call a field."""

    seg: _Segment
    args: tuple

    def __call__(self, s, theta):
        return self.seg.vector_field(s, theta, self.args)


def _decide(run: _Run, before: SlidingCarry, after: SlidingCarry) -> None:
    """Ask the policy (`AutoSolver`) which solver runs the next segment, on what this one did: counts, the
    mean accepted step and, for a segment long enough to be judged, the spectral radius of its stratum's
    field (never the clock). Short segments between close events say nothing about stiffness."""
    steps = after.steps - before.steps
    finished = int(after.status) >= 0
    span = float(after.s) - float(before.s)
    rho, krylov = math.nan, None
    if not finished and steps[0] >= MEASURED_SEGMENT_STEPS:
        field = _StratumField(run.seg_of(after), run.args(after))  # the sides crossings left
        rho = float(spectral_radius(field, jnp.asarray(after.theta), jnp.asarray(after.s)))
        if is_implicit(run.solver) and run.linear_solver == "krylov":
            dt = jnp.asarray(span / max(int(steps[1]), 1))
            krylov = float(krylov_iterations(field, jnp.asarray(after.theta), jnp.asarray(after.s), dt))
    measurement = Measurement(
        solver=run.current,
        time0=float(before.s),
        time1=float(after.s),
        steps=int(steps[0]),
        accepted=int(steps[1]),
        rejected=int(steps[2]),
        dt=span / max(int(steps[1]), 1),
        finished=finished,
        rho=rho,
        krylov_iterations=krylov,
    )
    run.policy_state, chosen, reason = run.policy.decide(run.policy_state, measurement)
    if reason is not None:
        run.auto_record.append((float(f"{log_t_of(float(after.s), True):.6g}"), chosen, reason))
    run.current = chosen


def _drive(run: _Run, carry: SlidingCarry, *, on_segment=None, bar=None, store=None, every_s: float = 5.0):
    """Segments and events until the horizon, the target, or a limit; progress and checkpoints between."""
    last_write = _time.perf_counter()
    while int(carry.status) < 0:
        carry, ran = _step(run, carry, on_segment)
        if not ran:
            continue
        if bar is not None:
            bar.update(log_t_of(float(carry.s), True), f"sliding, |S| = {int(carry.valid.sum())}")
        if store is not None and _time.perf_counter() - last_write >= every_s:
            _save(run, store, carry)
            last_write = _time.perf_counter()
    if store is not None:
        _save(run, store, carry)
    return carry


def _save(run: _Run, store: CheckpointStore, carry: SlidingCarry) -> None:
    policy_state = None if run.policy_state is None else run.policy_state.to_json()
    store.save(_jax(carry), run.current, policy_state)


def _jax(carry: SlidingCarry) -> SlidingCarry:
    return jax.tree_util.tree_map(jnp.asarray, carry)


def _new_run(
    field,
    theta,
    model,
    problem,
    *,
    solvers,
    current,
    controller,
    root_finder,
    save_times,
    s1,
    target,
    max_steps,
    max_steps_per_segment,
    max_events,
    max_sliding=None,
    drift_rate=DRIFT_RATE,
) -> _Run:
    n = problem.num_samples
    units = jax.eval_shape(model.pre_activations, problem.X[0]).shape[0]
    seg = _Segment(field, float(model.leak), float(drift_rate), (n, units))
    outputs = jax.eval_shape(jax.vmap(field.model(theta)), problem.X)  # the cotangent's shape: (n,) or (n, k)
    cotangent = jnp.zeros(outputs.shape, outputs.dtype)
    system = jax.eval_shape(seg.system, theta, theta, cotangent, jnp.zeros(1, jnp.int64), jnp.ones(1, bool))
    closed_form = isinstance(system, SameUnitSystem)
    # The closed form solves unit by unit and forms no K×p matrix, so any number of pairs may slide (the stratum's
    # slots are only indices); the autodiff path forms K×p matrices, so the model's max_kinks bounds it.
    if max_sliding is None:
        max_sliding = n * units if closed_form else model.max_kinks
    capacity = min(int(max_sliding), n * units)
    if capacity < 1:
        raise ValueError(f"max_sliding must be at least 1, got {max_sliding}")
    if closed_form and n <= _GRAM_SAMPLES:
        X = problem.X
        seg = dataclasses.replace(seg, gram=X @ X.T)
    return _Run(
        seg=seg,
        solvers=solvers,
        current=current,
        controller=controller,
        root_finder=root_finder,
        save_times=np.asarray(save_times, np.float64),
        s1=float(s1),
        target=float(target),
        max_steps=int(max_steps),
        max_steps_per_segment=int(max_steps_per_segment),
        max_events=int(max_events),
        capacity=capacity,
        closed_form=closed_form,
    )


def simulate_on_strata(the_plan, *, max_events: int = 100_000):
    """`fs.simulate(..., nonsmooth="sliding")`: the plan's solve by event-driven sliding (module docstring).

    Eager only (events other than crossings restart the solve from Python). Saves, target, `max_steps` (over all segments,
    checked between them), progress and checkpoints as for any solve. `traj.info["nonsmooth"]` is
    "sliding"; `traj.stats` gains `events`, `slide_events`, `cross_events`, `leave_events`, `missed_events`
    and `max_drift` (max |z_s| over the held pairs, the drift the Baumgarte term corrects), and
    `pairs_at_kink` is |S| at the end."""
    start = _time.perf_counter()
    model = check_model(the_plan.problem, "nonsmooth='sliding'")
    if the_plan.traced:
        raise ValueError(
            "nonsmooth='sliding' runs eagerly (each event restarts the solve from Python), so it cannot "
            "run under jax.jit or eqx.filter_vmap; use the band field there (nonsmooth='band'), or loop "
            "over the members (fs.sweep)"
        )
    if not the_plan.log_time:
        raise ValueError("nonsmooth='sliding' integrates in log time s = log(1 + t): leave time='auto' (or 'log')")
    _check_slopes_affine(the_plan.field, the_plan.theta0, the_plan.problem, "nonsmooth='sliding'")
    settings = the_plan.settings
    policy = the_plan.auto
    if policy is None:
        solvers, current = {the_plan.solver_name: the_plan.solvers[the_plan.solver_name]}, the_plan.solver_name
    else:  # each stratum is a smooth ODE: auto chooses between the explicit and the implicit solver as for any
        solvers = {n: make_solver(n, settings.rtol, settings.atol, the_plan.linear_solver) for n in policy.solvers}
        current = policy.explicit
    run = _new_run(
        the_plan.field,
        the_plan.theta0,
        model,
        the_plan.problem,
        solvers=solvers,
        current=current,
        controller=diffrax.PIDController(rtol=settings.rtol, atol=settings.atol, pcoeff=0.3, icoeff=0.4),
        root_finder=optx.Bisection(rtol=ROOT_RTOL, atol=ROOT_ATOL),
        save_times=the_plan.save_times,
        s1=float(settings.time1),
        target=float(settings.target_log_loss),
        max_steps=the_plan.max_steps,
        max_steps_per_segment=the_plan.max_steps,
        max_events=max_events,
    )
    run.policy, run.linear_solver = policy, the_plan.linear_solver
    run.inline_crossings = INLINE_CROSSINGS
    run.policy_state = None if policy is None else policy.init(the_plan)
    carry, store, resumed_from = _start(run, the_plan.theta0), None, None
    if the_plan.checkpoint is not None:
        store = CheckpointStore(the_plan.checkpoint, _fingerprint(the_plan, run))
        loaded = store.load(lambda solver: jax.eval_shape(lambda: _jax(carry)))
        if loaded is not None:
            carry, run.current = _numpy(loaded[0]), loaded[1]
            if policy is not None and store.policy_state is not None:
                run.policy_state = policy.state_from_json(store.policy_state)
            if int(carry.status) == Status.MAX_STEPS:  # resumed with a larger budget: go on
                carry = dataclasses.replace(carry, status=np.int32(-1))
            resumed_from = float(f"{log_t_of(float(carry.s), True):.6g}")
    bar = ProgressBar(the_plan.progress, float(settings.log_t1))
    try:
        carry = _drive(run, carry, bar=bar, store=store, every_s=the_plan.checkpoint_every_s)
    finally:
        bar.close()
    return _trajectory(the_plan, run, carry, resumed_from, start)


def _fingerprint(the_plan, run: _Run) -> str:
    extra = (run.capacity, run.seg.drift_rate, ROOT_RTOL, ROOT_ATOL)
    return f"{fingerprint(the_plan)}|sliding|{extra}"


def _trajectory(the_plan, run: _Run, carry: SlidingCarry, resumed_from, start):
    """The engine's Trajectory for the final carry, with what the sliding solve did in `stats` and `info`."""
    steps = carry.steps.astype(np.int64)
    engine_carry = Carry(
        theta=jnp.asarray(carry.theta),
        time=jnp.asarray(carry.s),
        dt=jnp.asarray(jnp.nan),
        saves=jnp.asarray(carry.saves),
        save_time=jnp.asarray(carry.save_time),
        filled=jnp.asarray(carry.filled),
        num_steps=jnp.asarray(steps[0]),
        num_accepted_steps=jnp.asarray(steps[1]),
        num_rejected_steps=jnp.asarray(steps[2]),
        status=jnp.asarray(carry.status, jnp.int32),
        solver_states={},
        fresh={},
    )
    implicit = any(is_implicit(solver) for solver in run.solvers.values())
    auto = None
    if run.policy is not None:
        auto = (
            (-math.inf, run.policy.explicit, "start: explicit, stiffness measured on each stratum"),
            *run.auto_record,
        )
    metadata = dict(
        the_plan.metadata,
        solver=the_plan.solver_name,
        nonsmooth="sliding",
        implicit=is_implicit(run.solver),
        linear_solver=the_plan.linear_solver if implicit else None,
        resumed_from_log_t=resumed_from,
        auto=auto,
        sliding_note=run.note or None,
    )
    trajectory = finish(
        the_plan.field, engine_carry, jnp.asarray(the_plan.save_times), the_plan.settings, True, metadata
    )
    events = carry.events.astype(np.int64)
    stats = dict(
        trajectory.stats,
        pairs_at_kink=jnp.asarray(int(carry.valid.sum())),
        band_overflow=jnp.asarray(False),
        events=jnp.asarray(int(events[:3].sum())),
        slide_events=jnp.asarray(events[0]),
        cross_events=jnp.asarray(events[1]),
        leave_events=jnp.asarray(events[2]),
        missed_events=jnp.asarray(events[3]),
        max_drift=jnp.asarray(float(carry.max_drift)),
        wall_time_s=jnp.asarray(_time.perf_counter() - start),
    )
    summary = re.sub(
        r"field: .*$",
        "field: event-driven sliding on strata (equivalent control, kinks as events)",
        kink_summary(the_plan.problem.model) or "",
    )
    return dataclasses.replace(trajectory, stats=stats, kinks=summary or None)


@dataclasses.dataclass(frozen=True)
class SlidingSolution:
    """What `simulate_sliding` returns.

    - `log_t`: log of physical time at the start, the end of each segment (an event) and the end
      (simultaneous events share one entry);
    - `theta`: the flat trainable parameters there, shape (E + 2, p); `final`: the model at the end;
    - `stratum_size`, `max_drift`: |S| and the largest max_{s ∈ S} |z_s| so far at each point, for the stratum
      of the segment that ends there (at the start: the initial stratum);
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
    drift_rate: float = DRIFT_RATE,
    max_events: int = 10_000,
    max_steps_per_segment: int = 100_000,
) -> SlidingSolution:
    """Gradient flow of a ReLU network from t = 0 to t = e^{log_t1} by event-driven sliding, with every
    event recorded (the public form is `fs.simulate(..., nonsmooth="sliding")`).

    In log time s = log(1 + t): dθ/ds = −e^s ∂L(θ), with the stratum's slopes by Utkin's
    equivalent control and kink events located by a root finder (module docstring).

    **Arguments:** `problem` (a `Problem` whose model is an `AbstractNonsmoothModel` affine in
    its slopes: `TwoLayer`, a depth-2 `MLP`, a `Kinked` with one kink layer); `log_t1`: the
    horizon; `rtol`, `atol`: the PID controller's tolerances; `solver`: a Diffrax solver (Tsit5); `root_finder`: an
    optimistix root finder for the event times (Bisection, rtol 1e-10, atol 1e-12);
    `max_sliding`: K, the most pairs held at once (default: all n·U pairs for the models' closed form, else the
    model's `max_kinks`; at most n·U);
    `drift_rate`: k of the Baumgarte term (per unit of s); `max_events`, `max_steps_per_segment`.
    """
    model = check_model(problem)
    log_t1 = float(log_t1)
    if not np.isfinite(log_t1):
        raise ValueError(f"log_t1 must be finite, got {log_t1}")
    for name, value in (("rtol", rtol), ("atol", atol), ("drift_rate", drift_rate)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    theta, field = make_field(problem, log_time=True, rtol=rtol, atol=atol)
    _check_slopes_affine(field, theta, problem, "simulate_sliding")
    run = _new_run(
        field,
        theta,
        model,
        problem,
        solvers={"given": diffrax.Tsit5() if solver is None else solver},
        current="given",
        controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4),
        root_finder=optx.Bisection(rtol=ROOT_RTOL, atol=ROOT_ATOL) if root_finder is None else root_finder,
        save_times=np.zeros(1),
        s1=float(time_from_log_t(log_t1, True)),
        target=math.nan,
        max_steps=max_events * max_steps_per_segment,
        max_steps_per_segment=max_steps_per_segment,
        max_events=max_events,
        max_sliding=max_sliding,
        drift_rate=drift_rate,
    )
    carry = _start(run, theta)
    record = [(0.0, np.asarray(theta), int(carry.valid.sum()), 0.0)]
    carry = _drive(
        run,
        carry,
        on_segment=lambda c: record.append((float(c.s), np.asarray(c.theta), int(c.valid.sum()), float(c.max_drift))),
    )
    ok = int(carry.status) == Status.HORIZON_REACHED
    message = (
        ""
        if ok
        else (run.note or f"stopped: {Status(int(carry.status)).name}")
        + (f" at log t = {log_t_of(float(carry.s), True):.6g}")
    )
    return SlidingSolution(
        log_t=np.array([log_t_of(s, True) for s, *_ in record]),
        theta=np.stack([th for _, th, *_ in record]),
        final=field.model(jnp.asarray(carry.theta)),
        stratum_size=np.array([size for *_, size, _ in record]),
        max_drift=np.array([drift for *_, drift in record]),
        events=list(run.log),
        missed=int(carry.events[3]),
        num_steps=int(carry.steps[0]),
        ok=ok,
        message=message,
    )
