"""Gradient flow of a ReLU network as the limit of smoothed flows: solve at widths ε, extrapolate ε → 0.

The alternative to the minimum-norm Clarke subgradient (`_nonsmooth`) that works where that field
chatters: deep ReLU networks at corners where one sample sits at kinks in several layers.
`simulate_or_smoothed` runs the exact field and falls back to the extrapolation per member, where
the exact solve stalled at a kink.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._batch import batch_size
from ._cache import cached, simulate, simulate_batch  # inside fs.cache each solve is stored on its own
from ._nonsmooth import AbstractNonsmoothModel, KinkBand, kink_band, kink_band_of, kink_crossings, kink_statistics
from ._problem import Problem
from ._smoothed_result import DEFAULT_WIDTHS, SmoothedLimit
from ._trajectory import Status, Trajectory
from .analysis._extrapolation import richardson
from .networks._relu import MLP, TwoLayer
from .networks._smoothed import Smoothed


def _smoothed_problem(problem: Problem, width: float) -> Problem:
    model = Smoothed(problem.model, width)
    # Smoothed has the network's leaves in the network's order, so the trainable choice carries over.
    spec = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(model), list(problem.trainable_mask))
    return Problem(model, problem.X, problem.y, problem.loss, trainable=spec)


def smoothed_limit(problem: Problem, widths=DEFAULT_WIDTHS, *, logarithmic: bool = True, **options) -> SmoothedLimit:
    """Solve the flow of `problem`'s ReLU network with φ smoothed to φ_ε(z) = γz + (1 − γ)ε·softplus(z/ε)
    for each ε in `widths` (`fs.networks.Smoothed`), and extrapolate the saved parameters and
    log-losses to ε = 0 (`fs.analysis.richardson`: with `logarithmic` (default) the error is
    expanded in ε log ε, ε, ε² log ε, …, the form a smoothed kink produces where the flow enters a
    sliding mode; otherwise in ε, ε², …; `error` includes the two expansions' gap).

    Use it where the minimum-norm field chatters (deep ReLU networks whose samples sit at kinks in
    several layers; a solve that runs out of steps at a kink says so). Measured (benchmarks/relu.py):
    the error of one width is O(ε log 1/ε); on a hand-solved sliding flow three widths a decade apart
    (the default 1e-3, 1e-4, 1e-5) cut the smallest width's error 25× during the slide and 500× after it. Widths are in units of pre-activations z: pick them well below the
    typical |z| (after a small initialisation, below the initial scale). A smaller ε is stiffer:
    Tsit5 takes ~1/ε steps near sliding kinks, and is still the fastest measured (the default here;
    Kvaerno5's steps are held by accuracy there, at ~200× the cost per step).

    **Arguments:** `problem` (an `fs.Problem` whose model is an `fs.AbstractNonsmoothModel`,
    e.g. `fs.networks.MLP`), `widths` (≥ 2 distinct positive numbers), `logarithmic`, and `fs.simulate`'s options (the same for every width, so the saves align).
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"smoothed_limit needs an fs.Problem, got {type(problem).__name__}")
    if isinstance(problem.model, Smoothed):
        raise TypeError("smoothed_limit smooths the network itself: pass the Problem of the ReLU network, "
                        "not of an fs.networks.Smoothed model")
    if not isinstance(problem.model, AbstractNonsmoothModel):
        raise TypeError(
            "smoothed_limit needs a ReLU network (an fs.AbstractNonsmoothModel such as fs.networks.MLP), "
            f"got {type(problem.model).__name__}: a smooth model needs no smoothing"
        )
    try:
        widths = tuple(float(w) for w in widths)
    except (TypeError, ValueError) as error:
        raise TypeError(f"widths must be a sequence of positive numbers, got {widths!r}") from error
    if len(widths) < 2:
        raise ValueError(f"smoothed_limit needs at least 2 widths to extrapolate, got {list(widths)}")
    if not all(np.isfinite(w) and w > 0 for w in widths) or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be distinct positive finite numbers, got {list(widths)}")
    widths = tuple(sorted(widths, reverse=True))
    # Measured on the 2-16-16-1 MLP at ε = 1e-5 to log t = 10: Tsit5 3.8 s, auto 10 s (a lost Kvaerno5
    # trial and its compilation), Kvaerno5 68 s (accuracy, not stability, holds its steps).
    options.setdefault("solver", "tsit5")
    trajectories = tuple(simulate(_smoothed_problem(problem, w), **options) for w in widths)
    return extrapolate(widths, trajectories, logarithmic=logarithmic)


def extrapolate(widths, trajectories, *, logarithmic: bool = True) -> SmoothedLimit:
    """The `SmoothedLimit` of smoothed solves already run (`widths` decreasing, one trajectory
    each, the same save grid): what `smoothed_limit` returns, without solving again."""
    widths, trajectories = tuple(widths), tuple(trajectories)
    # Only the array leaves are extrapolated (a model may hold functions, e.g. eqx.nn.MLP's activation).
    static = eqx.filter(trajectories[-1].final.network, eqx.is_array, inverse=True)
    params = _on_arrays(richardson(widths, [eqx.filter(traj.params.network, eqx.is_array) for traj in trajectories],
                                   logarithmic=logarithmic), static)
    finals = [eqx.filter(traj.final.network, eqx.is_array) for traj in trajectories]
    final = _on_arrays(richardson(widths, finals, logarithmic=logarithmic), static)
    # The expansion's form is not known in general (ε, ε², … where a pair slides at an offset;
    # ε log ε where the flow enters a sliding mode); the two extrapolations' disagreement is part of
    # the uncertainty (measured: the Richardson estimate alone was 3–12× too optimistic).
    other = richardson(widths, finals, logarithmic=not logarithmic)
    disagreement = max(np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in
                       zip(jax.tree_util.tree_leaves(eqx.filter(final.value, eqx.is_array)),
                                           jax.tree_util.tree_leaves(other.value)))
    log_loss = richardson(widths, [traj.log_loss for traj in trajectories], logarithmic=logarithmic)
    log_t_reached = richardson(widths, [traj.log_t_reached for traj in trajectories], logarithmic=logarithmic)
    gaps = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))), finals[-1], finals[-2]))
    failed = [(w, traj) for w, traj in zip(widths, trajectories) if not bool(traj.ok)]
    message = "; ".join(f"width {w:g}: {traj.message}" for w, traj in failed) if failed else \
        f"all {len(widths)} widths reached the end; extrapolated to width 0"
    return SmoothedLimit(
        log_t=trajectories[-1].log_t,
        params=params.value,
        final=final.value,
        log_loss=log_loss.value,
        log_t_reached=log_t_reached.value,
        error=np.maximum(np.asarray(final.error), disagreement),
        spread=np.asarray(max(gaps)),
        trajectories=trajectories,
        widths=widths,
        ok=np.asarray(not failed),
        message=message,
    )


