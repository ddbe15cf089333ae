"""Fully connected linear networks f(x) = xᵀ W_1 ⋯ W_{L−1} w_L."""

from collections.abc import Sequence
from typing import final

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractLinearTensorNetwork, MarginGeometry
from ._validation import (
    as_layer_list,
    as_real_array,
    check_depth,
    check_direction,
    check_init_args,
    check_input,
    check_positive_int,
    is_concrete,
)


@final
class FullyConnected(AbstractLinearTensorNetwork):
    """Depth-L fully connected linear network f(x) = xᵀ W_1 W_2 ⋯ W_{L−1} w_L; β = W_1 ⋯ W_{L−1} w_L.

    Shapes: W_1 (d, h_1), W_l (h_{l−1}, h_l), w_L (h_{L−1},); depth 1 is the linear model [w].
    As a linear tensor network (Yun, Krishnan & Mobahi, ICLR 2021) its layers are the vectorised
    matrices vec(W_l) (row-major), with M(x)[(a_0,a_1), (b_1,a_2), …, b_{L−1}] =
    x_{a_0} δ_{a_1 b_1} δ_{a_2 b_2} ⋯; vectorising is an isometry, so the gradient flows agree.
    The tensor is not orthogonally decomposable in general (no `rho`/`transform`); for
    separable classification with exponential-tailed losses β/‖β‖ tends to the ℓ2 max-margin
    direction at every depth (Ji & Telgarsky 2019/2020; Gunasekar et al. 2018).

    **Arguments:** `layers`, a list [W_1, …, W_{L−1}, w_L] of matrices and a final vector.

    Final (not meant to be subclassed).
    """

    layers: tuple[Float[Array, "..."], ...]

    def __init__(self, layers):
        layers = as_layer_list(layers, "FullyConnected")
        depth = check_depth(len(layers), "FullyConnected")
        checked = [as_real_array(W, f"FullyConnected layer {l + 1}", 2) for l, W in enumerate(layers[:-1])]
        checked.append(as_real_array(layers[-1], f"FullyConnected last layer {depth} (w_L)", 1))
        for l in range(1, depth):
            rows = checked[l].shape[0]
            cols = checked[l - 1].shape[1]
            if rows != cols:
                raise ValueError(
                    f"FullyConnected layer {l + 1} has shape {tuple(checked[l].shape)} but layer {l} has shape "
                    f"{tuple(checked[l - 1].shape)}: layer {l + 1} needs {cols} rows (the width of layer {l})"
                )
        self.layers = tuple(checked)

    @property
    def input_dim(self) -> int:
        return self.layers[0].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        """(h_1, …, h_{L−1}), the hidden widths."""
        return tuple(W.shape[1] for W in self.layers[:-1])

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "FullyConnected")
        h = x
        for W in self.layers[:-1]:
            h = h @ W
        return jnp.dot(h, self.layers[-1])

    def beta(self) -> Float[Array, " d"]:
        beta = self.layers[-1]
        for W in reversed(self.layers[:-1]):
            beta = W @ beta
        return beta

    def margin_geometry(self) -> MarginGeometry:
        """q = 2 and ρ = β, S = I: the ℓ2 max-margin (SVM) direction at every depth (Ji & Telgarsky 2020)."""
        return MarginGeometry(q=2.0, transform=jnp.eye(self.input_dim), rho=self.beta(), layer_coordinates=None)

    @classmethod
    def init(
        cls,
        d: int,
        depth: int,
        width: int | Sequence[int] | None = None,
        scale: float = 1.0,
        shape: str = "balanced",
        key: PRNGKeyArray | None = None,
        direction: Float[Array, " d"] | None = None,
    ) -> "FullyConnected":
        """Initial fully connected network; `width` is one hidden width for all layers or a
        list (h_1, …, h_{L−1}) (default d). With α = `scale`, û = u/‖u‖ (u = `direction`,
        default all ones) and e_1 the first unit vector:

        - `"balanced"`: W_1 = α û e_1ᵀ, W_l = α e_1 e_1ᵀ, w_L = α e_1. Exactly balanced
          (W_lᵀW_l = W_{l+1}W_{l+1}ᵀ) and rank one, β = α^L û; units other than the first stay
          zero along the flow (an invariant set).
        - `"last_zero"`: as balanced but w_L = 0.
        - `"random"`: every entry α·N(0, 1), independent (no fan-in scaling).
        """
        d = check_positive_int(d, "input dimension d")
        depth = check_depth(depth, "FullyConnected")
        scale = check_init_args(shape, scale, key, direction, "FullyConnected")
        if width is None:
            widths = [d] * (depth - 1)
        elif isinstance(width, (int, np.integer)) and not isinstance(width, bool):
            widths = [check_positive_int(width, "FullyConnected width")] * (depth - 1)
        else:
            widths = [check_positive_int(h, "FullyConnected width") for h in width]
            if len(widths) != depth - 1:
                raise ValueError(
                    f"FullyConnected of depth {depth} needs {depth - 1} hidden widths, got {len(widths)}: {widths}"
                )
        dims = [d, *widths]
        if shape == "random":
            keys = jr.split(key, depth)
            layers = [scale * jr.normal(keys[l], (dims[l], dims[l + 1]), dtype=jnp.float64) for l in range(depth - 1)]
            layers.append(scale * jr.normal(keys[-1], (dims[-1],), dtype=jnp.float64))
            return cls(layers)
        u = check_direction(direction, d, "FullyConnected", jnp.ones(d))
        norm = jnp.linalg.norm(u)
        if is_concrete(norm) and float(norm) == 0.0:
            raise ValueError("FullyConnected init direction must be non-zero")
        u_hat = u / norm

        def e1(n):
            return jnp.zeros(n).at[0].set(1.0)

        if depth == 1:
            layers = [scale * u_hat]
        else:
            layers = [scale * jnp.outer(u_hat, e1(dims[1]))]
            layers += [scale * jnp.outer(e1(dims[l]), e1(dims[l + 1])) for l in range(1, depth - 1)]
            layers.append(scale * e1(dims[-1]))
        if shape == "last_zero":
            layers[-1] = jnp.zeros_like(layers[-1])
        return cls(layers)
