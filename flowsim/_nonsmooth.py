"""Gradient flow of non-smooth (ReLU) models: the minimum-norm Clarke subgradient.

Gradient flow of a ReLU network is the differential inclusion θ' ∈ −∂L(θ); its solution follows
the minimum-norm element of the Clarke subdifferential (Davis, Drusvyatskiy, Kakade & Lee 2020;
Bolte & Pauwels 2021), which is what slides along a kink.
"""

import abc

import equinox as eqx
import jax


class AbstractNonsmoothModel(eqx.Module):
    """A model with kinks (ReLU-type activations) that can describe its Clarke subdifferential."""


def min_norm_scaled_gradient(field, theta, log_scale):
    """(e^{log_scale} ∂⁰L(θ), predictions): the minimum-norm element of the Clarke subdifferential."""
    preds, pullback = jax.vjp(field.predictions, theta)
    cotangent = field.problem.loss.scaled_gradient(preds, field.problem.y, log_scale)
    (grad,) = pullback(cotangent / field.problem.num_samples)
    return grad, preds
