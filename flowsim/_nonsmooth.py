"""Gradient flow of non-smooth (ReLU) models: the minimum-norm Clarke subgradient.

Gradient flow of a ReLU network is the differential inclusion θ' ∈ −∂L(θ) (∂ the Clarke
subdifferential); its solution follows the minimum-norm element −∂⁰L(θ) (Davis, Drusvyatskiy,
Kakade & Lee 2020; Bolte & Pauwels 2021), which slides along a kink when both sides of it push
the parameters into it (a Filippov sliding mode).

For a ReLU-type activation φ(z) = max(z, γz) (γ ∈ [0, 1)) the gradient of L is a function of θ
and of the activation derivatives D_iu = φ'(z_iu) of every (unit u, sample i) pair. Away from
kinks D_iu is 1 or γ. At a kink (z_iu = 0) the Clarke subdifferential lets D_iu range over
[γ, 1]; when the pairs at kinks of one sample lie in one layer (always for two-layer nets, and
the common case in deeper ones) the gradient is affine in the free D:

    g(D) = c + G d,   d = (D_k)_{k at a kink},   ∂L(θ) ⊇ {c + G d : γ ≤ d ≤ 1},

with equality when the kink hyperplanes are transversal (e.g. linearly independent inputs of a
two-layer net: the inner map W ↦ WXᵀ is then onto and Clarke's chain rule is exact). The field
is the minimum-norm element: d* = argmin ‖c + Gd‖² over the box, a K×K box-constrained least
squares solved exactly (a primal–dual active-set iteration, ending in one linear solve on the
free set, through which the field stays differentiable). Its columns are parallel to the kinks'
normals ∇_θ z_k, so on the free set ⟨∇_θ z_k, θ'⟩ = 0: the pair stays on its kink (sliding), and a
transversal crossing clips d to a bound and crosses.

Limitation: where one sample has pairs at kinks in several layers at once (a corner of a deep
network) g is multilinear in d and the limiting gradients no longer form a box; the field then
re-linearises (`_RELINEARISATIONS`), which is not the exact minimum-norm element, and a 2-D
MLP with two hidden layers still chatters at such corners (`benchmarks/relu.py`: a ReLU sample
whose first hidden layer is all at or below its kinks puts every second-layer pair at z = 0). For
such networks `fs.smoothed_limit` solves smoothed activations and extrapolates the width to 0.

Numerically a pair counts as "at its kink" inside a band: |z_iu| is at most what a change of
every parameter by kink_atol + kink_rtol·|θ| can move it. For a first-layer unit z = ⟨w_u, x_i⟩
that is (kink_atol + kink_rtol‖w_u‖)‖x_i‖ (the parameter-space distance of w_u to the kink
hyperplane is below kink_atol + kink_rtol‖w_u‖); deeper units add the movement of their input
(`MLP.kink_widths`). An adaptive solver lands within its own error tolerance of a kink, so the
band should exceed that tolerance (with Diffrax's I-controller a band of 0.01 × the tolerance
chattered and stalled; with the PI controller ReLU models now get, 0.01–100 × slide on the
hand-solved flow of `benchmarks/relu.py`, with an error that grows like the band); the flow then
slides at that offset, an O(band) perturbation of the trajectory.
"""

import abc
import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

# Active-set iterations of the box-constrained least squares (one to three in the usual case).
_MAX_ACTIVE_SET_ITERATIONS = 50
# Linearisations of the subgradient map in the slopes for models without a `kink_system` (one is
# exact when the map is affine; more refine it when a sample has free pairs in several layers).
_RELINEARISATIONS = 3
# The band is this many times the solver's tolerances (benchmarks/relu.py: a band below the
# tolerance chatters and stalls; the error of the solution grows like the band).
BAND_FACTOR = 10.0
DEFAULT_RTOL, DEFAULT_ATOL = 1e-8, 1e-10


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def leaky_relu_with_slope(z, slope, leak: float):
    """φ(z) = max(z, γz) in value, with derivative `slope` (values of φ are unchanged).

    The activation derivative at a kink is a free variable of the Clarke subdifferential; this is
    how a network evaluates its gradient for a chosen D ∈ [γ, 1]."""
    return jnp.maximum(z, leak * z)


