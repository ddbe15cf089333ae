"""A training problem: a model, data and a loss."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._checks import as_data_array
from ._kinks import with_kinks
from ._losses import AbstractLoss, loss_from_name


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer under jit/vmap), so it can be checked now."""
    return not isinstance(x, jax.core.Tracer)


def _to_double(leaf):
    """Promote float32/float16 (and complex64) parameter arrays: the flow runs in float64."""
    if eqx.is_inexact_array(leaf) and jnp.finfo(leaf.dtype).bits < 64:
        return leaf.astype(jnp.complex128 if jnp.iscomplexobj(leaf) else jnp.float64)
    return leaf


def _trainable_mask(model, trainable) -> tuple[bool, ...]:
    """Resolve an Equinox filter spec into one bool per leaf: inexact arrays it selects."""
    leaves, treedef = jax.tree_util.tree_flatten(model)
    if trainable is None:
        return tuple(bool(eqx.is_inexact_array(leaf)) for leaf in leaves)
    if callable(trainable) and not isinstance(trainable, eqx.Module):
        chosen = []
        for leaf in leaves:
            pick = trainable(leaf)
            if not isinstance(pick, (bool, np.bool_)):
                raise TypeError(f"trainable(leaf) must return True or False, got {pick!r}")
            chosen.append(bool(pick))
    else:
        try:
            spec_leaves = treedef.flatten_up_to(trainable)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "trainable must be a callable leaf -> bool, or a pytree of bools with the model's structure "
                f"(e.g. from jax.tree.map(lambda _: False, model)); it does not match the model: {error}"
            ) from error
        chosen = []
        for spec in spec_leaves:
            if not isinstance(spec, (bool, np.bool_)):
                raise TypeError(f"trainable must hold True/False for every leaf, got {spec!r}")
            chosen.append(bool(spec))
    return tuple(pick and bool(eqx.is_inexact_array(leaf)) for pick, leaf in zip(chosen, leaves))


def _require_finite(name: str, value) -> None:
    if is_concrete(value):
        array = np.asarray(value)
        if not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf); all entries must be finite")


def targets_invalid(problem: "Problem") -> jax.Array:
    """True when the targets break the loss's rules: labels not exactly ±1 for a margin loss, rows that are
    not probability vectors (entries ≥ 0 summing to 1) for `cross_entropy`.

    `Problem` checks concrete targets at once; this is the same check as an array, for targets that
    were traced (a vmapped batch of problems), so that a run can refuse one member."""
    y = problem.y
    if problem.loss.is_classification:
        return ~jnp.all((y == 1.0) | (y == -1.0))
    if problem.loss.name == "cross_entropy":
        return ~jnp.all((y >= 0) & (jnp.abs(jnp.sum(y, axis=-1, keepdims=True) - 1.0) <= 1e-12))
    return jnp.asarray(False)


