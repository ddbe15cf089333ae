"""Signed deep diagonal networks β = u₊^D − u₋^D (Woodworth et al. 2020; Moroshko et al. 2020)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import as_positive_scalar
from ._base import AbstractLinearTensorNetwork, MarginGeometry
from ._validation import as_layer_list, as_real_array, check_depth, check_input, check_positive_int


class SignedDiagonal(AbstractLinearTensorNetwork):
    """Depth-D diagonal network with a positive and a negative branch:

        f(x) = Σ_j x_j (u₊[j]^D − u₋[j]^D),   β = u₊^D − u₋^D   (elementwise powers).

    The model of Woodworth et al., "Kernel and rich regimes in overparametrized models"
    (COLT 2020) and Moroshko, Gunasekar, Woodworth, Lee, Srebro & Soudry, "Implicit bias in
    deep linear classification: initialization scale vs training accuracy" (NeurIPS 2020):
    D-homogeneous in θ = (u₊, u₋), sign-free (β_j can take either sign although each branch
    keeps its own), and with u±(0) = α·1 it starts at β = 0. Each branch is a depth-D diagonal
    network whose D layers are one shared vector; a D-layer branch with D independent
    layers that start equal stays equal and follows the same path at 1/D of the speed.

    Under the gradient flow of the summed exponential loss Σ_i exp(−y_i⟨x_i, β⟩), with
    ν(t) = ∫₀ᵗ w, w_i = exp(−(X̃β)_i), X̃ rows y_i x_i and z = X̃ᵀν:

    - D = 2: u± = α exp(±2z), so β = 2α² sinh(4z);
    - D > 2: u±^{2−D} = α^{2−D} ∓ D(D−2) z, so β = α^D h_D(D(D−2) α^{D−2} z) with
      h_D(s) = (1−s)^{−D/(D−2)} − (1+s)^{−D/(D−2)}

    (`fs.analysis.reduced_scale_flow` integrates the n-dimensional ODE for ν).

    **Arguments:**

    - `layers`: `[u_plus, u_minus]`, two vectors of one shape (d,).
    - `depth`: D ≥ 2, the power (the depth of each branch).
    """

    layers: tuple[Float[Array, " d"], Float[Array, " d"]]
    power: int = eqx.field(static=True)

    def __init__(self, layers, depth: int):
        layers = as_layer_list(layers, "SignedDiagonal")
        if len(layers) != 2:
            raise ValueError(
                f"SignedDiagonal takes exactly two layers [u_plus, u_minus], got {len(layers)} layer(s)"
            )
        self.power = check_depth(depth, "SignedDiagonal", minimum=2)
        u_plus = as_real_array(layers[0], "SignedDiagonal layer u_plus", 1)
        u_minus = as_real_array(layers[1], "SignedDiagonal layer u_minus", 1)
        if u_plus.shape != u_minus.shape:
            raise ValueError(
                f"SignedDiagonal layers must have one shape: u_plus has shape {tuple(u_plus.shape)}, "
                f"u_minus has shape {tuple(u_minus.shape)}"
            )
        self.layers = (u_plus, u_minus)

    @property
    def depth(self) -> int:
        """D, the power of each branch (the number of layers of each branch)."""
        return self.power

    @property
    def input_dim(self) -> int:
        return self.layers[0].shape[-1]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "SignedDiagonal")
        u_plus, u_minus = self.layers
        h_plus, h_minus = x, x
        for _ in range(self.power):  # D layers of each branch, one shared vector per branch
            h_plus = h_plus * u_plus
            h_minus = h_minus * u_minus
        return jnp.sum(h_plus) - jnp.sum(h_minus)

    def beta(self) -> Float[Array, " d"]:
        """β = u₊^D − u₋^D."""
        u_plus, u_minus = self.layers
        return u_plus**self.power - u_minus**self.power

    def margin_geometry(self) -> MarginGeometry:
        """q = 2/D, S = I, ρ = β; no layer coordinates (β_j = u₊[j]^D − u₋[j]^D is not a product).

        The model is D-homogeneous; its gradient-flow limit on separable data is a KKT point of the ℓ2
        max-margin problem in θ = (u₊, u₋) (Lyu & Li, ICLR 2020), and min ‖θ‖² over the θ with a given β is
        Σ_j |β_j|^{2/D} (one branch of each coordinate is zero), i.e. min ‖β‖_{2/D} s.t. margins ≥ 1.
        """
        d = self.input_dim
        return MarginGeometry(q=2.0 / self.power, transform=jnp.eye(d), rho=self.beta(), layer_coordinates=None)

    @classmethod
    def init(cls, d: int, depth: int, scale=1.0) -> "SignedDiagonal":
        """u₊(0) = u₋(0) = α·1 with α = `scale` > 0, so β(0) = 0.

        `scale` may be a traced value (e.g. under `eqx.filter_vmap` over α); a concrete one
        must be positive and finite.
        """
        d = check_positive_int(d, "input dimension d")
        depth = check_depth(depth, "SignedDiagonal", minimum=2)
        scale = as_positive_scalar("SignedDiagonal init scale α", scale)
        u = scale * jnp.ones(d, dtype=jnp.float64)
        return cls([u, u], depth)

