"""Homogeneous networks: normalised and smoothed margins, the parameter-space KKT residual of the ℓ2
max-margin problem (with Clarke subgradients at ReLU kinks), singular-value ratios, and the decision
boundary compared with a linear predictor.

A model f(x; θ) is L-homogeneous in its trained parameters θ when f(x; cθ) = c^L f(x; θ) for c > 0
(a bias-free ReLU MLP of depth L in all its layers; Frei et al.'s two-layer net with the outer layer
fixed, L = 1). For such models trained on an exponentially-tailed classification loss, gradient flow
converges in direction to a KKT point of

    min ½‖θ‖²   s.t.   y_i f(x_i; θ) ≥ 1  for all i                                 (P)

(Lyu & Li, "Gradient descent maximizes the margin of homogeneous neural networks", ICLR 2020;
Ji & Telgarsky, "Directional convergence and alignment in deep learning", NeurIPS 2020). The functions
here measure how far a point (or every saved point of a trajectory) is from that.

Every function takes the `fs.Problem` (data, labels, which leaves are θ) and `params`: one model,
or a stacked model with a leading axis on every array leaf (`traj.params`); the result then carries
that axis.
"""

from __future__ import annotations

from typing import NamedTuple

import cvxpy as cp
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._checks import as_positive_float
from .._kinks import rewrap
from .._nonsmooth import AbstractNonsmoothModel
from ._ranks import singular_values

# ----------------------------------------------------------------------------- plumbing


def require_problem(problem):
    from .._problem import Problem

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a flowsim.Problem, got {type(problem).__name__}")
    return problem


def _require_classification(problem, what: str):
    if not problem.loss.is_classification:
        raise ValueError(
            f"{what} needs a classification problem (scalar outputs, labels ±1, logistic or exponential loss); "
            f"got loss {problem.loss.name!r} with targets of shape {tuple(problem.y.shape)}"
        )


def batch_axis(problem, params) -> bool:
    """Whether `params` is a stack of models (one more axis than the problem's model)."""
    mine = jax.tree_util.tree_leaves(eqx.filter(problem.model, eqx.is_array))
    theirs = jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_array))
    if len(mine) != len(theirs):
        raise ValueError(
            f"params has {len(theirs)} array leaves but the problem's model has {len(mine)}: pass a model of the "
            "problem's kind (or traj.params)"
        )
    extra = {t.ndim - m.ndim for m, t in zip(mine, theirs, strict=True)}
    if extra == {0}:
        return False
    if extra == {1}:
        return True
    raise ValueError(
        "params must be one model of the problem's shape or a stack with ONE leading axis on every leaf; "
        f"got leaves with {sorted(extra)} extra axes"
    )


def _map(problem, params, single):
    params = problem.model if params is None else params
    if batch_axis(problem, params):
        return eqx.filter_vmap(single)(params)
    return single(params)


def _theta_norm(problem, model) -> Array:
    theta, _ = problem.partition(model)
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(theta)))


def _signed_outputs(problem, model) -> Array:
    """q_i = y_i f(x_i; θ), shape (n,)."""
    return problem.y * jax.vmap(model)(problem.X)


def _scale(problem, model, c):
    theta, rest = problem.partition(model)
    return eqx.combine(jax.tree_util.tree_map(lambda leaf: c * leaf, theta), rest)


# ----------------------------------------------------------------------------- homogeneity, margins


