"""General linear tensor networks f(x) = M(x)(v_1, …, v_L), M(x) = Σ_j x_j T[j]."""

from typing import final

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import is_traced
from ._base import AbstractLinearTensorNetwork, MarginGeometry
from ._validation import as_layer_list, as_real_array, check_input


class _FixedTensor:
    """A read-only numpy array held as static data: part of the model, never trained.

    Equality is by value and the hash is computed once, so two networks on the same tensor
    share a compiled solve and can be stacked for `vmap`.
    """

    __slots__ = ("_hash", "array")

    def __init__(self, array: np.ndarray):
        array = np.array(array, dtype=np.float64, copy=True)
        array.setflags(write=False)
        self.array = array
        self._hash = hash((array.shape, array.tobytes()))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, _FixedTensor)
            and self._hash == other._hash
            and self.array.shape == other.array.shape
            and bool(np.array_equal(self.array, other.array))
        )

    def __repr__(self) -> str:
        return f"tensor{self.array.shape}"


@final
class TensorNetwork(AbstractLinearTensorNetwork):
    """General linear tensor network (Yun, Krishnan & Mobahi, ICLR 2021):

        f(x) = M(x)(v_1, …, v_L) = Σ_{j,i_1..i_L} x_j T[j, i_1, …, i_L] v_1[i_1] ⋯ v_L[i_L],

    with M(x) = Σ_j x_j T[j] linear in x; β_j = T[j](v_1, …, v_L). The tensor T is fixed (held
    as static data, not a trained leaf); the vector layers v_l are θ.

    Special cases (same f, β and loss gradients, hence the same gradient flow):
    `Diagonal` — T[j, j, …, j] = 1; `Convolutional` — T[j, i_1, …, i_L] = 1 iff
    j + i_1 + … + i_{L−1} ≡ i_L (mod d); `FullyConnected` — layers vec(W_l) (row-major),
    T[a_0, (a_0', a_1), (b_1, a_2), …, b_{L−1}] = δ_{a_0 a_0'} δ_{a_1 b_1} δ_{a_2 b_2} ⋯.

    **Arguments:** `tensor` T, a concrete real array of shape (d, k_1, …, k_L); `layers`,
    a list [v_1, …, v_L] with v_l of shape (k_l,).

    Final (not meant to be subclassed).
    """

    layers: tuple[Float[Array, " _"], ...]
    fixed_tensor: _FixedTensor = eqx.field(static=True)

    def __init__(self, tensor, layers):
        if is_traced(tensor):
            raise TypeError(
                "TensorNetwork tensor must be a concrete array (it is a fixed part of the model, held as "
                "static data), got a traced value; build the network outside jit/vmap"
            )
        array = np.asarray(tensor)
        if array.dtype == np.bool_ or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise TypeError(f"TensorNetwork tensor must be a real numeric array, got dtype {array.dtype}")
        if array.ndim < 2:
            raise ValueError(
                f"TensorNetwork tensor must have shape (d, k_1, …, k_L) with L >= 1, got shape {array.shape}"
            )
        if array.size == 0:
            raise ValueError(f"TensorNetwork tensor is empty (shape {array.shape})")
        if not np.all(np.isfinite(array)):
            raise ValueError("TensorNetwork tensor contains non-finite values (NaN or Inf); all must be finite")
        layers = as_layer_list(layers, "TensorNetwork")
        if len(layers) != array.ndim - 1:
            raise ValueError(
                f"TensorNetwork tensor of shape {array.shape} has {array.ndim - 1} layer dimensions, so it needs "
                f"{array.ndim - 1} layers; got {len(layers)}"
            )
        checked = [as_real_array(v, f"TensorNetwork layer {l + 1}", 1) for l, v in enumerate(layers)]
        for l, v in enumerate(checked):
            if v.shape != (array.shape[l + 1],):
                raise ValueError(
                    f"TensorNetwork layer {l + 1} has shape {tuple(v.shape)} but tensor axis {l + 1} has length "
                    f"{array.shape[l + 1]}: the layer needs shape ({array.shape[l + 1]},)"
                )
        self.layers = tuple(checked)
        self.fixed_tensor = _FixedTensor(array)

    @property
    def tensor(self) -> Float[Array, "d ..."]:
        """T, shape (d, k_1, …, k_L)."""
        return jnp.asarray(self.fixed_tensor.array)

    @property
    def input_dim(self) -> int:
        return self.fixed_tensor.array.shape[0]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "TensorNetwork")
        m = jnp.tensordot(x, self.tensor, axes=1)  # M(x), shape (k_1, …, k_L)
        for v in reversed(self.layers):
            m = m @ v
        return m

    def beta(self) -> Float[Array, " d"]:
        b = self.tensor
        for v in reversed(self.layers):
            b = b @ v
        return b

    def margin_geometry(self) -> MarginGeometry:
        """ρ = β, S = I, and no built-in exponent (q = None): the implicit bias of a general tensor is not
        known in closed form, so `fs.analysis.limit_direction` needs `q` from the caller."""
        return MarginGeometry(q=None, transform=jnp.eye(self.input_dim), rho=self.beta(), layer_coordinates=None)
