"""Linear circular convolutional networks f(x) = ⟨x ∗ v_1 ∗ … ∗ v_{L−1}, v_L⟩."""

import abc
from typing import final

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._base import AbstractLinearTensorNetwork, AbstractOrthogonallyDecomposableNetwork, MarginGeometry
from ._validation import (
    as_layer_list,
    as_real_array,
    check_depth,
    check_direction,
    check_init_args,
    check_input,
    check_positive_int,
)


def circular_convolution(h: Float[Array, " d"], v: Float[Array, " k"]) -> Float[Array, " d"]:
    """(h ∗ v)_i = Σ_{m<k} v_m h_{(i−m) mod d}: circular convolution with the filter v zero-padded
    to length d at taps k, …, d−1."""
    d, k = h.shape[0], v.shape[0]
    index = (np.arange(d)[None, :] - np.arange(k)[:, None]) % d
    return v @ h[index]


def circular_correlation(u: Float[Array, " d"], v: Float[Array, " k"]) -> Float[Array, " d"]:
    """(C(v)ᵀu)_j = Σ_{m<k} v_m u_{(j+m) mod d}, the adjoint of h ↦ h ∗ v."""
    d, k = u.shape[0], v.shape[0]
    index = (np.arange(d)[None, :] + np.arange(k)[:, None]) % d
    return v @ u[index]


def unitary_dft(d: int) -> Complex[Array, "d d"]:
    """F_u[k, j] = e^{−2πi kj/d}/√d (numpy.fft.fft(·, norm="ortho") as a matrix)."""
    kj = np.outer(np.arange(d), np.arange(d)) % d
    return jnp.asarray(np.exp(-2j * np.pi * kj / d) / np.sqrt(d))


def check_kernel_size(kernel_size, d: int) -> int:
    """The filter length k, an integer in [1, d]."""
    kernel_size = check_positive_int(kernel_size, "kernel_size", 1)
    if kernel_size > d:
        raise ValueError(f"kernel_size must be between 1 and d={d}, got kernel_size={kernel_size}")
    return kernel_size


def _checked_layers(layers, kernel_size) -> tuple[tuple, int]:
    """(validated layers, k): L − 1 filters of one length k ≤ d and a last layer of length d."""
    layers = as_layer_list(layers, "Convolutional")
    depth = check_depth(len(layers), "Convolutional", minimum=2)
    checked = [as_real_array(v, f"Convolutional filter {l + 1}", 1) for l, v in enumerate(layers[:-1])]
    checked.append(as_real_array(layers[-1], f"Convolutional last layer {depth}", 1))
    d = checked[-1].shape[0]
    if kernel_size is None:
        kernel_size = checked[0].shape[0]
        if kernel_size > d:
            raise ValueError(
                f"Convolutional filter 1 has length {kernel_size} but the last layer has length d={d}; "
                f"filters must have length between 1 and d={d}"
            )
    else:
        kernel_size = check_kernel_size(kernel_size, d)
    for l, v in enumerate(checked[:-1]):
        if v.shape != (kernel_size,):
            raise ValueError(
                f"Convolutional filter {l + 1} has shape {tuple(v.shape)} but kernel_size={kernel_size} "
                f"needs shape ({kernel_size},)"
            )
    return tuple(checked), kernel_size


def _beta(layers):
    """β = C(v_1)ᵀ⋯C(v_{L−1})ᵀ v_L."""
    beta = layers[-1]
    for v in reversed(layers[:-1]):
        beta = circular_correlation(beta, v)
    return beta


