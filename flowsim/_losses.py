"""Per-sample losses, their logs, and the stably scaled gradient that drives the flow.

Every loss provides three things (the log-time weights of the README, "The engine"):

- `per_sample(prediction, target)`: ℓ_i, which may underflow to 0;
- `log_per_sample(prediction, target)`: log ℓ_i, finite where ℓ_i underflows;
- `scaled_gradient(prediction, target, log_scale)`: e^{log_scale} · ∂ℓ_i/∂f_i, computed
  without ever forming e^{log_scale} or ∂ℓ/∂f on their own. With `log_scale = s` this
  is the log-time weight w_i = e^s |ℓ'(m_i)| of dθ/ds = (1/n) Σ_i w_i ∇m_i.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractLoss(eqx.Module):
    """A per-sample loss ℓ(f(x_i), y_i); the training loss is L = (1/n) Σ_i ℓ_i."""

    name: ClassVar[str]
    is_classification: ClassVar[bool]

    @abc.abstractmethod
    def per_sample(self, prediction: Array, target: Array) -> Float[Array, " n"]:
        """ℓ_i for each sample."""

    @abc.abstractmethod
    def log_per_sample(self, prediction: Array, target: Array) -> Float[Array, " n"]:
        """log ℓ_i for each sample, finite where ℓ_i underflows."""

    @abc.abstractmethod
    def scaled_gradient(self, prediction: Array, target: Array, log_scale) -> Array:
        """e^{log_scale} ∂ℓ_i/∂f_i, same shape as `prediction`."""

    def log_value(self, prediction: Array, target: Array) -> Float[Array, ""]:
        """log L = logsumexp_i(log ℓ_i) − log n; NaN where any prediction or any log ℓ_i is NaN.

        A NaN sample must not drop out of the sum (a state whose predictions are all NaN would
        read as L = 0), so NaN is passed on explicitly, whatever a subclass's `log_per_sample` does.
        """
        log_terms = self.log_per_sample(prediction, target)
        undefined = jnp.any(jnp.isnan(prediction)) | jnp.any(jnp.isnan(log_terms))
        log_loss = jax.nn.logsumexp(log_terms) - jnp.log(log_terms.shape[0])
        return jnp.where(undefined, jnp.nan, log_loss)

    def value(self, prediction: Array, target: Array) -> Float[Array, ""]:
        """L = (1/n) Σ_i ℓ_i."""
        return jnp.mean(self.per_sample(prediction, target))


class AbstractMarginLoss(AbstractLoss):
    """Exponential-tailed classification loss ℓ(m) of the margin m_i = y_i f(x_i), y_i = ±1."""

    is_classification: ClassVar[bool] = True

    @abc.abstractmethod
    def loss_of_margin(self, margin: Array) -> Array:
        """ℓ(m)."""

    @abc.abstractmethod
    def log_loss_of_margin(self, margin: Array) -> Array:
        """log ℓ(m), finite for every finite m."""

    @abc.abstractmethod
    def log_neg_derivative(self, margin: Array) -> Array:
        """log |ℓ'(m)| (ℓ is decreasing, so ℓ'(m) = −e^{this})."""

    def per_sample(self, prediction, target):
        return self.loss_of_margin(prediction * target)

    def log_per_sample(self, prediction, target):
        return self.log_loss_of_margin(prediction * target)

    def scaled_gradient(self, prediction, target, log_scale):
        # ∂ℓ/∂f = y ℓ'(y f) = −y |ℓ'(m)|; the product e^s |ℓ'| is formed in log space so that
        # s = 10^6 works. The weight stays a function of θ: implicit solvers differentiate it.
        weight = jnp.exp(log_scale + self.log_neg_derivative(prediction * target))
        return -target * weight


class Logistic(AbstractMarginLoss):
    """Logistic loss ℓ(m) = log(1 + e^{−m}); log ℓ(m) ≈ −m − e^{−m}/2 for large m."""

    name: ClassVar[str] = "logistic"

    def loss_of_margin(self, margin):
        return jax.nn.softplus(-margin)

    def log_loss_of_margin(self, margin):
        # log(log1p(u)) with u = e^{-m} underflows for m > ~745; the two-term expansion
        # log1p(u) = u(1 − u/2 + …) is exact to O(e^{−2m}) once m > 30.
        large = margin > 30.0
        safe_small = jnp.where(large, 0.0, margin)
        direct = jnp.log(jax.nn.softplus(-safe_small))
        safe_large = jnp.where(large, margin, 30.0)
        asymptotic = -safe_large - 0.5 * jnp.exp(-safe_large)
        return jnp.where(large, asymptotic, direct)

    def log_neg_derivative(self, margin):
        # |ℓ'(m)| = σ(−m) = e^{−softplus(m)}
        return -jax.nn.softplus(margin)


class Exponential(AbstractMarginLoss):
    """Exponential loss ℓ(m) = e^{−m}."""

    name: ClassVar[str] = "exponential"

    def loss_of_margin(self, margin):
        return jnp.exp(-margin)

    def log_loss_of_margin(self, margin):
        return -margin

    def log_neg_derivative(self, margin):
        return -margin


class Squared(AbstractLoss):
    """Squared loss ℓ_i = ½‖f(x_i) − y_i‖² (scalar or vector outputs)."""

    name: ClassVar[str] = "squared"
    is_classification: ClassVar[bool] = False

    def per_sample(self, prediction, target):
        residual = prediction - target
        return 0.5 * jnp.sum(residual.reshape(residual.shape[0], -1) ** 2, axis=1)

    def log_per_sample(self, prediction, target):
        residual = (prediction - target).reshape(prediction.shape[0], -1)
        abs_residual = jnp.abs(residual)
        positive = abs_residual > 0
        log_abs = jnp.log(jnp.where(positive, abs_residual, 1.0))
        # A zero residual contributes log 0 = −inf; a NaN one must stay NaN (`NaN > 0` is False).
        log_terms = jnp.where(positive, 2.0 * log_abs, jnp.where(jnp.isnan(abs_residual), jnp.nan, -jnp.inf))
        return jax.nn.logsumexp(log_terms, axis=1) + jnp.log(0.5)

    def scaled_gradient(self, prediction, target, log_scale):
        residual = prediction - target
        # e^{s}·r formed as sign(r)·e^{s + log|r|} so that large s and tiny r do not
        # overflow; the `where` keeps the derivative finite where r = 0.
        abs_residual = jnp.abs(residual)
        positive = abs_residual > 0
        safe = jnp.where(positive, abs_residual, 1.0)
        scaled = jnp.sign(residual) * jnp.exp(log_scale + jnp.log(safe))
        return jnp.where(positive, scaled, 0.0)


class SoftmaxCrossEntropy(AbstractLoss):
    """Multi-class cross-entropy of the softmax, ℓ_i = −Σ_c y_ic log softmax(f_i)_c, for logits
    f_i ∈ R^k (k ≥ 2) and targets y_i that are one-hot rows (or probability vectors, Σ_c y_ic = 1).

    As ℓ_i = Σ_c y_ic softplus(u_ic) with u_ic = logsumexp_{c'≠c}(f_ic' − f_ic), both ℓ_i and
    log ℓ_i = logsumexp_c(log y_ic + log softplus(u_ic)) are formed from the logit gaps, so log ℓ_i
    stays finite where ℓ_i underflows (separable data trained long, as for the logistic loss).
    The scaled gradient e^s (softmax(f_i) − y_i) is split into its positive part
    e^{s + log p_ic + log(1 − y_ic)} and its negative part e^{s + log y_ic + log(1 − p_ic)}, both in log
    space. For k = 2 and one-hot targets it equals the logistic loss of the margin f_i,y − f_i,other.
    """

    name: ClassVar[str] = "cross_entropy"
    is_classification: ClassVar[bool] = False  # targets are rows (n, k), not the ±1 labels of margin losses

    @staticmethod
    def _gaps(prediction):
        # u_ic = logsumexp_{c' ≠ c}(f_ic' − f_ic): the other classes' logits, the own class masked out.
        k = prediction.shape[-1]
        diff = prediction[..., None, :] - prediction[..., :, None]  # [i, c, c'] = f_ic' − f_ic
        masked = jnp.where(jnp.eye(k, dtype=bool), -jnp.inf, diff)
        return jax.nn.logsumexp(masked, axis=-1)

    @staticmethod
    def _log_targets(target):
        positive = target > 0
        return jnp.where(positive, jnp.log(jnp.where(positive, target, 1.0)), -jnp.inf)

    def per_sample(self, prediction, target):
        return jnp.sum(target * jax.nn.softplus(self._gaps(prediction)), axis=-1)

    def log_per_sample(self, prediction, target):
        u = self._gaps(prediction)
        # log softplus(u): direct for u > −30, else u − e^u/2 (log1p(e^u) = e^u(1 − e^u/2 + …)).
        small = u < -30.0
        direct = jnp.log(jax.nn.softplus(jnp.where(small, 0.0, u)))
        safe = jnp.where(small, u, -30.0)
        log_softplus = jnp.where(small, safe - 0.5 * jnp.exp(safe), direct)
        return jax.nn.logsumexp(self._log_targets(target) + log_softplus, axis=-1)

    def scaled_gradient(self, prediction, target, log_scale):
        log_p = jax.nn.log_softmax(prediction, axis=-1)
        # 1 − p_ic = Σ_{c'≠c} p_ic' = σ(u_ic), so log(1 − p_ic) = −softplus(−u_ic), exact where p_ic → 1.
        log_rest = -jax.nn.softplus(-self._gaps(prediction))
        rest_target = 1.0 - target
        positive = rest_target > 0
        log_rest_target = jnp.where(positive, jnp.log(jnp.where(positive, rest_target, 1.0)), -jnp.inf)
        up = jnp.exp(log_scale + log_p + log_rest_target)
        down = jnp.exp(log_scale + self._log_targets(target) + log_rest)
        return up - down


_LOSSES: dict[str, type[AbstractLoss]] = {
    "squared": Squared,
    "logistic": Logistic,
    "exponential": Exponential,
    "cross_entropy": SoftmaxCrossEntropy,
}


def loss_from_name(loss: "str | AbstractLoss") -> AbstractLoss:
    """The loss object for a name in `{"squared", "logistic", "exponential", "cross_entropy"}`, or `loss` itself."""
    if isinstance(loss, AbstractLoss):
        return loss
    if not isinstance(loss, str) or loss not in _LOSSES:
        raise ValueError(
            f"unknown loss {loss!r}; valid losses are {sorted(_LOSSES)} "
            "(or an instance of flowsim.AbstractLoss)"
        )
    return _LOSSES[loss]()