@leaky_relu_with_slope.defjvp
def _leaky_relu_with_slope_jvp(leak, primals, tangents):
    z, slope = primals
    dz, _ = tangents
    return jnp.maximum(z, leak * z), slope * dz


def leaky_relu(z, leak: float):
    """φ(z) = max(z, γz)."""
    return jnp.maximum(z, leak * z)


class AbstractNonsmoothModel(eqx.Module):
    """A network with ReLU-type kinks that describes them, so the flow can use −∂⁰L(θ).

    Subclasses provide:

    - `leak`: γ ∈ [0, 1), the activation φ(z) = max(z, γz) (0: ReLU);
    - `kink_rtol`, `kink_atol`: the band (module docstring), or None to follow the solver's
      tolerances (`BAND_FACTOR`·rtol, `BAND_FACTOR`·atol; the rule is `kink_band_of`); `max_kinks`: K, at most this many
      (unit, sample) pairs are treated as free at one time (the closest to their kinks);
    - `pre_activations(x)`: z_u for every unit u of ONE input, shape (U,);
    - `kink_widths(x, kink_rtol, kink_atol)`: the band half-width of every unit's kink for ONE
      input, in units of z, shape (U,): how far z_u can move when every parameter moves by its
      tolerance atol + rtol·|θ| (module docstring);
    - `forward(x, slopes)`: the output for ONE input with the activation derivative of unit u
      set to `slopes[u]` (values unchanged; `leaky_relu_with_slope`).
    """

    leak: eqx.AbstractVar[float]
    kink_rtol: eqx.AbstractVar[float | None]
    kink_atol: eqx.AbstractVar[float | None]
    max_kinks: eqx.AbstractVar[int]

    @abc.abstractmethod
    def pre_activations(self, x: Float[Array, " d"]) -> Float[Array, " U"]:
        """z_u for every unit of ONE input."""

    @abc.abstractmethod
    def kink_widths(self, x: Float[Array, " d"], kink_rtol, kink_atol) -> Float[Array, " U"]:
        """The band half-width of every unit's kink for ONE input (units of z)."""

    @abc.abstractmethod
    def forward(self, x: Float[Array, " d"], slopes: Float[Array, " U"]) -> Array:
        """The output for ONE input with activation derivatives `slopes`."""

    def kink_system(self, X, cotangent, gradient, sample, unit, valid):
        """Optional fast path: the K×K system (GᵀG, Gᵀg) of the free slopes, without forming G.

        `cotangent`: e^s ∂ℓ/∂f / n per sample; `gradient`: the trainable part of the model
        holding the gradient at the current slopes (leaves that are not trained are None);
        `sample`, `unit`: the free pairs; `valid`: which of them are in band. Return None
        (the default) to let `min_norm_scaled_gradient` build G by forward-mode differentiation."""
        del X, cotangent, gradient, sample, unit, valid

    def stratum_system(self, X, cotangent, gradient, sample, unit, valid):
        """Optional fast path for event-driven sliding (`flowsim._sliding`): the equivalent-control system
        without forming J_S = ∂z_S/∂θ or G_S = ∂g/∂d_S (K×p each), either as a pair (J_S G_S, J_S g) or as a
        `SameUnitSystem` (first-layer kinks: block-diagonal by unit, solved unit by unit, as `TwoLayer` and the
        depth-2 `MLP` return through `rank_one_stratum_system`). Same arguments as `kink_system`; return None
        (the default) to let the sliding field build both by automatic differentiation."""
        del X, cotangent, gradient, sample, unit, valid

    def slopes(self, z: Array) -> Array:
        """φ'(z) away from kinks: 1 for z > 0, γ otherwise."""
        return jnp.where(z > 0, 1.0, self.leak)

    def apply(self, x: Float[Array, " d"], activation) -> Array:
        """Optional: the output for ONE input with every φ replaced by `activation` (elementwise).

        Needed by `fs.networks.Smoothed` (a smoothed activation instead of the kinks)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement apply(x, activation), which fs.networks.Smoothed needs"
        )


class _Kinks(eqx.Module):
    """The pairs treated as free at one state: flat indices into (n, U), and which are in band."""

    index: Int[Array, " K"]
    valid: Array
    base: Float[Array, "n U"]  # φ'(z) of every pair


class KinkBand(eqx.Module):
    """The kink band of a solve, decided once (`kink_band_of`) and held by the vector field.

    A pair (unit u, sample i) is at its kink where |z_iu| is at most what a change of every
    parameter by `atol + rtol·|θ|` can move it (module docstring; `kink_widths`). `rtol`, `atol`
    are float64 arrays and may be traced (tolerances batched under `vmap`): a new band is a new
    value, not a new compilation.
    """

    rtol: Float[Array, ""]
    atol: Float[Array, ""]


def kink_band_of(model: AbstractNonsmoothModel, rtol=None, atol=None) -> KinkBand:
    """The band of a solve with tolerances `rtol`, `atol` (the one place this rule lives):

    the model's `kink_rtol`/`kink_atol` where it fixes them, else `BAND_FACTOR` × the solver's
    tolerances (`DEFAULT_RTOL`, `DEFAULT_ATOL`, the solve's defaults, where none are given). The
    tolerances may be traced values; the model is read only for its static band settings."""
    rtol = DEFAULT_RTOL if rtol is None else rtol
    atol = DEFAULT_ATOL if atol is None else atol
    kink_rtol = BAND_FACTOR * rtol if model.kink_rtol is None else model.kink_rtol
    kink_atol = BAND_FACTOR * atol if model.kink_atol is None else model.kink_atol
    return KinkBand(jnp.asarray(kink_rtol, dtype=jnp.float64), jnp.asarray(kink_atol, dtype=jnp.float64))


def kink_band(model: AbstractNonsmoothModel, X, band: KinkBand) -> tuple[Array, Array]:
    """(z, band half-width) for every (sample, unit) pair, shape (n, U) each, for the `band`."""
    if not isinstance(band, KinkBand):
        raise TypeError(f"kink_band needs a KinkBand (flowsim._nonsmooth.kink_band_of), got {type(band).__name__}")
    z = jax.vmap(model.pre_activations)(X)
    width = jax.vmap(lambda x: model.kink_widths(x, band.rtol, band.atol))(X)
    return z, width


def _select_kinks(model: AbstractNonsmoothModel, X, band: KinkBand) -> _Kinks:
    z, width = kink_band(model, X, band)
    z, width = jax.lax.stop_gradient(z), jax.lax.stop_gradient(width)
    in_band = jnp.abs(z) <= width
    size = z.size
    count = min(int(model.max_kinks), size)
    # The K pairs closest to their kinks (relative to the band); ties and empty bands do not matter.
    score = jnp.where(in_band, jnp.abs(z) / jnp.where(width > 0, width, 1.0), jnp.inf).ravel()
    _, index = jax.lax.top_k(-score, count)
    return _Kinks(index=index, valid=in_band.ravel()[index], base=model.slopes(z))


def _slope_matrix(kinks: _Kinks, free: Array) -> Array:
    base = kinks.base.ravel()
    chosen = jnp.where(kinks.valid, free, base[kinks.index])
    return base.at[kinks.index].set(chosen).reshape(kinks.base.shape)


def _box_least_squares(Q, b, lower, upper, fixed):
    """argmin ½dᵀQd + bᵀd over lower ≤ d ≤ upper (coordinates with `fixed` stay at `lower`).

    A primal–dual active-set (semismooth Newton) iteration (Hintermüller, Ito & Kunisch 2002):
    with λ = Qd + b, a coordinate is held at its lower (upper) bound where d − λ/Q_kk falls below
    (above) it, and the free ones solve Q_FF d_F = −(b_F + Q_FA d_A); repeated until the sets stop
    changing (in the usual case the problem splits into tiny blocks, one per unit, and this takes
    one to three iterations). The set search runs on stopped gradients; the returned point is the
    exact solve on the final free set, so it is differentiable in (Q, b) with the sets held."""
    Qs, bs = jax.lax.stop_gradient(Q), jax.lax.stop_gradient(b)
    diag = jnp.diagonal(Qs)
    usable = (diag > 0) & ~fixed
    safe_diag = jnp.where(usable, diag, 1.0)
    ridge = 1e-13 * jnp.max(jnp.where(usable, diag, 0.0))

    def solve(Qm, bm, free, held):
        mask = free[:, None] & free[None, :]
        M = jnp.where(mask, Qm, 0.0) + jnp.diag(jnp.where(free, ridge, 1.0))
        rhs = jnp.where(free, -(bm + Qm @ jnp.where(free, 0.0, held)), held)
        return jnp.where(free, jnp.linalg.solve(M, rhs), held)

    def sets(d):
        trial = d - (Qs @ d + bs) / safe_diag
        at_lower = usable & (trial <= lower)
        at_upper = usable & (trial >= upper)
        return at_lower, at_upper

    def iterate(state):
        d, _, count = state
        at_lower, at_upper = sets(d)
        held = jnp.where(at_lower, lower, jnp.where(at_upper, upper, d))
        new = solve(Qs, bs, usable & ~at_lower & ~at_upper, held)
        return new, jnp.any(sets(new)[0] != at_lower) | jnp.any(sets(new)[1] != at_upper), count + 1

    start = jnp.clip(jnp.where(usable, -bs / safe_diag, lower), lower, upper)
    d, _, _ = jax.lax.while_loop(
        lambda state: state[1] & (state[2] < _MAX_ACTIVE_SET_ITERATIONS), iterate, (start, jnp.asarray(True), 0)
    )
    at_lower, at_upper = sets(d)
    held = jnp.where(at_lower, lower, jnp.where(at_upper, upper, d))
    return jnp.clip(solve(Q, b, usable & ~at_lower & ~at_upper, held), lower, upper)


def min_norm_scaled_gradient(field, theta, log_scale):
    """(e^{log_scale} ∂⁰L(θ), predictions): the minimum-norm element of the Clarke subdifferential.

    ∂⁰L(θ) = c + G d*, d* = argmin_{γ ≤ d ≤ 1} ‖c + G d‖² over the activation derivatives of the
    (unit, sample) pairs within the band of their kinks (module docstring), restricted to the
    trainable subspace θ. Outside every band it is the ordinary gradient (one VJP). With pairs in
    band it costs K more forward-mode passes (the columns of G) and a K×K box least squares.
    Differentiable in θ (implicit solvers) and vmappable.

    **Arguments:** `field` (a `GradientFlowField` over an `AbstractNonsmoothModel`),
    `theta` (the flat trainable parameters), `log_scale` (the log-time scale s, or 0). The band
    is the field's `band` (a `KinkBand`, decided once by the plan: `kink_band_of`).

    **Returns:** (e^{log_scale} ∂⁰L(θ), predictions f(X; θ)).
    """
    problem = field.problem
    X, y = problem.X, problem.y
    n = problem.num_samples
    model = field.model(theta)
    kinks = _select_kinks(model, X, field.band)

    def gradient(th, free):
        slopes = _slope_matrix(kinks, free)

        def predictions(t):
            return jax.vmap(field.model(t).forward)(X, slopes)

        preds, pullback = jax.vjp(predictions, th)
        cotangent = problem.loss.scaled_gradient(preds, y, log_scale) / n
        (grad,) = pullback(cotangent)
        return grad, preds, cotangent

    base = kinks.base.ravel()[kinks.index]
    sample, unit = jnp.divmod(kinks.index, kinks.base.shape[1])

    def slide(th):
        g0, _, cotangent = gradient(th, base)
        system = field.model(th).kink_system(X, cotangent, field.unravel(g0), sample, unit, kinks.valid)
        lower = jnp.where(kinks.valid, model.leak, base)
        upper = jnp.where(kinks.valid, 1.0, base)
        if system is not None:
            Q, Gg = system
            # g(d) = g0 + G(d − base): minimise ½dᵀQd + (Gᵀg0 − Q base)ᵀd.
            d = _box_least_squares(Q, Gg - Q @ base, lower, upper, ~kinks.valid)
            return gradient(th, d)[:2]
        # Columns by forward mode, one pair at a time on its own sample (slopes change derivatives,
        # never values, so the loss weights are fixed: column k = w_i ∂/∂d_k ∇_θ f(x_i), i = i_k; K
        # one-sample passes instead of K passes over the data). g is affine in d when a sample's free
        # pairs lie in one layer; otherwise multilinear, and the linearisation is renewed at the last
        # solution (a Gauss–Newton iteration on ‖g(d)‖² over the box; each column stays parallel to
        # its kink's normal, so a stationary point with a free d_k keeps that pair on its kink).
        d = base
        for _ in range(_RELINEARISATIONS):
            g, _, weights = gradient(th, d)
            G = pair_columns(field, th, X, weights, _slope_matrix(kinks, d), sample, unit, kinks.valid)
            Q = G.T @ G
            d = _box_least_squares(Q, G.T @ g - Q @ d, lower, upper, ~kinks.valid)
        return gradient(th, d)[:2]

    return jax.lax.cond(jnp.any(kinks.valid), slide, lambda th: gradient(th, base)[:2], theta)


def pair_columns(field, theta, X, weights, slopes, sample, unit, valid):
    """G, shape (p, K): column k = ∂g/∂d_k = w_i ∂/∂s_u ∇_θ f(x_i; θ, s) for the pair (i, u) = k,
    with `weights` w (the loss's cotangent per sample) and every other slope as in `slopes`."""

    def column(i, u, ok):
        def sample_gradient(s):
            row = slopes[i].at[u].set(s)
            return jax.grad(lambda t: jnp.sum(weights[i] * field.model(t).forward(X[i], row)))(theta)

        _, tangent = jax.jvp(sample_gradient, (slopes[i, u],), (jnp.ones_like(slopes[i, u]),))
        return jnp.where(ok, tangent, 0.0)

    return jax.vmap(column)(sample, unit, valid).T


def rank_one_kink_system(X, beta, weight_gradient, sample, unit, valid):
    """(GᵀG, Gᵀg) for kinks of a first layer z_iu = ⟨w_u, x_i⟩ (two-layer networks).

    The column of pair k = (i, u) is G_k = β_k e_u x_iᵀ in the first layer's block (β_k the
    backpropagated cotangent at the unit's output), so (GᵀG)_kl = β_k β_l [u_k = u_l] ⟨x_{i_k}, x_{i_l}⟩
    and (Gᵀg)_k = β_k ⟨g_{u_k}, x_{i_k}⟩, in O(K² d) instead of K passes over the data.
    `weight_gradient`: the gradient's first-layer block (m, d), or None if it is not trained
    (then no column reaches θ and G = 0)."""
    K = sample.shape[0]
    if weight_gradient is None:
        return jnp.zeros((K, K)), jnp.zeros(K)
    beta = jnp.where(valid, beta, 0.0)
    Xk = X[sample]
    same = unit[:, None] == unit[None, :]
    # ⟨x_{i_k}, x_{i_l}⟩ from the n×n data Gram when that is cheaper than the K×K one.
    inner = (X @ X.T)[sample[:, None], sample[None, :]] if X.shape[0] < K else Xk @ Xk.T
    Q = jnp.where(same, (beta[:, None] * beta[None, :]) * inner, 0.0)
    Gg = beta * jnp.sum(weight_gradient[unit] * Xk, axis=1)
    return Q, Gg


class SameUnitSystem(NamedTuple):
    """The equivalent-control system of first-layer kinks z_iu = ⟨w_u, x_i⟩ in factored form (what
    `rank_one_stratum_system` returns): (J_S G_S)_kl = [u_k = u_l] ⟨x_{i_k}, x_{i_l}⟩ β_l and (J_S g)_k = `jg`_k.

    It is block-diagonal by unit (ż_iu depends only on the slopes of unit u), so the sliding field solves one small
    system per unit (`flowsim._sliding`); `dense()` is the K×K matrix. `beta` is 0 on the slots that are not valid."""

    X: Float[Array, "n d"]
    sample: Int[Array, " K"]
    unit: Int[Array, " K"]
    beta: Float[Array, " K"]
    jg: Float[Array, " K"]

    def inner(self, k: Int[Array, "..."], l: Int[Array, "..."], gram=None) -> Float[Array, "..."]:
        """⟨x_{i_k}, x_{i_l}⟩ for slot arrays `k`, `l` (broadcast); `gram`: X Xᵀ if precomputed."""
        if gram is not None:
            return gram[self.sample[k], self.sample[l]]
        return jnp.sum(self.X[self.sample[k]] * self.X[self.sample[l]], axis=-1)

    def dense(self, gram=None) -> Float[Array, "K K"]:
        """J_S G_S as a K×K matrix."""
        K = self.sample.shape[0]
        if gram is None and self.X.shape[0] < K:
            gram = self.X @ self.X.T
        if gram is not None:
            inner = gram[self.sample[:, None], self.sample[None, :]]
        else:
            Xk = self.X[self.sample]
            inner = Xk @ Xk.T
        same = self.unit[:, None] == self.unit[None, :]
        return jnp.where(same, inner * self.beta[None, :], 0.0)


def rank_one_stratum_system(X, beta, weight_gradient, sample, unit, valid) -> SameUnitSystem | None:
    """(J_S G_S, J_S g) for kinks of a first layer z_iu = ⟨w_u, x_i⟩ (two-layer networks), as a `SameUnitSystem`.

    J_k = e_u x_iᵀ in the first layer's block and G_l = β_l e_{u_l} x_{i_l}ᵀ (`rank_one_kink_system`), so
    (J G)_kl = [u_k = u_l] ⟨x_{i_k}, x_{i_l}⟩ β_l and (J g)_k = ⟨g_{u_k}, x_{i_k}⟩: block-diagonal by unit, in
    O(K d) here (the blocks are formed by the caller). None when the first layer is not trained (then no pair's
    z moves with θ)."""
    if weight_gradient is None:
        return None
    beta = jnp.where(valid, beta, 0.0)
    jg = jnp.sum(weight_gradient[unit] * X[sample], axis=1)
    return SameUnitSystem(X, sample, unit, beta, jg)


def kink_statistics(model: AbstractNonsmoothModel, X: Float[Array, "n d"], band: KinkBand | None = None) -> dict:
    """Where a model stands against its kinks on the data X (vmappable over states); `band`: the
    solve's `KinkBand` (`kink_band_of(model, rtol, atol)`; default: that of the default tolerances).

    **Returns:** a dict of arrays:

    - `pairs_at_kink`: the number of (unit, sample) pairs within the band of their kink
      (treated as free in the minimum-norm subgradient; > 0 while a pair slides along a kink);
    - `units_at_kink`: units with at least one sample in their band;
    - `band_overflow`: more pairs in band than `max_kinks` (the excess get φ'(z) and the
      field is then not the minimum-norm element; raise `max_kinks`);
    - `min_band_ratio`: min over pairs of |z_iu| / band half-width (< 1: in band; how close the
      nearest pair outside the band is);
    - `active_pairs`: pairs with z > 0.
    """
    if not isinstance(model, AbstractNonsmoothModel):
        raise TypeError(
            f"flowsim._nonsmooth.kink_statistics needs an AbstractNonsmoothModel (fs.networks.TwoLayer or MLP), got "
            f"{type(model).__name__}: for any model with kinks (your own included) use "
            "fs.analysis.kink_statistics(problem, params)"
        )
    X = jnp.asarray(X, dtype=jnp.float64)
    z, width = kink_band(model, X, kink_band_of(model) if band is None else band)
    in_band = jnp.abs(z) <= width
    ratio = jnp.where(width > 0, jnp.abs(z) / jnp.where(width > 0, width, 1.0), jnp.where(z == 0, 0.0, jnp.inf))
    count = jnp.sum(in_band)
    return {
        "pairs_at_kink": count,
        "units_at_kink": jnp.sum(jnp.any(in_band, axis=0)),
        "band_overflow": count > model.max_kinks,
        "min_band_ratio": jnp.min(ratio),
        "active_pairs": jnp.sum(z > 0),
    }


def kink_crossings(models, X: Float[Array, "n d"]) -> Int[Array, ""]:
    """The number of activation changes between consecutive saved states: Σ over saves and
    (unit, sample) pairs of [sign z changed]. `models`: a model with a leading time axis on its
    arrays (`traj.params`). A lower bound on the kink crossings of the solve (a pair that crosses
    and comes back between two saves is not seen); a sliding pair counts when it leaves its kink."""
    if not isinstance(models, AbstractNonsmoothModel):
        raise TypeError(f"kink_crossings needs an AbstractNonsmoothModel (a ReLU network), got {type(models).__name__}")
    X = jnp.asarray(X, dtype=jnp.float64)
    z = eqx.filter_vmap(lambda model: jax.vmap(model.pre_activations)(X))(models)
    active = z > 0
    return jnp.sum(active[1:] != active[:-1])
