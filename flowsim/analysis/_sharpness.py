"""Sharpness λ_max(∇²L): the top Hessian eigenvalue, matrix-free (Lanczos on Hessian–vector products)."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._checks import as_int
from .._flow import flatten_model, make_field
from .._kinks import NonsmoothWarning, rewrap, unwrap
from .._nonsmooth import AbstractNonsmoothModel, kink_statistics
from .._problem import Problem


def sharpness(problem: Problem, model: PyTree | None = None, *, num_iters: int = 40, seed: int = 0
              ) -> Float[Array, "*time"]:
    """The sharpness λ_max(∇²L(θ)), the largest eigenvalue of the Hessian of the training loss.

    GD with step η is stable near a minimum only while η·λ_max < 2 (the edge of stability of
    Cohen et al., ICLR 2021); Elkabetz & Cohen (NeurIPS 2021) show GD tracks gradient flow
    while the step stays below 2/λ_max along the path.

    Computed matrix-free by the Lanczos iteration with full reorthogonalisation: each step is
    one Hessian–vector product ∇²L v, the JVP of the gradient (no Hessian is formed); the
    answer is the top Ritz value, the largest eigenvalue of the m×m tridiagonal
    T_m = V_mᵀ ∇²L V_m. With m = p (the number of parameters) it is exact; the top Ritz value
    converges to λ_max from below, fast when λ_max is separated from the rest of the spectrum.
    When the Krylov space closes early (an invariant subspace), the iteration restarts from a
    fresh random vector orthogonal to the basis, so every eigenvalue stays reachable.

    For a model with kinks (`AbstractNonsmoothModel`: the library's ReLU networks, and any model
    `fs.Problem` found kinks in, `fs.Kinked`; `model` may be the user's own, e.g. `traj.params`) the
    Hessian–vector product is the JVP of the minimum-norm Clarke field the flow follows. Away from
    kinks that is the Hessian of the current piece (activation pattern held fixed; kinks add no
    curvature to it). Where (unit, sample) pairs sit in the band of their kinks L has no Hessian and
    that Jacobian is not symmetric while they slide: a `NonsmoothWarning` says so.

    **Arguments:**

    - `problem`: the `fs.Problem` whose loss L is differentiated.
    - `model`: the model at which to evaluate (default: `problem.model`). A model whose
      array leaves carry one extra leading axis — e.g. `traj.params` — is evaluated at every
      index of that axis (vmapped).
    - `num_iters`: Lanczos steps m (capped at p).
    - `seed`: seed of the random start vector (the answer does not depend on it beyond the
      iteration's accuracy).

    **Returns:**

    λ_max, a scalar, or one value per index of the leading axis of a batched `model`.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a flowsim.Problem, got {type(problem).__name__}")
    num_iters = as_int("num_iters", num_iters, minimum=1)
    seed = as_int("seed", seed, minimum=0)
    model = problem.model if model is None else rewrap(problem.model, model)
    batch_shape = _leading_shape(problem, model)
    if isinstance(problem.model, AbstractNonsmoothModel):
        _warn_at_kinks(problem, model, batch_shape)
    theta_ref = flatten_model(problem.model, problem)[0]
    m = min(num_iters, theta_ref.shape[0])
    key = jax.random.PRNGKey(seed)
    if not batch_shape:
        return _single(problem, model, key, m)
    size = int(np.prod(batch_shape))
    flat = jax.tree_util.tree_map(
        lambda leaf: leaf.reshape((size, *leaf.shape[len(batch_shape):])) if eqx.is_array(leaf) else leaf,
        problem.partition(model)[0])
    models = eqx.combine(flat, problem.partition(problem.model)[1])
    return _batched(problem, models, key, m).reshape(batch_shape)


def _warn_at_kinks(problem: Problem, model, batch_shape) -> None:
    """A `NonsmoothWarning` when pairs sit in the band of their kinks at `model` (there L has no Hessian)."""
    def count(m):
        return kink_statistics(m, problem.X)["pairs_at_kink"]

    if batch_shape:
        size = int(np.prod(batch_shape))
        flat = jax.tree_util.tree_map(lambda leaf: leaf.reshape((size, *leaf.shape[len(batch_shape):]))
                                      if eqx.is_array(leaf) else leaf, model)
        pairs = np.asarray(eqx.filter_jit(eqx.filter_vmap(count))(flat))
    else:
        pairs = np.asarray(eqx.filter_jit(count)(model))
    if np.any(pairs > 0):
        warnings.warn(
            f"{int(np.max(pairs))} (unit, sample) pairs sit at kinks of {type(unwrap(problem.model)).__name__} "
            f"(at {int(np.sum(pairs > 0))} of {pairs.size} states): L has no Hessian there, and the value is the "
            "top Ritz value of the Jacobian of the minimum-norm Clarke field, which is not symmetric while pairs slide",
            NonsmoothWarning, stacklevel=3)


def _leading_shape(problem: Problem, model) -> tuple[int, ...]:
    """() when `model` is shaped like `problem.model`; the shared leading (batch) shape when every θ
    leaf has the same extra leading axes (e.g. (time,) for `traj.params`)."""
    reference = problem.partition(problem.model)[0]
    try:
        given = problem.partition(model)[0]
        ref_leaves, ref_def = jax.tree_util.tree_flatten(reference)
        leaves, treedef = jax.tree_util.tree_flatten(given)
    except Exception as error:  # noqa: BLE001 - a model of another structure is the caller's mistake
        raise ValueError(f"model does not have the structure of problem.model: {error}") from error
    if treedef != ref_def:
        raise ValueError(f"model does not have the structure of problem.model ({type(problem.model).__name__})")
    shapes = [(np.shape(a), np.shape(b)) for a, b in zip(leaves, ref_leaves)]
    leading = {a[: len(a) - len(b)] for a, b in shapes if len(a) >= len(b) and a[len(a) - len(b):] == b}
    if len(leading) == 1 and all(len(a) >= len(b) and a[len(a) - len(b):] == b for a, b in shapes):
        return leading.pop()
    raise ValueError(
        "model's parameter shapes " + str([a for a, _ in shapes]) + " are neither those of problem.model "
        + str([b for _, b in shapes]) + " nor those with shared leading (time) axes"
    )


@eqx.filter_jit
def _batched(problem, models, key, m):
    return eqx.filter_vmap(lambda model: _lanczos_top(problem, model, key, m))(models)


@eqx.filter_jit
def _single(problem, model, key, m):
    return _lanczos_top(problem, model, key, m)


def _lanczos_top(problem: Problem, model, key, m: int) -> Float[Array, ""]:
    at_model = eqx.tree_at(lambda p: p.model, problem, model)
    theta, field = make_field(at_model, log_time=False)
    p = theta.shape[0]

    def gradient(th):
        return field.scaled_gradient(th, 0.0)[0]

    def hvp(v):
        return jax.jvp(gradient, (theta,), (v,))[1]

    starts = jax.random.normal(key, (m, p), dtype=theta.dtype)
    basis = jnp.zeros((m, p), dtype=theta.dtype)

    def orthogonalise(w, basis):
        # Twice is enough (Kahan–Parlett); rows of `basis` not yet filled are zero.
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    def restart(j, basis):
        w = orthogonalise(starts[j], basis)
        return w / jnp.linalg.norm(w)

    v0 = starts[0] / jnp.linalg.norm(starts[0])

    def body(j, carry):
        basis, alphas, betas, v, v_prev, beta_prev = carry
        basis = basis.at[j].set(v)
        w = hvp(v)
        alpha = jnp.dot(v, w)
        w = orthogonalise(w - alpha * v - beta_prev * v_prev, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.abs(alpha) + beta_prev + jnp.finfo(theta.dtype).tiny
        # An invariant subspace: β ≈ 0. Continue from a fresh vector orthogonal to the basis
        # (T stays block-diagonal: β = 0 there).
        closed = beta <= 1e-10 * scale
        beta = jnp.where(closed, 0.0, beta)
        fresh = restart(jnp.minimum(j + 1, m - 1), basis)
        v_next = jnp.where(closed, fresh, w / jnp.where(closed, 1.0, beta))
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta), v_next, v, beta

    zeros = jnp.zeros(m, dtype=theta.dtype)
    init = (basis, zeros, zeros, v0, jnp.zeros_like(v0), jnp.asarray(0.0, dtype=theta.dtype))
    _, alphas, betas, _, _, _ = jax.lax.fori_loop(0, m, body, init)
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(tridiagonal)[-1]
