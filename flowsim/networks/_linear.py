"""The linear model f(x) = ⟨w, x⟩, a depth-1 linear tensor network."""

from typing import final

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractOrthogonallyDecomposableNetwork
from ._validation import as_real_array, check_direction, check_init_args, check_input, check_positive_int


@final
class Linear(AbstractOrthogonallyDecomposableNetwork):
    """Linear model f(x) = ⟨w, x⟩; β = w.

    The depth-1 linear tensor network (M(x) = x). As an ODN: S = I, ρ = w, a = w[None].

    **Arguments:** `w`, the weight vector, shape (d,).

    Final (not meant to be subclassed).
    """

    layers: tuple[Float[Array, " d"]]

    def __init__(self, w: Float[Array, " d"]):
        self.layers = (as_real_array(w, "Linear weight w", 1),)

    @property
    def w(self) -> Float[Array, " d"]:
        return self.layers[0]

    @property
    def input_dim(self) -> int:
        return self.layers[0].shape[-1]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "Linear")
        return jnp.dot(x, self.w)

    def beta(self) -> Float[Array, " d"]:
        return self.w

    @property
    def transform(self) -> Float[Array, "d d"]:
        return jnp.eye(self.input_dim)

    def odn_coordinates(self) -> Float[Array, "1 d"]:
        return self.w[None, :]

    @classmethod
    def init(
        cls,
        d: int,
        scale: float = 1.0,
        shape: str = "balanced",
        key: PRNGKeyArray | None = None,
        direction: Float[Array, " d"] | None = None,
    ) -> "Linear":
        """Initial linear model.

        - `"balanced"`: w = α·u (u = `direction`, default the all-ones vector).
        - `"last_zero"`: w = 0 (the only layer is the last one).
        - `"random"`: w = α·ξ, ξ ~ N(0, I_d) from `key`.
        """
        d = check_positive_int(d, "input dimension d")
        scale = check_init_args(shape, scale, key, direction, "Linear")
        u = check_direction(direction, d, "Linear", jnp.ones(d))
        if shape == "balanced":
            return cls(scale * u)
        if shape == "last_zero":
            return cls(jnp.zeros(d))
        return cls(scale * jr.normal(key, (d,), dtype=jnp.float64))
