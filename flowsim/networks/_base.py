"""Abstract linear tensor networks (Yun, Krishnan & Mobahi, ICLR 2021)."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Inexact


class MarginGeometry(eqx.Module):
    """How the limit of a linear tensor network is posed as a max-margin problem.

    For separable data and an exponential-tailed loss, the network's coordinates ρ converge in
    direction to a KKT point of

        min_ρ Σ_j |ρ_j|^q   s.t.   y_i Re⟨S x_i, ρ⟩ ≥ 1

    (Yun, Krishnan & Mobahi, ICLR 2021 for orthogonally decomposable networks, q = 2/L; Ji &
    Telgarsky 2020 and Gunasekar et al. 2018 for fully connected ones, q = 2 and ρ = β; Lyu & Li
    2020 for homogeneous models in general).

    **Fields:**

    - `q`: the exponent, or None when no theory is built in (general tensor networks, short
      convolutions): `fs.analysis.limit_direction` then needs `q` from the caller.
    - `transform`: S, shape (m, d) (the identity when ρ = β), real or complex.
    - `rho`: the coordinates ρ, shape (m,), with f(x) = Re⟨S x, ρ⟩.
    - `layer_coordinates`: a, shape (L, m) with ρ_j = Π_l a_lj, for orthogonally decomposable
      networks (their conservation laws |a_lj|² − |a_kj|² = const lock signs and freeze
      coordinates); None otherwise.
    """

    q: float | None = eqx.field(static=True)
    transform: Inexact[Array, "m d"]
    rho: Inexact[Array, " m"]
    layer_coordinates: Inexact[Array, "L m"] | None


class AbstractLinearTensorNetwork(eqx.Module):
    """A linear tensor network f(x; v_1..v_L) = M(x)(v_1, …, v_L) with M(x) linear in x.

    Yun, Krishnan & Mobahi, "A unifying view on implicit bias in training linear neural
    networks", ICLR 2021. Because M(x) is linear in x, f(x) = ⟨x, β⟩ with the end-to-end
    predictor β = `beta()`. `__call__` evaluates the network through its layers (the tensor
    contraction), so the gradient flow of a `fs.Problem` built on it is the flow over the
    layers, not over β. The layers are the inexact-array leaves, i.e. the trained θ.

    Concrete subclasses are final (Equinox's abstract/final pattern): they implement
    `__call__`, `beta`, `input_dim` and `margin_geometry` and are not subclassed again.
    """

    layers: eqx.AbstractVar[tuple[Float[Array, "..."], ...]]

    @abc.abstractmethod
    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """f(x) for ONE input x of shape (d,)."""

    @abc.abstractmethod
    def beta(self) -> Float[Array, " d"]:
        """End-to-end linear predictor β with f(x) = ⟨x, β⟩."""

    @abc.abstractmethod
    def margin_geometry(self) -> MarginGeometry:
        """The max-margin problem the network's limit solves: q, S, ρ (see `MarginGeometry`)."""

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

    Its limit on separable data is a KKT point of min ‖ρ‖_{2/L} s.t. margins ≥ 1 (q = 2/L).
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

    def margin_geometry(self) -> MarginGeometry:
        """q = 2/L, S = `transform`, ρ = `rho()`, a = `odn_coordinates()`."""
        a = self.odn_coordinates()
        return MarginGeometry(q=2.0 / self.depth, transform=self.transform, rho=jnp.prod(a, axis=0),
                              layer_coordinates=a)