def homogeneity_degree(problem, model=None, *, scales=(0.5, 2.0, 7.0), rtol: float = 1e-6) -> int:
    """The degree L with f(x_i; cθ) = c^L f(x_i; θ) for every sample and every c in `scales`,
    checked numerically (θ the problem's trainable leaves).

    **Arguments:**

    - `problem`: a `fs.Problem`; `model`: the point to check at (default the problem's model).
    - `scales`: factors c > 0, c ≠ 1; `rtol`: allowed relative error of c^L f(θ) vs f(cθ).

    **Returns:** L as an int. Raises `ValueError` naming the worst sample and scale when no integer L
    fits to `rtol` (a bias, a smooth non-homogeneous activation), or when every output is zero.
    """
    problem = require_problem(problem)
    model = problem.model if model is None else model
    if batch_axis(problem, model):
        raise ValueError("homogeneity_degree checks ONE model, got a stack (pass traj.final, not traj.params)")
    scales = np.asarray(scales, dtype=np.float64).ravel()
    if scales.size == 0 or not np.all(np.isfinite(scales)) or np.any(scales <= 0) or np.any(scales == 1):
        raise ValueError(f"scales must be finite numbers > 0 and ≠ 1, got {scales.tolist()}")
    rtol = as_positive_float("rtol", rtol)
    base = np.asarray(jax.vmap(model)(problem.X), dtype=np.float64).reshape(problem.X.shape[0], -1)
    big = np.abs(base) > 1e-12 * max(np.max(np.abs(base)), 1e-300)
    if not np.any(big) or np.max(np.abs(base)) == 0:
        raise ValueError("every output f(x_i; θ) is zero at this point: the homogeneity degree is not measurable")
    estimates = []
    for c in scales:
        out = np.asarray(jax.vmap(_scale(problem, model, float(c)))(problem.X), dtype=np.float64).reshape(base.shape)
        ratio = out[big] / base[big]
        if np.any(ratio <= 0):
            raise ValueError(f"f(x; {c}·θ) changes sign against f(x; θ): the model is not positively homogeneous")
        estimates.append(np.log(ratio) / np.log(c))
    estimates = np.concatenate(estimates)
    degree = int(np.rint(np.median(estimates)))
    worst = 0.0
    for c in scales:
        out = np.asarray(jax.vmap(_scale(problem, model, float(c)))(problem.X), dtype=np.float64).reshape(base.shape)
        err = np.max(np.abs(out - c**degree * base)) / max(np.max(np.abs(c**degree * base)), 1e-300)
        if err > worst:
            worst, worst_c = err, c
    if worst > rtol:
        raise ValueError(
            f"model {type(model).__name__} is not homogeneous in its trained parameters: the best integer degree "
            f"L = {degree} misses f(x; cθ) = c^L f(x; θ) by {worst:.3g} (relative) at c = {worst_c:g} "
            f"(rtol = {rtol:g}); the per-sample log-ratios span [{estimates.min():.4g}, {estimates.max():.4g}]"
        )
    return degree


def homogeneous_margin(problem, params=None, *, degree: int | None = None) -> Float[Array, "*batch"]:
    """Normalised margin γ̄(θ) = min_i y_i f(x_i; θ) / ‖θ‖^L of an L-homogeneous classifier.

    Scale-invariant; non-decreasing in the late phase of gradient flow, and its limit is the margin of
    a KKT point of (P) (Lyu & Li, ICLR 2020, Theorem 4.1). `degree` defaults to
    `homogeneity_degree(problem)`. **Returns:** a scalar, or one value per stacked model.
    """
    problem = require_problem(problem)
    _require_classification(problem, "homogeneous_margin")
    L = homogeneity_degree(problem) if degree is None else _as_degree(degree)
    return _map(problem, params, lambda m: jnp.min(_signed_outputs(problem, m)) / _theta_norm(problem, m) ** L)


def _as_degree(degree) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
        raise ValueError(f"degree (the homogeneity order L) must be an integer ≥ 1, got {degree!r}")
    return int(degree)


def _log_softplus_neg(q):
    """log log(1 + e^{−q}), stable for large q (≈ −q − e^{−q}/2)."""
    safe = jnp.where(q > 30.0, 0.0, q)
    return jnp.where(q > 30.0, -q - 0.5 * jnp.exp(-q), jnp.log(jnp.log1p(jnp.exp(-safe))))