# Where the exact (minimum-norm) field stalled rather than failed for a reason smoothing cannot remove:
# out of steps or step sizes at a kink it chatters across (a sample at kinks in several layers).
FALLBACK_STATUSES = (Status.MAX_STEPS, Status.STEP_SIZE_UNDERFLOW, Status.SOLVER_FAILURE)
# fs.simulate_batch's own options: they shape how a batch runs, not a solve, so the fallback drops them.
_BATCH_OPTIONS = ("chunk_size", "devices", "schedule", "segment_steps")
# Statistics a fallback member gets, so that every member of a batch has the same keys.
_FALLBACK_STATS = ("smoothed_fallback", "exact_status", "exact_log_t_reached", "exact_pairs_at_kink",
                   "exact_corner_samples", "smoothed_error")


def kink_layers(model: AbstractNonsmoothModel) -> tuple[int, ...] | None:
    """The sizes of the model's layers of kinks, in the order of `pre_activations` (one entry per
    hidden layer of `fs.networks.MLP`, per kink site a model's kinks were found at), or None where
    unknown. A model with one layer of kinks has no corners: its min-norm field is exact everywhere."""
    if isinstance(model, TwoLayer):
        return (int(np.shape(model.W)[-2]),)
    if isinstance(model, MLP):
        return tuple(int(np.shape(W)[-2]) for W in model.layers[:-1])
    sites = getattr(model, "sites", None)  # flowsim._kinks.Kinked: any model, its kinks found by tracing
    return None if sites is None else tuple(site.size for site in sites)


