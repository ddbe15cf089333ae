"""What `fs.smoothed_limit` returns, in a module of its own so that the solve cache (`_cache`) can
rebuild it without importing the smoothing solves (which call the cache)."""

import equinox as eqx
from jaxtyping import Array, Bool, Float, PyTree

from ._trajectory import Trajectory

DEFAULT_WIDTHS = (1e-3, 1e-4, 1e-5)


class SmoothedLimit(eqx.Module):
    """The ReLU flow as the ε → 0 limit of smoothed flows (`smoothed_limit`).

    - `log_t`: the save times (log t), shared by every width;
    - `params`, `final`: the ReLU network extrapolated to ε = 0 at every save, and at the last;
    - `log_loss`: log L extrapolated to ε = 0 at every save;
    - `log_t_reached`: where the solves ended, extrapolated (with `target_log_loss` each width
      stops at its own time: `final` is then the state where L reaches the target, and saves
      after the earliest stop mix states of different times — each solve repeats its last one);
    - `error`: the uncertainty of the final parameters (max over entries): the larger of
      Richardson's error estimate and the gap between the ε-power and the ε log ε extrapolations;
    - `spread`: max over entries of |final parameters at the two smallest widths| — what a
      single width would be off by, for comparison with `error`;
    - `trajectories`, `widths`: each smoothed solve (`traj.final.network` is its network);
    - `ok`, `message`: every width reached the horizon (or target), or which did not and why.
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