def smoothed_margin(problem, params=None, *, degree: int | None = None) -> Float[Array, "*batch"]:
    """Smoothed normalised margin of Lyu & Li (ICLR 2020, §4.1), with the SUM loss ℒ = Σ_i ℓ(q_i),
    q_i = y_i f(x_i; θ):

    - exponential loss: γ̃ = log(1/ℒ) / ‖θ‖^L;
    - logistic loss:    γ̃ = log(1/(e^ℒ − 1)) / ‖θ‖^L.

    γ̃ ≤ γ̄ (the normalised margin) always, the gap is at most log(n)/‖θ‖^L, and γ̃ is non-decreasing along
    gradient flow once ℒ < log 2 (resp. 1) (Lyu & Li, Lemma 5.1). Computed in log space, finite when ℒ
    underflows. **Returns:** a scalar, or one value per stacked model.
    """
    problem = require_problem(problem)
    _require_classification(problem, "smoothed_margin")
    L = homogeneity_degree(problem) if degree is None else _as_degree(degree)
    name = problem.loss.name

    def single(m):
        q = _signed_outputs(problem, m)
        if name == "exponential":
            log_sum = jax.scipy.special.logsumexp(-q)
            numerator = -log_sum
        else:
            log_sum = jax.scipy.special.logsumexp(_log_softplus_neg(q))  # log ℒ
            total = jnp.exp(log_sum)
            # log(e^ℒ − 1) = log ℒ + log((e^ℒ − 1)/ℒ); for small ℒ the second term is ℒ/2 + O(ℒ²).
            safe = jnp.where(total < 1e-8, 1.0, total)
            numerator = -jnp.where(total < 1e-8, log_sum + 0.5 * total, jnp.log(jnp.expm1(safe)))
        return numerator / _theta_norm(problem, m) ** L

    if name not in ("exponential", "logistic"):
        raise ValueError(f"smoothed_margin is defined for the 'logistic' and 'exponential' losses, got {name!r}")
    return _map(problem, params, single)


# ----------------------------------------------------------------------------- KKT certificate of (P)

_CLARABEL = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10, "max_iter": 400}


class HomogeneousKKT(NamedTuple):
    """The parameter-space KKT fit of (P) at one point θ, rescaled to θ̂ = θ / γ_min^{1/L} (smallest
    margin exactly 1).

    - `residual`: min ‖θ̂ − Σ_{i∈A} λ_i y_i g_i‖ / ‖θ̂‖ over λ ≥ 0 and Clarke subgradients
      g_i ∈ ∂f(x_i; θ̂) (ReLU slopes at kinks free in [γ, 1]); 0 at a KKT point.
    - `multipliers`: λ (n,), zero off the active set A.
    - `active`: A, the samples with y_i f(x_i; θ̂) ≤ 1 + `active_rtol`.
    - `margins`: y_i f(x_i; θ̂), (n,).
    - `num_kinks`: (sample, unit) pairs whose pre-activation lies within the kink band.
    """

    residual: float
    multipliers: np.ndarray
    active: np.ndarray
    margins: np.ndarray
    num_kinks: int