def corner_samples(model: AbstractNonsmoothModel, X, band: KinkBand | None = None) -> Array:
    """The number of samples with (unit, sample) pairs in the `band` of their kinks (default: that of the
    default tolerances, `kink_band_of`) in two or more layers at once (`kink_layers`): the corners where
    the min-norm field is only linearised (`_nonsmooth`)."""
    layers = kink_layers(model)
    band = kink_band_of(model) if band is None else band
    z, width = kink_band(model, jnp.asarray(X, dtype=jnp.float64), band)
    in_band = jnp.abs(z) <= width
    if layers is None:
        return jnp.sum(jnp.sum(in_band, axis=1) >= 2)  # unknown layers: any two pairs of one sample
    bounds = np.cumsum((0, *layers))
    per_layer = jnp.stack([jnp.any(in_band[:, a:b], axis=1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)
    return jnp.sum(jnp.sum(per_layer, axis=1) >= 2)


def simulate_or_smoothed(problem: Problem, widths=DEFAULT_WIDTHS, *, batched: bool = False, logarithmic: bool = True,
                         corners_only: bool = True, smoothed_options: dict | None = None, **options) -> Trajectory:
    """`fs.simulate(problem, **options)` (`fs.simulate_batch` with `batched=True`), and for each
    member whose exact solve stalled at a kink, `fs.smoothed_limit` in its place (`smoothed_fallback`).

    The minimum-norm Clarke field of `_nonsmooth` is exact where the free slopes of each sample
    lie in one layer; where a sample sits at kinks in two layers at once (a corner of a deep network)
    it is only linearised there and can chatter until the solve runs out of steps. Such a member
    (status `MAX_STEPS`, `STEP_SIZE_UNDERFLOW` or `SOLVER_FAILURE` on an
    `fs.AbstractNonsmoothModel` with kinks in two or more layers, `kink_layers`) is solved again
    with its activations smoothed at `widths` and extrapolated to width 0; the other members keep
    their exact solves. A model with one layer of kinks (a two-layer net) has no corners and its field is
    exact: a stalled solve of it needs more steps, so it is left as it is unless `corners_only=False`.
    A smooth model runs exactly as `fs.simulate` (nothing falls back).

    **Arguments:** `problem` (a `fs.Problem`; with `batched=True` one with a leading batch axis,
    as `fs.simulate_batch` takes), `widths` and `logarithmic` (as `fs.smoothed_limit`),
    `smoothed_options` (options that replace `options` for the smoothed solves only, e.g. a larger
    `max_steps`: a smoothed solve near a sliding kink takes ~1/ε steps), and `fs.simulate`'s (or
    `fs.simulate_batch`'s) options.

    **Returns:** a `fs.Trajectory` as the exact solve's (batched with `batched=True`), where each
    fallback member holds the extrapolated network, log-loss and time reached, the status of its
    smoothed solves, and statistics summed over its exact and smoothed solves. `traj.stats` gains
    per member `smoothed_fallback` (it fell back), `exact_status`, `exact_log_t_reached`,
    `exact_pairs_at_kink` and `exact_corner_samples` (where and why the exact solve stopped: the
    samples at kinks in two layers at its last state, `corner_samples`) and `smoothed_error` (the
    extrapolation's uncertainty in the parameters, `SmoothedLimit.error`; NaN where exact);
    `traj.info` names the fallback members and widths, and `traj.message` says so per member.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"simulate_or_smoothed needs an fs.Problem, got {type(problem).__name__}")
    exact = simulate_batch(problem, **options) if batched else simulate(problem, **options)
    if not isinstance(problem.model, AbstractNonsmoothModel):
        return exact
    solve_options = {key: value for key, value in options.items() if key not in _BATCH_OPTIONS}
    solve_options.update(smoothed_options or {})
    return smoothed_fallback(problem, exact, widths, logarithmic=logarithmic, corners_only=corners_only,
                             **solve_options)


def smoothed_fallback(problem: Problem, traj: Trajectory, widths=DEFAULT_WIDTHS, *, logarithmic: bool = True,
                      corners_only: bool = True, **options) -> Trajectory:
    """`traj` (the exact solve of `problem`, batched or not) with every member whose solve stalled at
    a kink (`FALLBACK_STATUSES`) replaced by `fs.smoothed_limit(member, widths, **options)`: what
    `simulate_or_smoothed` returns. `options` must give the exact solve's save grid (`n_save` or
    `save_log_t`), so the smoothed saves line up with the other members'."""
    if not isinstance(problem.model, AbstractNonsmoothModel):
        raise TypeError(f"smoothed_fallback needs a ReLU network (an fs.AbstractNonsmoothModel), got "
                        f"{type(problem.model).__name__}")
    batched = np.ndim(traj.status) > 0
    status = np.atleast_1d(np.asarray(traj.status))
    layers = kink_layers(problem.model)
    # One layer of kinks (a two-layer net) has no corners: the exact field is exact there, and a solve
    # that stalls needs more steps or looser tolerances, which smoothing would not give it.
    corners = layers is None or len(layers) > 1 or not corners_only
    stalled = np.isin(status, [int(s) for s in FALLBACK_STATUSES]) & corners
    members = [int(k) for k in np.flatnonzero(stalled)]
    arrays, static = eqx.partition(traj, eqx.is_array)
    arrays = jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True), arrays)
    one = (lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[None], tree)) if not batched else (lambda tree: tree)
    arrays = one(arrays)  # every leaf with a member axis first (undone at the end)
    stats = arrays.stats
    size = status.size
    new = {"smoothed_fallback": np.zeros(size, bool), "exact_status": status.astype(np.int64),
           "exact_log_t_reached": np.asarray(arrays.log_t_reached, dtype=float).copy(),
           "exact_pairs_at_kink": np.asarray(stats.get("pairs_at_kink", np.zeros(size)), dtype=np.int64).copy(),
           "exact_corner_samples": np.zeros(size, np.int64), "smoothed_error": np.full(size, np.nan)}
    band = kink_band_of(problem.model, options.get("rtol"), options.get("atol"))  # the band the exact solve used
    for k in members:
        member = _member(problem, k) if batched else problem
        last = _member(traj.final, k) if batched else traj.final
        new["exact_corner_samples"][k] = int(corner_samples(_as_model(problem.model, last), member.X, band))
        limit = smoothed_limit(member, widths, logarithmic=logarithmic, **options)
        failed = [t for t in limit.trajectories if not bool(t.ok)]
        _put_tree(arrays.params, limit.params, k)
        _put_tree(arrays.final, limit.final, k)
        arrays.log_t[k] = np.asarray(limit.log_t)
        arrays.log_loss[k] = np.asarray(limit.log_loss)
        arrays.loss[k] = np.exp(np.asarray(limit.log_loss))
        arrays.log_t_reached[k] = np.asarray(limit.log_t_reached)
        arrays.status[k] = int((failed[0] if failed else limit.trajectories[-1]).status)
        for key in ("num_steps", "num_accepted_steps", "num_rejected_steps", "wall_time_s"):
            if key in stats:
                stats[key][k] = stats[key][k] + sum(np.asarray(t.stats[key]) for t in limit.trajectories)
        if "pairs_at_kink" in stats:
            at_end = kink_statistics(limit.final, member.X, band)
            stats["pairs_at_kink"][k] = np.asarray(at_end["pairs_at_kink"])
            stats["band_overflow"][k] = np.asarray(at_end["band_overflow"])
        if "kink_crossings" in stats:
            stats["kink_crossings"][k] = np.asarray(kink_crossings(limit.params, member.X))
        new["smoothed_fallback"][k] = True
        new["smoothed_error"][k] = float(limit.error)
    undo = (lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[0], tree)) if not batched else (lambda tree: tree)
    out = eqx.combine(jax.tree_util.tree_map(jnp.asarray, undo(arrays)), static)
    metadata = dict(traj.metadata, smoothed_fallback_members=tuple(members),
                    smoothed_fallback_widths=tuple(float(w) for w in sorted(widths, reverse=True)))
    return dataclasses.replace(out, stats={**out.stats, **jax.tree_util.tree_map(jnp.asarray, undo(new))},
                               metadata=tuple(sorted(metadata.items(), key=lambda item: item[0])))


