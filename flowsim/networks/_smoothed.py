"""A ReLU network with its kinks smoothed: φ_ε(z) = γz + (1 − γ)·ε·softplus(z/ε).

The alternative to the minimum-norm Clarke subgradient that issue 8 allows: a smooth model whose
gradient flow tends to the differential inclusion's solution as ε → 0 (the sliding mode becomes a
slow manifold of a stiff system; |φ_ε − φ| ≤ (1 − γ)ε·log 2). `fs.smoothed_limit` runs a few
widths and extrapolates to ε = 0 (Richardson); benchmarks/relu.py measures the error O(ε) on a
hand-solved sliding flow and on a 2-D MLP where the min-norm field chatters.
"""

import equinox as eqx
import jax
from jaxtyping import Array, Float

from .._checks import as_positive_float
from .._nonsmooth import AbstractNonsmoothModel


def smoothed_leaky_relu(z, leak: float, width: float):
    """φ_ε(z) = γz + (1 − γ)·ε·softplus(z/ε): smooth, → max(z, γz) as ε → 0, within (1 − γ)ε·log 2."""
    return leak * z + (1.0 - leak) * width * jax.nn.softplus(z / width)


def smoothed(network, width: float) -> "Smoothed":
    """`network.smoothed(ε)`: this network with φ replaced by φ_ε(z) = γz + (1 − γ)ε·softplus(z/ε),
    ε = `width` (`fs.networks.Smoothed`): a smooth model, for `fs.smoothed_limit`."""
    return Smoothed(network, width)


class Smoothed(eqx.Module):
    """`network` (a ReLU network: `fs.networks.TwoLayer`, `MLP`) with every activation
    φ(z) = max(z, γz) replaced by φ_ε(z) = γz + (1 − γ)·ε·softplus(z/ε), ε = `width`.

    A smooth model (not an `AbstractNonsmoothModel`): its flow is the ordinary gradient flow, stiff
    near where the ReLU flow slides along a kink (rate ~ 1/ε). Its leaves are the network's, in the
    same order, so a `trainable` choice carries over (`fs.smoothed_limit` does that).

    **Arguments:** `network` (an `AbstractNonsmoothModel` that implements `apply`), `width`
    (ε > 0, a concrete number: each width is its own compiled program).
    """

    network: AbstractNonsmoothModel
    width: float = eqx.field(static=True)

    def __init__(self, network, width):
        if not isinstance(network, AbstractNonsmoothModel):
            raise TypeError(
                f"Smoothed needs a ReLU network (an fs.AbstractNonsmoothModel such as fs.networks.MLP), "
                f"got {type(network).__name__}"
            )
        if type(network).apply is AbstractNonsmoothModel.apply:
            raise TypeError(
                f"{type(network).__name__} does not implement apply(x, activation), which Smoothed needs "
                "to evaluate it with the smoothed activation"
            )
        self.network = network
        self.width = as_positive_float("Smoothed width ε", width)

    @property
    def leak(self) -> float:
        return self.network.leak

    def __call__(self, x: Float[Array, " d"]) -> Array:
        return self.network.apply(x, lambda z: smoothed_leaky_relu(z, self.network.leak, self.width))

    def first_layer_filter(self):
        """The network's `first_layer_filter` (train W, keep a fixed), for the smoothed tree."""
        spec = jax.tree_util.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda model: model.network, spec, self.network.first_layer_filter())