def _flat(tree) -> Array:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def homogeneous_kkt(problem, model=None, *, degree: int | None = None, active_rtol: float = 1e-2,
                    kink_rtol: float = 1e-6) -> HomogeneousKKT:
    """How far θ (one model) is from a KKT point of the ℓ2 max-margin problem (P) in parameter space:

        θ̂ = Σ_{i∈A} λ_i y_i g_i,   λ ≥ 0,   g_i ∈ ∂°f(x_i; θ̂)  (the Clarke subdifferential)

    (Lyu & Li, ICLR 2020, Definition C.1 / Theorem 4.4; Ji & Telgarsky, NeurIPS 2020). For a
    `fs.networks` ReLU model (`AbstractNonsmoothModel`) a unit u of sample i is at a kink when
    |z_iu| ≤ its kink band `model.kink_widths(x_i, kink_rtol, 0)`; there the slope s_iu is free in
    [γ, 1] (γ the leak). The gradient is affine in each such slope (exact when a sample's kinks lie in
    one layer — always at depth 2), so λ_i g_i(s) = λ_i g_i(γ) + Σ_u ν_iu (g_i(s_u = 1) − g_i(s_u = γ))
    with 0 ≤ ν_iu ≤ λ_i, and the fit is a convex QP in (λ, ν), solved with cvxpy (Clarabel) after a QR
    reduction to the number of columns.

    **Arguments:** `problem` (classification), `model` (default the problem's; one model),
    `degree` (default measured), `active_rtol` (which samples count as support vectors),
    `kink_rtol` (the kink band). **Returns:** a `HomogeneousKKT`.
    """
    problem = require_problem(problem)
    _require_classification(problem, "homogeneous_kkt")
    model = problem.model if model is None else model
    if batch_axis(problem, model):
        raise ValueError("homogeneous_kkt takes ONE model; use homogeneous_kkt_residuals for traj.params")
    model = rewrap(problem.model, model)  # the user's model (traj.final) with the kinks Problem found in it
    active_rtol = as_positive_float("active_rtol", active_rtol)
    kink_rtol = as_positive_float("kink_rtol", kink_rtol)
    q = np.asarray(_signed_outputs(problem, model))
    if not np.all(np.isfinite(q)) or q.min() <= 0:
        n_bad = int(np.sum(~(q > 0)))
        raise ValueError(
            f"homogeneous_kkt needs a point that classifies every sample correctly (y_i f(x_i; θ) > 0); "
            f"{n_bad} of {q.size} samples have y_i f_i ≤ 0 (smallest {q.min():.3g})"
        )
    L = homogeneity_degree(problem, model) if degree is None else _as_degree(degree)
    model = _scale(problem, model, float(q.min()) ** (-1.0 / L))
    theta, rest = problem.partition(model)
    theta_flat = np.asarray(_flat(theta))
    margins = np.asarray(_signed_outputs(problem, model))
    active = margins <= 1.0 + active_rtol
    X, y = problem.X, problem.y
    nonsmooth = isinstance(model, AbstractNonsmoothModel)

    def grad_at(i, slopes):
        def f(th):
            m = eqx.combine(th, rest)
            return y[i] * (m.forward(X[i], slopes) if nonsmooth else m(X[i]))
        return np.asarray(_flat(jax.grad(f)(theta)))

    columns, owner, kinks = [], [], 0
    for i in np.flatnonzero(active):
        if nonsmooth:
            z = model.pre_activations(X[i])
            width = model.kink_widths(X[i], kink_rtol, 0.0)
            at_kink = np.asarray(jnp.abs(z) <= width)
            leak = float(getattr(model, "leak", 0.0))
            base = np.where(at_kink, leak, np.where(np.asarray(z) > 0, 1.0, leak))
            g_base = grad_at(i, jnp.asarray(base))
            columns.append(g_base)
            owner.append((i, -1))
            for u in np.flatnonzero(at_kink):
                kinks += 1
                up = base.copy()
                up[u] = 1.0
                columns.append(grad_at(i, jnp.asarray(up)) - g_base)
                owner.append((i, int(u)))
        else:
            columns.append(grad_at(i, None))
            owner.append((i, -1))
    norm = float(np.linalg.norm(theta_flat))
    A = np.stack(columns, axis=1)
    Q, R = np.linalg.qr(A)
    b = Q.T @ theta_flat
    outside = float(np.sum((theta_flat - Q @ b) ** 2))  # the part of θ̂ no column reaches
    k = A.shape[1]
    c = cp.Variable(k)
    constraints = []
    lam_index = {i: j for j, (i, u) in enumerate(owner) if u == -1}
    for j, (i, u) in enumerate(owner):
        if u == -1:
            constraints.append(c[j] >= 0)
        else:
            constraints += [c[j] >= 0, c[j] <= c[lam_index[i]]]
    # The norm itself (a second-order cone), not its square: the solver's tolerance then bounds the residual.
    problem_cp = cp.Problem(cp.Minimize(cp.norm(R @ c - b)), constraints)
    problem_cp.solve(solver=cp.CLARABEL, **_CLARABEL)
    if c.value is None:
        raise RuntimeError(f"the KKT least-squares program failed: cvxpy status {problem_cp.status}")
    coef = np.asarray(c.value)
    coef = np.maximum(coef, 0.0)
    residual = float(np.sqrt(float(np.sum((R @ coef - b) ** 2)) + outside) / norm)
    multipliers = np.zeros(q.size)
    for i, j in lam_index.items():
        multipliers[i] = max(coef[j], 0.0)
    return HomogeneousKKT(residual, multipliers, active, margins, kinks)