def _on_arrays(result, static):
    """A Richardson result over array leaves, its value recombined with the model's other leaves."""
    return dataclasses.replace(result, value=eqx.combine(result.value, static))


def _as_model(model: AbstractNonsmoothModel, values) -> AbstractNonsmoothModel:
    """`model` with the array leaves of `values` (a trajectory hands back the user's model, whose
    leaves are the problem's model's)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(values, eqx.is_array))
    arrays, static = eqx.partition(model, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(arrays), leaves), static)


def _member(problems, index: int):
    """Member `index` of a stacked pytree (every array leaf's leading axis)."""
    batch_size(problems)  # checks the leaves share one leading axis
    arrays, static = eqx.partition(problems, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(lambda leaf: leaf[index], arrays), static)


def _put_tree(target, values, index: int) -> None:
    """Write `values`' array leaves into member `index` of `target`'s (numpy, in place)."""
    leaves = jax.tree_util.tree_leaves(target)
    new = jax.tree_util.tree_leaves(eqx.filter(values, eqx.is_array))
    if len(leaves) != len(new):
        raise ValueError("the smoothed solve's network does not have the exact solve's leaves")
    for leaf, value in zip(leaves, new, strict=True):
        leaf[index] = np.asarray(value)


# The public functions: inside `fs.cache` a call is stored and replayed, and each smoothed solve it makes
# (the `simulate` above is the cached one) is stored and checkpointed on its own.
smoothed_limit = cached("smoothed_limit", smoothed_limit)
simulate_or_smoothed = cached("simulate_or_smoothed", simulate_or_smoothed)
