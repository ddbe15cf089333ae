"""ReLU networks without biases, as non-smooth models (the flow is the minimum-norm Clarke subgradient).

- `TwoLayer`: f(x) = Σ_j a_j φ(⟨w_j, x⟩), φ(z) = max(z, γz): the leaky-ReLU network of Frei,
  Vardi, Bartlett, Srebro & Hu, "Implicit bias in leaky ReLU networks trained on
  high-dimensional data" (ICLR 2023), usually trained with the outer layer a fixed
  (`fs.Problem(..., trainable=net.first_layer_filter())`).
- `MLP`: x ↦ W_L φ(W_{L−1} ⋯ φ(W_1 x)), bias-free; the depth-2, 2×2 case is the network of
  Timor, Vardi & Shamir, "Implicit regularization towards rank minimization in ReLU networks"
  (ALT 2023).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import as_int
from .._nonsmooth import (
    AbstractNonsmoothModel,
    leaky_relu,
    leaky_relu_with_slope,
    rank_one_kink_system,
    rank_one_stratum_system,
)
from ._smoothed import smoothed as _smoothed
from ._validation import as_layer_list, as_real_array, check_input, check_positive_int

DEFAULT_MAX_KINKS = 64


def _check_leak(leak) -> float:
    if isinstance(leak, (bool, np.bool_)) or np.ndim(leak) != 0:
        raise TypeError(f"leak (the leaky slope γ) must be a real number in [0, 1), got {leak!r}")
    try:
        value = float(leak)
    except (TypeError, ValueError) as error:
        raise TypeError(f"leak (the leaky slope γ) must be a real number in [0, 1), got {leak!r}") from error
    if not (0.0 <= value < 1.0):
        raise ValueError(
            f"leak (the leaky slope γ of φ(z) = max(z, γz)) must be in [0, 1), got {value}; "
            "γ = 0 is ReLU, γ ≥ 1 is not a ReLU-type kink"
        )
    return value


def _check_band(kink_rtol, kink_atol, max_kinks) -> tuple:
    values = []
    for name, value in (("kink_rtol", kink_rtol), ("kink_atol", kink_atol)):
        if value is None:
            values.append(None)
            continue
        if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
            raise TypeError(f"{name} must be a non-negative real number, got {value!r}")
        number = float(value)
        if not (np.isfinite(number) and number >= 0):
            raise ValueError(f"{name} must be a non-negative finite number, got {number}")
        values.append(number)
    return values[0], values[1], as_int("max_kinks", max_kinks)


def _ball_rows(key, rows: int, cols: int, radius) -> Array:
    """`rows` points uniform in the Euclidean ball of radius `radius` in R^cols."""
    k_dir, k_rad = jr.split(key)
    direction = jr.normal(k_dir, (rows, cols), dtype=jnp.float64)
    direction = direction / jnp.linalg.norm(direction, axis=1, keepdims=True)
    r = radius * jr.uniform(k_rad, (rows, 1), dtype=jnp.float64) ** (1.0 / cols)
    return r * direction


class TwoLayer(AbstractNonsmoothModel):
    """f(x) = Σ_j a_j φ(⟨w_j, x⟩) = aᵀφ(Wx), φ(z) = max(z, γz) (Frei et al., ICLR 2023).

    **Arguments:**

    - `W`: first layer, shape (m, d) (row j is neuron j's w_j).
    - `a`: outer layer, shape (m,). Fixed in Frei et al.: train only W with
      `fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())`.
    - `leak`: γ ∈ [0, 1) (0: ReLU).
    - `kink_rtol`, `kink_atol`, `max_kinks`: the kink band and the number of free pairs of
      the minimum-norm subgradient (`flowsim._nonsmooth`); the band defaults (None) follow the
      solver's tolerances (10 × rtol, 10 × atol).

    1-homogeneous in W: f(x; cW) = c f(x; W) for c > 0.
    """

    W: Float[Array, "m d"]
    a: Float[Array, " m"]
    leak: float = eqx.field(static=True)
    kink_rtol: float | None = eqx.field(static=True)
    kink_atol: float | None = eqx.field(static=True)
    max_kinks: int = eqx.field(static=True)

    def __init__(self, W, a, leak=0.0, *, kink_rtol=None, kink_atol=None,
                 max_kinks=DEFAULT_MAX_KINKS):
        W = as_real_array(W, "TwoLayer first layer W", 2)
        a = as_real_array(a, "TwoLayer outer layer a", 1)
        if a.shape[0] != W.shape[0]:
            raise ValueError(
                f"TwoLayer outer layer a has shape {tuple(a.shape)} but W has {W.shape[0]} rows (neurons): "
                f"a needs shape ({W.shape[0]},)"
            )
        self.W, self.a = W, a
        self.leak = _check_leak(leak)
        self.kink_rtol, self.kink_atol, self.max_kinks = _check_band(kink_rtol, kink_atol, max_kinks)

    @property
    def input_dim(self) -> int:
        return self.W.shape[1]

    @property
    def width(self) -> int:
        return self.W.shape[0]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        check_input(x, self.input_dim, "TwoLayer")
        return jnp.dot(self.a, leaky_relu(self.W @ x, self.leak))

    smoothed = _smoothed

    def apply(self, x, activation):
        check_input(x, self.input_dim, "TwoLayer")
        return jnp.dot(self.a, activation(self.W @ x))

    def pre_activations(self, x):
        return self.W @ x

    def kink_widths(self, x, kink_rtol, kink_atol):
        # z_u = ⟨w_u, x⟩ moves by at most (atol + rtol‖w_u‖)‖x‖ when w_u moves by its tolerance.
        return (kink_atol + kink_rtol * jnp.linalg.norm(self.W, axis=1)) * jnp.linalg.norm(x)

    def forward(self, x, slopes):
        return jnp.dot(self.a, leaky_relu_with_slope(self.W @ x, slopes, self.leak))

    def kink_system(self, X, cotangent, gradient, sample, unit, valid):
        # z_iu = ⟨w_u, x_i⟩; the output's cotangent reaches unit u's activation as r_i a_u.
        return rank_one_kink_system(X, cotangent[sample] * self.a[unit], gradient.W, sample, unit, valid)

    def stratum_system(self, X, cotangent, gradient, sample, unit, valid):
        return rank_one_stratum_system(X, cotangent[sample] * self.a[unit], gradient.W, sample, unit, valid)

    def first_layer_filter(self):
        """The `trainable` filter that trains W and keeps a fixed (Frei et al. 2023)."""
        spec = jax.tree_util.tree_map(lambda _: False, self)
        return eqx.tree_at(lambda net: net.W, spec, True)

    @classmethod
    def init(cls, key: PRNGKeyArray, d: int, m: int, scale: float = 1.0, leak: float = 0.0, *,
             balanced: bool = False, **band) -> "TwoLayer":
        """Frei et al. (2023) initialisation: a_j = ±1/√m with random signs (`balanced`: the
        first ⌈m/2⌉ positive, the rest negative), W_jk = `scale`·N(0, 1) i.i.d."""
        d = check_positive_int(d, "TwoLayer input dimension d")
        m = check_positive_int(m, "TwoLayer width m")
        if isinstance(scale, (bool, np.bool_)) or np.ndim(scale) != 0 or not np.isfinite(float(scale)) \
                or float(scale) < 0:
            raise ValueError(f"TwoLayer init scale must be a non-negative finite number, got {scale!r}")
        k_w, k_a = jr.split(key)
        W = float(scale) * jr.normal(k_w, (m, d), dtype=jnp.float64)
        if balanced:
            signs = jnp.where(jnp.arange(m) < (m + 1) // 2, 1.0, -1.0)
        else:
            signs = jnp.where(jr.bernoulli(k_a, 0.5, (m,)), 1.0, -1.0)
        return cls(W, signs / np.sqrt(m), leak, **band)


class MLP(AbstractNonsmoothModel):
    """Bias-free ReLU network x ↦ W_L φ(W_{L−1} ⋯ φ(W_1 x)), φ(z) = max(z, γz).

    **Arguments:**

    - `layers`: [W_1, …, W_L], W_l of shape (h_l, h_{l−1}) (h_0 = d); the last is a matrix
      (k, h_{L−1}) for a vector output or a vector (h_{L−1},) for a scalar output. L ≥ 2.
    - `leak`, `kink_rtol`, `kink_atol`, `max_kinks`: as for `TwoLayer`.

    Depth 2 with 2×2 layers and squared loss is the setup of Timor, Vardi & Shamir (ALT 2023).
    The minimum-norm subgradient is exact when the pairs at kinks of any one sample lie in one
    layer (always at depth 2); otherwise the field linearises the subgradient map at φ'(z).
    """

    layers: tuple[Float[Array, "..."], ...]
    leak: float = eqx.field(static=True)
    kink_rtol: float | None = eqx.field(static=True)
    kink_atol: float | None = eqx.field(static=True)
    max_kinks: int = eqx.field(static=True)

    def __init__(self, layers, leak=0.0, *, kink_rtol=None, kink_atol=None,
                 max_kinks=DEFAULT_MAX_KINKS):
        layers = as_layer_list(layers, "MLP")
        if len(layers) < 2:
            raise ValueError(
                f"MLP needs at least 2 layers [W_1, W_2] (one activation), got {len(layers)}; "
                "a one-layer network has no kinks: use fs.networks.Linear"
            )
        checked = [as_real_array(W, f"MLP layer {l + 1}", 2) for l, W in enumerate(layers[:-1])]
        last = layers[-1]
        last_ndim = np.ndim(last)
        if last_ndim not in (1, 2):
            raise ValueError(
                f"MLP last layer {len(layers)} must be a matrix (k, h) for a vector output or a vector (h,) "
                f"for a scalar output, got shape {tuple(np.shape(last))}"
            )
        checked.append(as_real_array(last, f"MLP last layer {len(layers)}", last_ndim))
        for l in range(1, len(checked)):
            cols = checked[l].shape[-1]
            rows = checked[l - 1].shape[0]
            if cols != rows:
                raise ValueError(
                    f"MLP layer {l + 1} has shape {tuple(checked[l].shape)} but layer {l} has shape "
                    f"{tuple(checked[l - 1].shape)}: layer {l + 1} needs {rows} columns (the width of layer {l})"
                )
        self.layers = tuple(checked)
        self.leak = _check_leak(leak)
        self.kink_rtol, self.kink_atol, self.max_kinks = _check_band(kink_rtol, kink_atol, max_kinks)

    @property
    def input_dim(self) -> int:
        return self.layers[0].shape[1]

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def widths(self) -> tuple[int, ...]:
        """(h_1, …, h_{L−1}), the hidden widths (one kink per hidden unit and sample)."""
        return tuple(W.shape[0] for W in self.layers[:-1])

    def __call__(self, x: Float[Array, " d"]) -> Array:
        check_input(x, self.input_dim, "MLP")
        h = x
        for W in self.layers[:-1]:
            h = leaky_relu(W @ h, self.leak)
        return self.layers[-1] @ h

    smoothed = _smoothed

    def apply(self, x, activation):
        check_input(x, self.input_dim, "MLP")
        h = x
        for W in self.layers[:-1]:
            h = activation(W @ h)
        return self.layers[-1] @ h

    def _hidden(self, x, slopes=None):
        """Pre-activations and inputs of every hidden layer (with activation derivatives `slopes`)."""
        h, zs, inputs, start = x, [], [], 0
        for W in self.layers[:-1]:
            z = W @ h
            zs.append(z)
            inputs.append(h)
            if slopes is None:
                h = leaky_relu(z, self.leak)
            else:
                h = leaky_relu_with_slope(z, slopes[start:start + z.shape[0]], self.leak)
            start += z.shape[0]
        return zs, inputs, h

    def pre_activations(self, x):
        zs, _, _ = self._hidden(x)
        return jnp.concatenate(zs)

    def kink_widths(self, x, kink_rtol, kink_atol):
        # z_u = ⟨w_u, h⟩ (h the layer's input) moves by (atol + rtol‖w_u‖)‖h‖ through its own row and
        # by ‖w_u‖·E through its input, E bounding how far h moves when the layers below move by
        # their tolerances: E_1 = 0, E_{l+1} = ‖W_l‖_F E_l + (atol·√size_l + rtol‖W_l‖_F)‖h_{l−1}‖
        # (φ is 1-Lipschitz). Without E a deeper kink's band is narrower than where the solver
        # lands, and it chatters (benchmarks/relu.py, the 2-D MLP).
        _, inputs, _ = self._hidden(x)
        widths, E = [], 0.0
        for W, h in zip(self.layers[:-1], inputs):
            rows = jnp.linalg.norm(W, axis=1)
            h_norm = jnp.linalg.norm(h)
            widths.append((kink_atol + kink_rtol * rows) * h_norm + rows * E)
            frobenius = jnp.linalg.norm(W)
            E = frobenius * E + (kink_atol * np.sqrt(W.size) + kink_rtol * frobenius) * h_norm
        return jnp.concatenate(widths)

    def forward(self, x, slopes):
        _, _, h = self._hidden(x, slopes)
        return self.layers[-1] @ h

    def kink_system(self, X, cotangent, gradient, sample, unit, valid):
        if self.depth != 2:
            return None  # kinks in several layers: G by forward-mode differentiation
        # z_iu = ⟨(W_1)_u, x_i⟩; the output's cotangent r_i reaches unit u as (W_2ᵀ r_i)_u.
        W2 = self.layers[1]
        back = cotangent[:, None] * W2[None, :] if W2.ndim == 1 else cotangent @ W2
        return rank_one_kink_system(X, back[sample, unit], gradient.layers[0], sample, unit, valid)

    def stratum_system(self, X, cotangent, gradient, sample, unit, valid):
        if self.depth != 2:
            return None
        W2 = self.layers[1]
        back = cotangent[:, None] * W2[None, :] if W2.ndim == 1 else cotangent @ W2
        return rank_one_stratum_system(X, back[sample, unit], gradient.layers[0], sample, unit, valid)

    @classmethod
    def init(cls, key: PRNGKeyArray, in_size: int, widths: Sequence[int] | int, out_size="scalar",
             scale: float = 1.0, leak: float = 0.0, *, distribution: str = "normal", **band) -> "MLP":
        """An MLP with hidden `widths` and output `out_size` (an int k, or `"scalar"`).

        `distribution`: `"normal"` (every entry `scale`·N(0, 1)) or `"ball"` (every row
        uniform in the Euclidean ball of radius `scale`: r = U^{1/n}·scale, as Timor et al. 2023
        sample rows in a disk of radius 1e-4)."""
        in_size = check_positive_int(in_size, "MLP in_size")
        if isinstance(widths, (int, np.integer)) and not isinstance(widths, bool):
            widths = [widths]
        widths = [check_positive_int(h, "MLP hidden width") for h in widths]
        if not widths:
            raise ValueError("MLP needs at least one hidden width")
        if out_size != "scalar":
            out_size = check_positive_int(out_size, "MLP out_size (an int or 'scalar')")
        if distribution not in ("normal", "ball"):
            raise ValueError(f"unknown MLP init distribution {distribution!r}; valid: 'normal', 'ball'")
        if isinstance(scale, (bool, np.bool_)) or np.ndim(scale) != 0 or not np.isfinite(float(scale)) \
                or float(scale) < 0:
            raise ValueError(f"MLP init scale must be a non-negative finite number, got {scale!r}")
        dims = [in_size, *widths, 1 if out_size == "scalar" else out_size]
        keys = jr.split(key, len(dims) - 1)
        layers = []
        for l, k in enumerate(keys):
            shape = (dims[l + 1], dims[l])
            if distribution == "normal":
                W = float(scale) * jr.normal(k, shape, dtype=jnp.float64)
            else:
                W = _ball_rows(k, shape[0], shape[1], float(scale))
            layers.append(W)
        if out_size == "scalar":
            layers[-1] = layers[-1][0]
        return cls(layers, leak, **band)
