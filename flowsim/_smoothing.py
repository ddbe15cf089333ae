"""Gradient flow of a ReLU network as the limit of smoothed flows: solve at widths ε, extrapolate ε → 0.

The alternative to the minimum-norm Clarke subgradient (``_nonsmooth``) that works where that field
chatters: deep ReLU networks at corners where one sample sits at kinks in several layers.
"""

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from ._nonsmooth import AbstractNonsmoothModel
from ._problem import Problem
from ._simulate import simulate
from ._trajectory import Trajectory
from .analysis._extrapolation import richardson
from .networks._smoothed import Smoothed

DEFAULT_WIDTHS = (1e-3, 1e-4, 1e-5)


class SmoothedLimit(eqx.Module):
    """The ReLU flow as the ε → 0 limit of smoothed flows (``smoothed_limit``).

    - ``log_t``: the save times (log t), shared by every width;
    - ``params``, ``final``: the ReLU network extrapolated to ε = 0 at every save, and at the last;
    - ``log_loss``: log L extrapolated to ε = 0 at every save;
    - ``log_t_reached``: where the solves ended, extrapolated (with ``target_log_loss`` each width
      stops at its own time: ``final`` is then the state where L reaches the target, and saves
      after the earliest stop mix states of different times — each solve repeats its last one);
    - ``error``: the uncertainty of the final parameters (max over entries): the larger of
      Richardson's error estimate and the gap between the ε-power and the ε log ε extrapolations;
    - ``spread``: max over entries of |final parameters at the two smallest widths| — what a
      single width would be off by, for comparison with ``error``;
    - ``trajectories``, ``widths``: each smoothed solve (``traj.final.network`` is its network);
    - ``ok``, ``message``: every width reached the horizon (or target), or which did not and why.
    """

    log_t: Float[Array, " n_save"]
    params: PyTree
    final: PyTree
    log_loss: Float[Array, " n_save"]
    log_t_reached: Float[Array, ""]
    error: Float[Array, ""]
    spread: Float[Array, ""]
    trajectories: tuple[Trajectory, ...]
    widths: tuple[float, ...] = eqx.field(static=True)
    ok: Bool[Array, ""]
    message: str = eqx.field(static=True)


def _smoothed_problem(problem: Problem, width: float) -> Problem:
    model = Smoothed(problem.model, width)
    # Smoothed has the network's leaves in the network's order, so the trainable choice carries over.
    spec = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(model), list(problem.trainable_mask))
    return Problem(model, problem.X, problem.y, problem.loss, trainable=spec)


def smoothed_limit(problem: Problem, widths=DEFAULT_WIDTHS, *, logarithmic: bool = True, **options) -> SmoothedLimit:
    """Solve the flow of ``problem``'s ReLU network with φ smoothed to φ_ε(z) = γz + (1 − γ)ε·softplus(z/ε)
    for each ε in ``widths`` (``fs.networks.Smoothed``), and extrapolate the saved parameters and
    log-losses to ε = 0 (``fs.analysis.richardson``: with ``logarithmic`` (default) the error is
    expanded in ε log ε, ε, ε² log ε, …, the form a smoothed kink produces where the flow enters a
    sliding mode; otherwise in ε, ε², …; ``error`` includes the two expansions' gap).

    Use it where the minimum-norm field chatters (deep ReLU networks whose samples sit at kinks in
    several layers; a solve that runs out of steps at a kink says so). Measured (benchmarks/relu.py):
    the error of one width is O(ε log 1/ε); on a hand-solved sliding flow three widths a decade apart
    (the default 1e-3, 1e-4, 1e-5) cut the smallest width's error 25× during the slide and 500× after it. Widths are in units of pre-activations z: pick them well below the
    typical |z| (after a small initialisation, below the initial scale). A smaller ε is stiffer:
    Tsit5 takes ~1/ε steps near sliding kinks, and is still the fastest measured (the default here;
    Kvaerno5's steps are held by accuracy there, at ~200× the cost per step).

    **Arguments:** ``problem`` (an ``fs.Problem`` whose model is an ``fs.AbstractNonsmoothModel``,
    e.g. ``fs.networks.MLP``), ``widths`` (≥ 2 distinct positive numbers), ``logarithmic``, and ``fs.simulate``'s options (the same for every width, so the saves align).
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
    """The ``SmoothedLimit`` of smoothed solves already run (``widths`` decreasing, one trajectory
    each, the same save grid): what ``smoothed_limit`` returns, without solving again."""
    widths, trajectories = tuple(widths), tuple(trajectories)
    params = richardson(widths, [traj.params.network for traj in trajectories], logarithmic=logarithmic)
    finals = [traj.final.network for traj in trajectories]
    final = richardson(widths, finals, logarithmic=logarithmic)
    # The expansion's form is not known in general (ε, ε², … where a pair slides at an offset;
    # ε log ε where the flow enters a sliding mode); the two extrapolations' disagreement is part of
    # the uncertainty (measured: the Richardson estimate alone was 3–12× too optimistic).
    other = richardson(widths, finals, logarithmic=not logarithmic)
    disagreement = max(np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in
                       zip(jax.tree_util.tree_leaves(final.value), jax.tree_util.tree_leaves(other.value)))
    log_loss = richardson(widths, [traj.log_loss for traj in trajectories], logarithmic=logarithmic)
    log_t_reached = richardson(widths, [traj.log_t_reached for traj in trajectories], logarithmic=logarithmic)
    gaps = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))),
        trajectories[-1].final.network, trajectories[-2].final.network))
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
