"""Diagonal linear networks β = v_1 ⊙ … ⊙ v_L."""

from typing import final

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractOrthogonallyDecomposableNetwork
from ._validation import (
    as_layer_list,
    as_real_array,
    check_depth,
    check_direction,
    check_init_args,
    check_input,
    check_positive_int,
)


@final
class Diagonal(AbstractOrthogonallyDecomposableNetwork):
    """Depth-L diagonal linear network f(x) = Σ_j x_j v_1[j] ⋯ v_L[j]; β = v_1 ⊙ … ⊙ v_L.

    The linear tensor network with M(x)[j, …, j] = x_j and zero elsewhere (Yun, Krishnan &
    Mobahi, ICLR 2021). It is its own ODN view: S = I, U_l = I, a_l = v_l, ρ = β.

    **Arguments:** `layers`, a list [v_1, …, v_L] of vectors of one shape (d,), L >= 1.

    Final (not meant to be subclassed).
    """

    layers: tuple[Float[Array, " d"], ...]

    def __init__(self, layers):
        layers = as_layer_list(layers, "Diagonal")
        check_depth(len(layers), "Diagonal")
        layers = [as_real_array(v, f"Diagonal layer {l + 1}", 1) for l, v in enumerate(layers)]
        d = layers[0].shape[0]
        for l, v in enumerate(layers):
            if v.shape != (d,):
                raise ValueError(
                    f"Diagonal layers must all have shape ({d},) (that of layer 1); layer {l + 1} has shape "
                    f"{tuple(v.shape)}"
                )
        self.layers = tuple(layers)

    @property
    def input_dim(self) -> int:
        return self.layers[0].shape[-1]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "Diagonal")
        # ⟨x, v_1 ⊙ … ⊙ v_L⟩: the same multilinear map of the layers as the tensor contraction, with β
        # formed once rather than per sample (under vmap this is one matrix–vector product X β).
        return jnp.dot(x, self.beta())

    def beta(self) -> Float[Array, " d"]:
        beta = self.layers[0]
        for v in self.layers[1:]:
            beta = beta * v
        return beta

    @property
    def transform(self) -> Float[Array, "d d"]:
        """S = I."""
        return jnp.eye(self.input_dim)

    def odn_coordinates(self) -> Float[Array, "L d"]:
        """a_{lj} = v_l[j] (U_l = I), real, shape (L, d)."""
        return jnp.stack(self.layers)

    @classmethod
    def init(
        cls,
        d: int,
        depth: int,
        scale: float = 1.0,
        shape: str = "balanced",
        key: PRNGKeyArray | None = None,
        direction: Float[Array, " d"] | None = None,
    ) -> "Diagonal":
        """Initial diagonal network, with α = `scale` and u = `direction` (default all ones):

        - `"balanced"`: v_l = α·u for every l, so β = α^L u^L (elementwise power); same-sign
          balanced layers keep a_1 = … = a_L, so ρ keeps the sign of u^L forever.
        - `"last_zero"`: v_l = α·u for l < L, v_L = 0 (β = 0, sign-free).
        - `"random"`: v_l = α·ξ_l, ξ_l ~ N(0, I_d) independent (`key` split into L keys).
        """
        d = check_positive_int(d, "input dimension d")
        depth = check_depth(depth, "Diagonal")
        scale = check_init_args(shape, scale, key, direction, "Diagonal")
        u = check_direction(direction, d, "Diagonal", jnp.ones(d))
        if shape == "random":
            keys = jr.split(key, depth)
            return cls([scale * jr.normal(k, (d,), dtype=jnp.float64) for k in keys])
        layers = [scale * u for _ in range(depth)]
        if shape == "last_zero":
            layers[-1] = jnp.zeros(d)
        return cls(layers)
