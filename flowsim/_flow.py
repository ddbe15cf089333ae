"""The gradient-flow vector field in linear time t and in log time s = log(1 + t)."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._nonsmooth import AbstractNonsmoothModel, KinkBand, kink_band_of, min_norm_scaled_gradient
from ._problem import Problem


class ModifiedFlow(eqx.Module):
    """The first-order modified flow of gradient descent with step η (Barrett & Dherin, ICLR 2021):

        θ' = −∇(L + (η/4)‖∇L‖²) = −(∇L + (η/2) ∇²L ∇L).

    GD with step η follows it to O(η²) over a fixed time span, and gradient flow only to O(η).
    `fs.simulate` integrates it in place of a `Problem` (linear time only: in log time the
    correction would be weighted by e^{2s}). The Hessian–vector product is one JVP of the
    gradient; no Hessian is formed. `lr` is a traced value: a new η does not recompile,
    and `eqx.filter_vmap` over `lr` works.
    """

    problem: Problem
    lr: Float[Array, ""]

    def __init__(self, problem: Problem, lr):
        from ._checks import as_positive_scalar  # the one validation layer

        if not isinstance(problem, Problem):
            raise TypeError(f"modified_flow needs a flowsim.Problem, got {type(problem).__name__}")
        self.problem = problem
        self.lr = as_positive_scalar("lr", lr)


def modified_flow(problem: Problem, lr) -> ModifiedFlow:
    """θ' = −∇(L + (lr/4)‖∇L‖²), the modified flow of GD with step `lr` (Barrett & Dherin 2021)."""
    return ModifiedFlow(problem, lr)


class AbstractGradientField(eqx.Module):
    """A right-hand side θ' = −v(θ) over the flattened trainable parameters θ.

    In log time (`log_time=True`) the independent variable is s = log(1 + t) and
    dθ/ds = −e^s v(θ): the scale e^s is passed down as `log_scale` and folded into the loss
    weights in log space, so s = 10^6 works (no e^s is ever formed on its own).
    """

    problem: eqx.AbstractVar[Problem]
    unravel: eqx.AbstractVar[Callable]
    fixed_arrays: eqx.AbstractVar[PyTree]
    static_model: eqx.AbstractVar[PyTree]
    log_time: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def scaled_gradient(self, theta: Float[Array, " p"], log_scale) -> tuple[Array, Array]:
        """(e^{log_scale} v(θ), predictions at θ)."""

    def model(self, theta: Float[Array, " p"]):
        return eqx.combine(self.unravel(theta), self.fixed_arrays, self.static_model)

    def predictions(self, theta: Float[Array, " p"]) -> Array:
        return jax.vmap(self.model(theta))(self.problem.X)

    def __call__(self, time, theta, args=None):
        log_scale = time if self.log_time else 0.0
        grad, _ = self.scaled_gradient(theta, log_scale)
        return -grad

    def log_loss(self, theta: Float[Array, " p"]) -> Float[Array, ""]:
        return self.problem.loss.log_value(self.predictions(theta), self.problem.y)


class GradientFlowField(AbstractGradientField):
    """θ' = −∇L(θ); in log time dθ/ds = −e^s ∇L(θ) = −(1/n) Σ_i e^s ∂ℓ_i/∂f_i · ∇f_i(θ),

    evaluated as ONE vector–Jacobian product of the prediction map θ ↦ f(X; θ) with the
    cotangent e^s ∂ℓ/∂f / n, which each loss forms in log space (for exponential-tailed
    losses, w_i = exp(s + log|ℓ'(m_i)|)). Neither e^s nor ℓ' is formed on its own, so
    s = 10^6 works. The weights stay functions of θ, so the Jacobian that implicit solvers
    take of this field is exact (a weight under stop_gradient made Kvaerno5 take 40× more steps).

    For a non-smooth model (`AbstractNonsmoothModel`: ReLU networks) the field is the
    minimum-norm element of the Clarke subdifferential, −∂⁰L(θ), which is what the solution
    of the differential inclusion θ' ∈ −∂L(θ) follows, sliding along kinks included.
    """

    problem: Problem
    unravel: Callable = eqx.field(static=True)
    fixed_arrays: PyTree  # leaves `trainable` excludes: traced, never differentiated
    static_model: PyTree = eqx.field(static=True)
    log_time: bool = eqx.field(static=True)
    # The kink band of a non-smooth model (decided once, by the plan: `kink_band_of`); None for smooth ones.
    band: KinkBand | None = None

    def scaled_gradient(self, theta: Float[Array, " p"], log_scale) -> tuple[Array, Array]:
        if isinstance(self.problem.model, AbstractNonsmoothModel):
            return min_norm_scaled_gradient(self, theta, log_scale)
        preds, pullback = jax.vjp(self.predictions, theta)
        cotangent = self.problem.loss.scaled_gradient(preds, self.problem.y, log_scale)
        (grad,) = pullback(cotangent / self.problem.num_samples)
        return grad, preds


