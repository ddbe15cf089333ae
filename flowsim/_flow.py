"""The gradient-flow vector field in linear time t and in log time s = log(1 + t)."""

from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._problem import Problem


class GradientFlowField(eqx.Module):
    """θ' = −∇L(θ) over the flattened parameter vector θ.

    In log time (``log_time=True``) the independent variable is s = log(1 + t) and

        dθ/ds = −e^s ∇L(θ) = −(1/n) Σ_i e^s ∂ℓ_i/∂f_i · ∇f_i(θ),

    evaluated as ONE vector–Jacobian product of the prediction map θ ↦ f(X; θ) with the
    cotangent e^s ∂ℓ/∂f / n, which each loss forms in log space (for exponential-tailed
    losses, w_i = exp(s + log|ℓ'(m_i)|)). Neither e^s nor ℓ' is formed on its own, so
    s = 10^6 works. The weights stay functions of θ, so the Jacobian that implicit solvers
    take of this field is exact (science.md §1).
    """

    problem: Problem
    unravel: Callable = eqx.field(static=True)
    static_model: PyTree = eqx.field(static=True)
    log_time: bool = eqx.field(static=True)

    def model(self, theta: Float[Array, " p"]):
        return eqx.combine(self.unravel(theta), self.static_model)

    def predictions(self, theta: Float[Array, " p"]) -> Array:
        return jax.vmap(self.model(theta))(self.problem.X)

    def scaled_gradient(self, theta: Float[Array, " p"], log_scale) -> tuple[Array, Array]:
        """(e^{log_scale} ∇L(θ), predictions)."""
        preds, pullback = jax.vjp(self.predictions, theta)
        cotangent = self.problem.loss.scaled_gradient(preds, self.problem.y, log_scale)
        (grad,) = pullback(cotangent / self.problem.num_samples)
        return grad, preds

    def __call__(self, time, theta, args=None):
        log_scale = time if self.log_time else 0.0
        grad, _ = self.scaled_gradient(theta, log_scale)
        return -grad

    def log_loss(self, theta: Float[Array, " p"]) -> Float[Array, ""]:
        return self.problem.loss.log_value(self.predictions(theta), self.problem.y)


def flatten_model(model) -> tuple[Array, Callable, PyTree]:
    """θ as one float64 vector, the map back to the trainable leaves, and the static rest."""
    params, static_model = eqx.partition(model, eqx.is_inexact_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    return theta, unravel, static_model


def time_from_log_t(log_t, log_time: bool) -> np.ndarray:
    """The solver's time variable for a physical time t = e^{log_t}: s = log(1 + t) or t.

    Horizons and save grids are concrete numbers, so this is numpy (safe under jit)."""
    log_t = np.asarray(log_t, dtype=np.float64)
    if log_time:
        return np.logaddexp(0.0, log_t)
    return np.exp(log_t)
