"""Abstract linear tensor networks (Yun, Krishnan & Mobahi, ICLR 2021)."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Inexact


class AbstractLinearTensorNetwork(eqx.Module):
    """A linear tensor network f(x; v_1..v_L) = M(x)(v_1, …, v_L) with M(x) linear in x.

    Yun, Krishnan & Mobahi, "A unifying view on implicit bias in training linear neural
    networks", ICLR 2021. Because M(x) is linear in x, f(x) = ⟨x, β⟩ with the end-to-end
    predictor β = ``beta()``. ``__call__`` evaluates the network through its layers (the tensor
    contraction), so the gradient flow of a ``fs.Problem`` built on it is the flow over the
    layers, not over β. The layers are the inexact-array leaves, i.e. the trained θ.
    """

    layers: eqx.AbstractVar[tuple[Float[Array, "..."], ...]]

    @abc.abstractmethod
    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """f(x) for ONE input x of shape (d,)."""

    @abc.abstractmethod
    def beta(self) -> Float[Array, " d"]:
        """End-to-end linear predictor β with f(x) = ⟨x, β⟩."""

    @property
    def depth(self) -> int:
        """L, the number of layers."""
        return len(self.layers)

    @property
    @abc.abstractmethod
    def input_dim(self) -> int:
        """d, the input dimension."""


class AbstractOrthogonallyDecomposableNetwork(AbstractLinearTensorNetwork):
    """A linear tensor network that is orthogonally decomposable (ODN).

    M(x) = Σ_j (Sx)_j u_{1j} ⊗ … ⊗ u_{Lj} with U_l = [u_{l1} … u_{ld}] unitary, so that

        f(x) = ⟨Sx, ρ⟩ = Σ_j conj((Sx)_j) ρ_j,   ρ_j = Π_l a_{lj},   a_{lj} = (U_lᴴ v_l)_j,
        β = Sᴴ ρ  (= Sᵀρ when S is real).

    The network is a diagonal network in the transformed input space Sx (Yun et al. 2021,
    §4). Under the gradient flow, with g = S Xᵀ r and r_i = ∂L/∂f(x_i),

        da_{lj}/dt = −conj(Π_{k≠l} a_{kj}) g_j,   |a_{lj}|² − |a_{kj}|² conserved.
    """

    @property
    @abc.abstractmethod
    def transform(self) -> Inexact[Array, "d d"]:
        """S, the (d, d) input transform of the ODN view."""

    @abc.abstractmethod
    def odn_coordinates(self) -> Inexact[Array, "L d"]:
        """a, shape (L, d), a_{lj} = (U_lᴴ v_l)_j, so that ρ_j = Π_l a_{lj}."""

    def rho(self) -> Inexact[Array, " d"]:
        """ρ, the coordinates in the transformed space: ρ_j = Π_l a_{lj}, f(x) = ⟨Sx, ρ⟩."""
        return jnp.prod(self.odn_coordinates(), axis=0)
