"""Rank measures of weight matrices."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Shaped


def singular_values(W: Shaped[ArrayLike, "*batch m k"]) -> Float[Array, "*batch r"]:
    """The singular values of every matrix in a batch, largest first, shape (..., min(m, k)).

    A wide or tall matrix is first reduced to its square triangular factor (W = QR or Wᵀ = QR:
    R has W's singular values), because a batched SVD of a wide matrix can allocate batch × k × k
    (64 GB for 80 first layers of shape 10 × 10⁴)."""
    W = jnp.asarray(W, dtype=jnp.float64)
    m, k = W.shape[-2], W.shape[-1]
    if k > m:
        W = jnp.linalg.qr(jnp.swapaxes(W, -1, -2), mode="r")
    elif m > k:
        W = jnp.linalg.qr(W, mode="r")
    return jnp.linalg.svd(W, compute_uv=False)


def stable_rank(W: Shaped[ArrayLike, "*batch m k"]) -> Float[Array, "*batch"]:
    """Stable rank  ||W||_F^2 / ||W||_2^2 = sum_i s_i^2 / s_1^2  (s_i the singular values), in [1, rank W].

    Batched over any leading axes (e.g. the time axis of `traj.params`). A zero matrix gives nan. Used for the
    rank collapse of ReLU first layers (Frei et al., ICLR 2023; Timor, Vardi & Shamir, ALT 2023). Pure JAX.

    **Arguments:** `W` (..., m, k). **Returns:** the stable ranks, shape `W.shape[:-2]`.
    """
    W = jnp.asarray(W)
    if W.ndim < 2:
        raise ValueError(f"W must have at least 2 dimensions (..., m, k); got shape {W.shape}.")
    if W.shape[-1] == 0 or W.shape[-2] == 0:
        raise ValueError(f"W must have non-empty matrix dimensions; got shape {W.shape}.")
    s = singular_values(W)
    return jnp.sum(s**2, axis=-1) / s[..., 0] ** 2