@final
class FullLengthConvolutional(AbstractOrthogonallyDecomposableNetwork):
    """Depth-L linear circular convolutional network with full-length filters (k = d), an ODN
    (Yun, Krishnan & Mobahi, ICLR 2021):

        f(x) = ⟨x ∗ v_1 ∗ … ∗ v_{L−1}, v_L⟩,   (h ∗ v)_i = Σ_m v_m h_{(i−m) mod d}.

    **Convention:** ∗ is circular *convolution* (not correlation), indices mod d. The tensor is
    M(x)[i_1, …, i_L] = x_j for j ≡ i_L − i_1 − … − i_{L−1} (mod d). β = C(v_1)ᵀ⋯C(v_{L−1})ᵀ v_L,
    i.e. β_j = Σ_i c_{i−j} v_L[i] with c = v_1 ∗ … ∗ v_{L−1} (a circular correlation).

    **ODN view.** With the unitary DFT F_u (`numpy.fft.fft(·, norm="ortho")`): a_l = conj(F_u v_l)
    for l < L, a_L = F_u v_L (U_l = F_u, U_L = F_uᴴ), and

        S = d^{(L−1)/2} F_u,   ρ = Π_l a_l = F_u β / d^{(L−1)/2},
        f(x) = ⟨Sx, ρ⟩ = Σ_j conj((Sx)_j) ρ_j,   β = Sᴴρ.

    S is a *scaled* unitary DFT: ‖M(x)‖_F = d^{(L−1)/2}‖x‖ forces the factor when the U_l are
    unitary. The coordinates are complex (Hermitian-symmetric, a_{l,d−j} = conj(a_{lj})): the
    flow is a complex diagonal network, da_{lj}/dt = −conj(Π_{k≠l} a_{kj}) (S Xᵀ r)_j, which
    conserves |a_{lj}|² − |a_{kj}|² but, unlike the real case, is not a function of
    z_j = −∫ g_j alone (ρ_j's phase moves). Only frequencies j = 0 and j = d/2 are real.

    Build it with `fs.networks.Convolutional` (which picks this class when k = d).
    **Arguments:** `layers` = [v_1, …, v_L], L >= 2, every layer of length d. Final (not meant
    to be subclassed).
    """

    layers: tuple[Float[Array, " d"], ...]

    def __init__(self, layers):
        layers, kernel_size = _checked_layers(layers, None)
        if kernel_size != layers[-1].shape[0]:
            raise ValueError(
                f"FullLengthConvolutional needs filters of length d={layers[-1].shape[0]}, got kernel_size="
                f"{kernel_size}; use fs.networks.Convolutional, which builds a ShortKernelConvolutional for k < d"
            )
        self.layers = layers

    @property
    def input_dim(self) -> int:
        return self.layers[-1].shape[-1]

    @property
    def kernel_size(self) -> int:
        """k = d."""
        return self.input_dim

    @property
    def full_length(self) -> bool:
        """True: the filters have length d (the orthogonally decomposable case)."""
        return True

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "Convolutional")
        # f(x) = ⟨x, β⟩ with β formed once from the layers (not one convolution chain per sample).
        return jnp.dot(x, _beta(self.layers))

    def beta(self) -> Float[Array, " d"]:
        return _beta(self.layers)

    @property
    def transform(self) -> Complex[Array, "d d"]:
        """S = d^{(L−1)/2} F_u, F_u[k, j] = e^{−2πi kj/d}/√d (complex, a scaled unitary DFT)."""
        return unitary_dft(self.input_dim) * self.input_dim ** ((self.depth - 1) / 2)

    def odn_coordinates(self) -> Complex[Array, "L d"]:
        """a, complex (L, d): a_l = conj(F_u v_l) for l < L, a_L = F_u v_L; ρ_j = Π_l a_{lj}.

        Complex: no real per-coordinate representation exists for frequencies other than
        0 and d/2. A reference must integrate the complex per-coordinate ODE (see the class
        docstring) or, for classification, use the complex ℓ_{2/L} max-margin problem over ρ.
        """
        filters = jnp.stack(self.layers[:-1])
        a_filters = jnp.conj(jnp.fft.fft(filters, axis=-1, norm="ortho"))
        a_last = jnp.fft.fft(self.layers[-1], norm="ortho")
        return jnp.concatenate([a_filters, a_last[None, :]], axis=0)