class Problem(eqx.Module):
    """Training problem L(θ) = (1/n) Σ_i ℓ(f(x_i; θ), y_i).

    **Arguments:**

    - `model`: an Equinox module whose `__call__(x)` maps ONE input of shape (d,) to a
      scalar, or to a vector (k,) for multi-output squared loss. Its inexact-array leaves
      are the trained parameters θ.
    - `X`: inputs, shape (n, d).
    - `y`: targets, shape (n,) (labels ±1 for classification) or (n, k).
    - `loss`: `"squared"` (ℓ = ½‖f − y‖²), `"logistic"` (ℓ = log(1 + e^{−yf})) or
      `"exponential"` (ℓ = e^{−yf}), `"cross_entropy"` (softmax cross-entropy; y one-hot rows of
      shape (n, k)), or an `AbstractLoss` instance.
    - `trainable`: which leaves are θ — an Equinox filter spec, i.e. a callable leaf → bool or
      a pytree of bools shaped like `model` (default: every inexact-array leaf). Leaves it
      excludes stay fixed exactly (e.g. the fixed outer layer of Frei et al. 2023).

    A `Problem` is a pytree: stack several with `jax.tree.map(jnp.stack, …)` and
    `eqx.filter_vmap` over them.
    """

    model: PyTree
    X: Float[Array, "n d"]
    y: Float[Array, "n *k"]  # noqa: F821 (a jaxtyping shape string)
    loss: AbstractLoss
    # One bool per leaf of `model` (in tree order): which leaves are θ. Static, so stacked
    # problems (vmap) share it and it never becomes an array.
    trainable_mask: tuple[bool, ...] = eqx.field(static=True)

    def __init__(self, model, X, y, loss: "str | AbstractLoss" = "squared", trainable=None):
        self.loss = loss_from_name(loss)
        if not isinstance(model, eqx.Module):
            raise TypeError(f"model must be an equinox.Module, got {type(model).__name__}")
        self.trainable_mask = _trainable_mask(model, trainable)
        if not any(self.trainable_mask):
            raise ValueError(
                f"model {type(model).__name__} has no trainable arrays"
                + ("" if trainable is None else " selected by `trainable`")
                + ": gradient flow needs at least one floating-point array leaf (θ)"
            )
        X = as_data_array("X", X)
        y = as_data_array("y", y)
        if X.ndim != 2:
            raise ValueError(f"X must have shape (n, d), got shape {tuple(X.shape)}")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must have shape (n,) or (n, k), got shape {tuple(y.shape)}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}; they must match")
        if X.shape[0] == 0:
            raise ValueError("X has no samples (n = 0)")
        _require_finite("X", X)
        _require_finite("y", y)
        leaves_with_paths = jax.tree_util.tree_leaves_with_path(model)
        for (path, leaf), trained in zip(leaves_with_paths, self.trainable_mask):
            if trained and jnp.iscomplexobj(leaf):
                raise TypeError(
                    f"model parameter {jax.tree_util.keystr(path)} is complex (dtype {leaf.dtype}): the flow is over "
                    "real parameters θ (JAX's gradient of a real loss in a complex leaf is the conjugate of the "
                    "descent direction, so the loss would grow); store the real and imaginary parts as two real arrays"
                )
        for path, leaf in jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_inexact_array)):
            _require_finite(f"model parameter {jax.tree_util.keystr(path)}", leaf)
        try:
            out = jax.eval_shape(model, jax.ShapeDtypeStruct(X.shape[1:], X.dtype))
        except Exception as error:  # the user's model failing on one input is their bug: say so
            raise ValueError(
                f"model {type(model).__name__} cannot be applied to one input of shape {tuple(X.shape[1:])}: {error}"
            ) from error
        if jnp.issubdtype(out.dtype, jnp.complexfloating):
            raise TypeError(f"model {type(model).__name__} returns complex outputs (dtype {out.dtype}); the losses "
                            "need real predictions f(x) (take the real part, or the modulus, inside the model)")
        expected = tuple(y.shape[1:])
        if tuple(out.shape) != expected:
            raise ValueError(
                f"model output for one input has shape {tuple(out.shape)} but targets y[i] have shape {expected}; "
                "a model maps ONE input x of shape (d,) to a scalar (or (k,) for multi-output regression)"
            )
        if self.loss.name == "cross_entropy":
            if y.ndim != 2 or y.shape[1] < 2:
                raise ValueError(f"cross_entropy needs targets y of shape (n, k) with k ≥ 2 classes (one-hot or "
                                 f"probability rows), got shape {tuple(y.shape)}")
            if is_concrete(y):
                rows = np.asarray(y)
                bad = np.flatnonzero((rows < 0).any(axis=1) | ~np.isclose(rows.sum(axis=1), 1.0, atol=1e-12))
                if bad.size:
                    raise ValueError(f"cross_entropy targets must be probability rows (entries ≥ 0 summing to 1); "
                                     f"row {int(bad[0])} is {rows[bad[0]].tolist()}")
        if self.loss.is_classification:
            if y.ndim != 1:
                raise ValueError(f"{self.loss.name} loss needs scalar labels y of shape (n,), got {tuple(y.shape)}")
            if is_concrete(y):
                labels = np.unique(np.asarray(y))
                if not set(labels.tolist()) <= {-1.0, 1.0}:
                    raise ValueError(
                        f"{self.loss.name} loss needs labels ±1; y contains {labels[:6].tolist()}"
                        + ("…" if labels.size > 6 else "")
                    )
        # A model with kinks (relu, maximum, abs, … of its parameters) gets the min-norm Clarke field.
        self.model = with_kinks(jax.tree_util.tree_map(_to_double, model), jax.ShapeDtypeStruct(X.shape[1:], X.dtype),
                                self.trainable_mask)
        self.X = X
        self.y = y

    def partition(self, model=None) -> tuple[PyTree, PyTree]:
        """(θ leaves, the fixed rest) of `model` (default: the problem's), as `eqx.partition`."""
        model = self.model if model is None else model
        leaves, treedef = jax.tree_util.tree_flatten(model)
        spec = jax.tree_util.tree_unflatten(treedef, list(self.trainable_mask[: len(leaves)]))
        return eqx.partition(model, spec)

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    def predictions(self, model=None) -> Array:
        """f(x_i) for every sample, shape (n,) or (n, k)."""
        model = self.model if model is None else model
        return jax.vmap(model)(self.X)

    def loss_value(self, model=None) -> Float[Array, ""]:
        """L(θ) = (1/n) Σ ℓ_i (may underflow to 0)."""
        return self.loss.value(self.predictions(model), self.y)

    def log_loss_value(self, model=None) -> Float[Array, ""]:
        """log L(θ), finite where L underflows."""
        return self.loss.log_value(self.predictions(model), self.y)
