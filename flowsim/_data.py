"""Synthetic data sets shared by scenarios: underdetermined regression and separable classification.

Every generator is deterministic in `seed` (NumPy's default generator), returns float64 NumPy arrays, and
draws inputs x_i ~ N(0, I_d). `symmetric=True` makes every input circularly even, x_j = x_{(−j) mod d}, so its
DFT is real: a full-length convolutional network trained on such data keeps real, even filters and stays a
*real* diagonal network in the DFT basis (Yun, Krishnan & Mobahi, ICLR 2021), where the
per-coordinate mirror map applies.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from ._checks import as_bool, as_int, as_real_scalar


def circular_even(X: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n d"]:
    """The even part of each row under circular reflection: (x_j + x_{(−j) mod d}) / 2.

    Its unitary DFT is real (the odd part carries the imaginary part of the DFT).
    """
    X = np.asarray(X)
    if np.iscomplexobj(X) or X.dtype.kind not in "biuf":
        raise TypeError(f"X must be a real numeric array, got dtype {X.dtype}")
    X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (n, d), got shape {X.shape}")
    reflected = X[:, (-np.arange(X.shape[1])) % X.shape[1]]
    return (X + reflected) / 2


def sparse_teacher(d: int, sparsity: int, rng: np.random.Generator) -> Float[np.ndarray, " d"]:
    """A unit vector with `sparsity` non-zero entries at random places, magnitudes in [0.5, 1], random signs."""
    d, sparsity = as_int("d", d), as_int("sparsity", sparsity)
    if not 1 <= sparsity <= d:
        raise ValueError(f"sparsity must be between 1 and d={d}, got {sparsity}")
    teacher = np.zeros(d)
    support = rng.choice(d, size=sparsity, replace=False)
    teacher[support] = rng.uniform(0.5, 1.0, sparsity) * rng.choice([-1.0, 1.0], sparsity)
    return teacher / np.linalg.norm(teacher)


def underdetermined_regression(
    n: int, d: int, seed: int = 0, sparsity: int = 2, symmetric: bool = False
) -> tuple[Float[np.ndarray, "n d"], Float[np.ndarray, " n"]]:
    """Regression data with fewer samples than dimensions, y = X β* for a sparse unit teacher β*.

    Requires n < d (n ≤ ⌊d/2⌋ + 1 − 1 for `symmetric`, the dimension of circularly even signals minus one),
    so the interpolators form an affine space of dimension ≥ 1 and the implicit bias picks one of them.
    """
    n, d, seed = as_int("n", n), as_int("d", d), as_int("seed", seed, minimum=0)
    sparsity, symmetric = as_int("sparsity", sparsity), as_bool("symmetric", symmetric)
    even_dim = d // 2 + 1
    if not 1 <= n < (even_dim if symmetric else d):
        limit = f"⌊d/2⌋ + 1 = {even_dim} (circularly even inputs)" if symmetric else f"d = {d}"
        raise ValueError(f"underdetermined regression needs 1 ≤ n < {limit}, got n = {n}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if symmetric:
        X = circular_even(X)
    teacher = sparse_teacher(d, sparsity, rng)
    if symmetric:
        teacher = circular_even(teacher[None, :])[0]
    return X, X @ teacher


def separable(
    n: int, d: int, seed: int = 0, gap: float = 0.1, sparsity: int | None = None, symmetric: bool = False
) -> tuple[Float[np.ndarray, "n d"], Float[np.ndarray, " n"]]:
    """Linearly separable data through the origin: y_i = sign⟨x_i, w*⟩ with |⟨x_i, w*⟩| ≥ gap.

    w* is a unit teacher (sparse with `sparsity` non-zeros, or dense Gaussian when None); Gaussian points
    closer than `gap` to its hyperplane are redrawn, so w* separates the data with margin ≥ gap.
    """
    n, d, seed = as_int("n", n), as_int("d", d), as_int("seed", seed, minimum=0)
    symmetric = as_bool("symmetric", symmetric)
    gap = float(as_real_scalar("gap", gap))
    if not gap >= 0:
        raise ValueError(f"gap must be ≥ 0, got {gap}")
    rng = np.random.default_rng(seed)
    if sparsity is None:
        teacher = rng.standard_normal(d)
        teacher /= np.linalg.norm(teacher)
    else:
        teacher = sparse_teacher(d, sparsity, rng)
    if symmetric:
        teacher = circular_even(teacher[None, :])[0]
        teacher /= np.linalg.norm(teacher)
    X = np.empty((0, d))
    for _ in range(1000):
        x = rng.standard_normal((n, d))
        if symmetric:
            x = circular_even(x)
        X = np.concatenate([X, x[np.abs(x @ teacher) >= gap]])[:n]
        if len(X) == n:
            return X, np.sign(X @ teacher)
    raise ValueError(f"gap = {gap} is too large: few Gaussian points lie that far from the teacher's hyperplane")


def relu_teacher_student(
    n: int, d: int, width: int = 2, seed: int = 0
) -> tuple[Float[np.ndarray, "n d"], Float[np.ndarray, " n"], Float[np.ndarray, "m d"], Float[np.ndarray, " m"]]:
    """Regression data labelled by a bias-free two-layer ReLU teacher f*(x) = Σ_j a_j relu(⟨u_j, x⟩).

    Inputs are uniform on the unit sphere (x_i = g_i/‖g_i‖, g_i ~ N(0, I_d)); the teacher's rows u_j are
    orthonormal (a random orthonormal frame, so `width` ≤ d) and a_j = +1, −1, +1, … alternate, so the
    teacher is balanced (‖u_j‖ = |a_j| = 1), its first layer has rank `width`, and its path norm
    Σ_j |a_j|‖u_j‖ = `width`. Used for the depth study of Timor, Vardi & Shamir (ALT 2023).

    **Arguments:** `n` samples, `d` input dimension, `width` teacher units (1 ≤ width ≤ d), `seed`.

    **Returns:** `(X, y, U, a)`: inputs (n, d), targets y_i = f*(x_i) (n,), teacher rows U (width, d) and
    outer weights a (width,).
    """
    n, d, width, seed = as_int("n", n), as_int("d", d), as_int("width", width), as_int("seed", seed, minimum=0)
    if width > d:
        raise ValueError(f"the teacher's width must be at most d = {d} (its rows are orthonormal), got {width}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q, _ = np.linalg.qr(rng.standard_normal((d, width)))
    U = Q.T
    a = np.where(np.arange(width) % 2 == 0, 1.0, -1.0)
    return X, np.maximum(X @ U.T, 0.0) @ a, U, a