@final
class ShortKernelConvolutional(AbstractLinearTensorNetwork):
    """Depth-L linear circular convolutional network with filters shorter than the input (k < d):

        f(x) = ⟨x ∗ v_1 ∗ … ∗ v_{L−1}, v_L⟩,

    the filters zero-padded to length d at taps k, …, d−1 (conventions as in
    `FullLengthConvolutional`). A short kernel breaks orthogonal decomposability (Yun, Krishnan &
    Mobahi, ICLR 2021), so this class is not an ODN: it has no `rho`/`transform`, and its
    `margin_geometry` carries no built-in exponent (q = None).

    Build it with `fs.networks.Convolutional(layers, kernel_size=k)`.
    **Arguments:** `layers` = [v_1, …, v_{L−1}, v_L], L >= 2: L−1 filters of one length k < d and
    the last layer of length d; `kernel_size` = k (default: the filters' length). Final (not
    meant to be subclassed).
    """

    layers: tuple[Float[Array, " _"], ...]
    kernel_size: int = eqx.field(static=True)

    def __init__(self, layers, kernel_size: int | None = None):
        layers, kernel_size = _checked_layers(layers, kernel_size)
        if kernel_size == layers[-1].shape[0]:
            raise ValueError(
                f"ShortKernelConvolutional needs filters shorter than d={kernel_size}; full-length filters make "
                "an orthogonally decomposable network: use fs.networks.Convolutional (FullLengthConvolutional)"
            )
        self.layers = layers
        self.kernel_size = kernel_size

    @property
    def input_dim(self) -> int:
        return self.layers[-1].shape[-1]

    @property
    def full_length(self) -> bool:
        """False: the filters are shorter than d."""
        return False

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "Convolutional")
        # f(x) = ⟨x, β⟩ with β formed once from the layers (not one convolution chain per sample).
        return jnp.dot(x, _beta(self.layers))

    def beta(self) -> Float[Array, " d"]:
        return _beta(self.layers)

    def margin_geometry(self) -> MarginGeometry:
        """ρ = β, S = I, q = None (no built-in theory: pass q to `fs.analysis.limit_direction`)."""
        return MarginGeometry(q=None, transform=jnp.eye(self.input_dim), rho=self.beta(), layer_coordinates=None)


class Convolutional(abc.ABC):  # noqa: B024 - a constructor with two registered virtual subclasses, not an interface
    """Linear circular convolutional network f(x) = ⟨x ∗ v_1 ∗ … ∗ v_{L−1}, v_L⟩ (Yun, Krishnan &
    Mobahi, ICLR 2021): `Convolutional(layers, kernel_size=None)` builds a
    `FullLengthConvolutional` (filters of length k = d: an orthogonally decomposable network with
    `rho`/`transform`) or a `ShortKernelConvolutional` (k < d: not orthogonally decomposable).
    Both are instances of `Convolutional` (`isinstance` holds); neither subclasses the other.

    **Arguments:** `layers` = [v_1, …, v_{L−1}, v_L], L >= 2: L−1 filters of one length k and
    the last layer of length d; `kernel_size` = k (default: the filters' length).
    """

    def __new__(cls, layers, kernel_size: int | None = None):
        layers, kernel_size = _checked_layers(layers, kernel_size)
        if kernel_size == layers[-1].shape[0]:
            return FullLengthConvolutional(layers)
        return ShortKernelConvolutional(layers, kernel_size)

    @staticmethod
    def init(
        d: int,
        depth: int,
        scale: float = 1.0,
        shape: str = "balanced",
        key: PRNGKeyArray | None = None,
        direction: Float[Array, " k"] | None = None,
        kernel_size: int | None = None,
    ) -> "FullLengthConvolutional | ShortKernelConvolutional":
        """Initial convolutional network with filters of length k = `kernel_size` (default d),
        α = `scale` and u = `direction` of length k (default e_0, the identity filter, whose
        unitary DFT is flat: a_{lj} = α/√d for every l, j at full length):

        - `"balanced"`: v_l = α·u for l < L and v_L = α·u zero-padded to length d
          (|a_{lj}| equal across layers at full length).
        - `"last_zero"`: as balanced but v_L = 0 (sign-free).
        - `"random"`: v_l = α·ξ_l with ξ_l ~ N(0, I) independent (length k, last d).
        """
        d = check_positive_int(d, "input dimension d")
        depth = check_depth(depth, "Convolutional", minimum=2)
        k = d if kernel_size is None else check_kernel_size(kernel_size, d)
        scale = check_init_args(shape, scale, key, direction, "Convolutional")
        if shape == "random":
            keys = jr.split(key, depth)
            layers = [scale * jr.normal(keys[l], (k,), dtype=jnp.float64) for l in range(depth - 1)]
            layers.append(scale * jr.normal(keys[-1], (d,), dtype=jnp.float64))
            return Convolutional(layers, kernel_size=k)
        u = check_direction(direction, k, "Convolutional", jnp.zeros(k).at[0].set(1.0))
        layers = [scale * u for _ in range(depth - 1)]
        layers.append(jnp.zeros(d) if shape == "last_zero" else jnp.zeros(d).at[:k].set(scale * u))
        return Convolutional(layers, kernel_size=k)


Convolutional.register(FullLengthConvolutional)
Convolutional.register(ShortKernelConvolutional)