class ModifiedGradientField(AbstractGradientField):
    """θ' = −(∇L + (η/2) ∇²L ∇L): the modified flow of GD (`ModifiedFlow`)."""

    problem: Problem
    unravel: Callable = eqx.field(static=True)
    fixed_arrays: PyTree  # leaves `trainable` excludes: traced, never differentiated
    static_model: PyTree = eqx.field(static=True)
    log_time: bool = eqx.field(static=True)
    lr: Float[Array, ""]
    band: KinkBand | None = None

    def scaled_gradient(self, theta: Float[Array, " p"], log_scale) -> tuple[Array, Array]:
        plain = GradientFlowField(self.problem, self.unravel, self.fixed_arrays, self.static_model, self.log_time,
                                  self.band)

        def gradient(th):
            return plain.scaled_gradient(th, log_scale)

        (grad, preds), (hessian_grad, _) = jax.jvp(gradient, (theta,), (plain.scaled_gradient(theta, log_scale)[0],))
        return grad + 0.5 * self.lr * hessian_grad, preds


def flatten_model(model, problem: Problem | None = None) -> tuple[Array, Callable, PyTree]:
    """θ as one float64 vector, the map back to the trainable leaves, and the rest of the model
    (fixed arrays and non-array leaves; `eqx.combine` puts them back together).

    With a `problem`, its `trainable` selection decides which leaves are θ; without one,
    every inexact-array leaf is."""
    if problem is None:
        params, static_model = eqx.partition(model, eqx.is_inexact_array)
    else:
        params, static_model = problem.partition(model)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    return theta, unravel, static_model


def base_problem(problem) -> Problem:
    """The `Problem` under a `Problem` or a `ModifiedFlow`."""
    return problem.problem if isinstance(problem, ModifiedFlow) else problem


def make_field(problem, log_time: bool, rtol=None, atol=None, *, band: KinkBand | None = None
               ) -> tuple[Array, AbstractGradientField]:
    """θ₀ and the vector field for a `Problem` or a `ModifiedFlow`.

    `band`: the kink band of a non-smooth model (a `KinkBand`, as `fs.simulate`'s plan decides it);
    or, without one, `rtol`, `atol`: the solve's tolerances, turned into the band by the one rule
    (`kink_band_of`; None: the solve's defaults). Smooth models have no band and ignore both."""
    inner = base_problem(problem)
    if band is not None and (rtol is not None or atol is not None):
        raise TypeError(f"make_field takes a band or the tolerances that set it, not both (got band and "
                        f"rtol={rtol!r}, atol={atol!r})")
    if band is not None and not isinstance(band, KinkBand):
        raise TypeError(f"make_field: band must be a KinkBand (kink_band_of), got {type(band).__name__}")
    if not isinstance(inner.model, AbstractNonsmoothModel):
        band = None
    elif band is None:
        band = kink_band_of(inner.model, rtol, atol)
    theta0, unravel, rest = flatten_model(inner.model, inner)
    fixed_arrays, static_model = eqx.partition(rest, eqx.is_array)
    if isinstance(problem, ModifiedFlow):
        return theta0, ModifiedGradientField(inner, unravel, fixed_arrays, static_model, log_time, problem.lr, band)
    return theta0, GradientFlowField(inner, unravel, fixed_arrays, static_model, log_time, band)


def time_from_log_t(log_t, log_time: bool):
    """The solver's time variable for a physical time t = e^{log_t}: s = log(1 + t) or t.

    Works on numbers (numpy) and on traced values (jax)."""
    if isinstance(log_t, jax.Array) or isinstance(log_t, jax.core.Tracer):
        log_t = jnp.asarray(log_t, dtype=jnp.float64)
        return jnp.logaddexp(0.0, log_t) if log_time else jnp.exp(log_t)
    log_t = np.asarray(log_t, dtype=np.float64)
    if log_time:
        return np.logaddexp(0.0, log_t)
    return np.exp(log_t)