def homogeneous_kkt_residuals(problem, params, **options) -> np.ndarray:
    """`homogeneous_kkt(problem, model, **options).residual` for every model of a stack
    (`traj.params`); nan where a model misclassifies a sample (no rescaling to margin 1 exists)."""
    problem = require_problem(problem)
    if not batch_axis(problem, params):
        return np.asarray([homogeneous_kkt(problem, params, **options).residual])
    size = jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_array))[0].shape[0]
    out = np.full(size, np.nan)
    for s in range(size):
        model = jax.tree_util.tree_map(lambda leaf, s=s: leaf[s] if eqx.is_array(leaf) else leaf, params)
        q = np.asarray(_signed_outputs(problem, model))
        if np.all(np.isfinite(q)) and q.min() > 0:
            out[s] = homogeneous_kkt(problem, model, **options).residual
    return out


# ----------------------------------------------------------------------------- ranks, linear boundary


def singular_value_ratios(W: ArrayLike) -> Float[Array, "*batch r"]:
    """σ_k / σ_1 for k = 1..r of every matrix in a batch (e.g. a time axis), shape (..., min(m, k)).

    σ₂/σ₁ and σ₃/σ₁ → 0 is what "rank ≤ 1 / ≤ 2" means along a trajectory (Frei et al., ICLR 2023;
    Timor, Vardi & Shamir, ALT 2023). A zero matrix gives nan.
    """
    W = jnp.asarray(W, dtype=jnp.float64)
    if W.ndim < 2 or W.shape[-1] == 0 or W.shape[-2] == 0:
        raise ValueError(f"W must have shape (..., m, k) with m, k ≥ 1; got shape {W.shape}")
    s = singular_values(W)
    return s / s[..., :1]


def effective_direction(model, X: ArrayLike) -> Float[Array, " d"]:
    """The effective linear direction of a scalar model: the mean input gradient (1/N) Σ_k ∇_x f(x_k)
    over the points X (N, d). For Frei et al.'s leaky net this is Σ_j a_j (mean φ'(⟨w_j, x⟩)) w_j; for a
    linear model it is β itself."""
    X = jnp.asarray(X, dtype=jnp.float64)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (N, d), got {X.shape}")
    return jnp.mean(jax.vmap(jax.grad(lambda x: model(x)))(X), axis=0)


class LinearComparison(NamedTuple):
    """A network's decision boundary against a linear predictor β on points X: `agreement` the fraction
    with sign f(x) = sign ⟨β, x⟩; `one_minus_cos` 1 − cos(effective direction, β)."""

    agreement: float
    one_minus_cos: float


def compare_with_linear(model, beta: ArrayLike, X: ArrayLike) -> LinearComparison:
    """Agreement of sign f(x) with sign ⟨β, x⟩ on the points X (fresh samples), and 1 − cos of the
    angle between `effective_direction(model, X)` and β (Frei et al., ICLR 2023: the leaky net's
    boundary is asymptotically linear, that of the ℓ2 max-margin linear predictor on nearly orthogonal
    data)."""
    X = jnp.asarray(X, dtype=jnp.float64)
    beta = jnp.asarray(beta, dtype=jnp.float64)
    if X.ndim != 2 or beta.shape != X.shape[1:]:
        raise ValueError(f"beta must have shape ({X.shape[-1]},) to match X {X.shape}; got {beta.shape}")
    f = jax.vmap(model)(X)
    agreement = float(jnp.mean(jnp.sign(f) == jnp.sign(X @ beta)))
    v = effective_direction(model, X)
    cos = float(jnp.dot(v, beta) / (jnp.linalg.norm(v) * jnp.linalg.norm(beta)))
    return LinearComparison(agreement, 1.0 - cos)
