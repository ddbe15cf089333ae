"""Shared plotting helpers: failed solves shown as failed (by the names the figure shows), and atomic
PNG/PDF writes. The style itself (rc settings, series styles, mathtext helpers) is in `_style`."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ._scenario import SAFE_NAME
from ._store import StoreError, atomic_path
from ._style import STYLE as STYLE
from ._style import style as style

FORMATS = ("png", "pdf")

FAILED_STYLE = {"color": "0.55", "ls": ":", "lw": 1.0}


def solve_name(result: str, member=None) -> str:
    """A readable fallback name for one failed solve when its scenario names none (`describe_solves`):
    `"scale0/depth4/flow"`, member 3 → `"scale0 depth4, run 3"` (no `/`, `_` or `[…]` of the results store)."""
    parts = [p for p in str(result).split("/") if p not in ("flow", "traj", "trajectory", "")]
    name = " ".join(p.replace("_", " ") for p in parts) or "flow"
    if member is None:
        return name
    index = ", ".join(str(m) for m in member) if isinstance(member, (list, tuple)) else str(member)
    return f"{name}, run {index}"


DESCRIBE_ATTRIBUTE = "_flowsim_describe_solves"


def describe_solves(fig, describe):
    """Give `fig` the names it shows for its solves, so that a NOT CONVERGED note on it (`note_failures`)
    names a failed solve as the figure does ("depth 4, seed 3"), not by its id in the results store.

    `describe` is `describe(result, member) -> str` (`result` the stored trajectory's name, e.g.
    `"scale0/depth4/flow"`, `member` its batch index or None), or a mapping result → name (the member is
    then added as ", run k"). Returns `fig`."""
    setattr(fig, DESCRIBE_ATTRIBUTE, describe)
    return fig


def display_name(describe, result: str, member) -> str:
    if describe is None:
        return solve_name(result, member)
    if isinstance(describe, Mapping):
        if result not in describe:
            return solve_name(result, member)
        name = str(describe[result])
        if member is None:
            return name
        index = ", ".join(str(m) for m in member) if isinstance(member, (list, tuple)) else str(member)
        return f"{name}, run {index}"
    return str(describe(result, member))


def failure_text(failures: Sequence[Mapping], describe=None, shown: int = 4) -> str:
    """The one line a figure carries when some of its run's solves failed: `"NOT CONVERGED: depth 4, seed 3
    (max steps); … — see summary.json"`, with each solve by the name `describe` gives it (see
    `describe_solves`; default `solve_name`) and its status in words. Empty when nothing failed."""
    if not failures:
        return ""
    names = [f"{display_name(describe, f['result'], f.get('member'))} ({str(f['status']).replace('_', ' ').lower()})"
             for f in failures]
    text = "; ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return f"NOT CONVERGED: {text} — see summary.json"


def note_failures(fig, failures: Sequence[Mapping], describe=None) -> None:
    """Write on `fig` that some solves of its run failed (the runner does this for every figure of
    such a run), so no curve of a failed member passes for a converged one.

    `failures` are the summary's `failed` records: result name, member, status, message. Each is named as
    `describe` says, else as the figure says (`describe_solves`), else by `solve_name`."""
    from matplotlib.figure import Figure

    if not failures or not isinstance(fig, Figure):
        return
    text = failure_text(failures, describe if describe is not None else getattr(fig, DESCRIBE_ATTRIBUTE, None))
    # A strip of its own under the axes: the note must not sit on the x-axis labels.
    strip = 0.4  # inches: two lines of 7 pt
    width, height = fig.get_size_inches()
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)  # lay the figure out as drawn without the note, then keep that layout fixed
        fig.set_layout_engine(None)
    fig.set_size_inches(width, height + strip)
    for ax in fig.axes:
        box = ax.get_position()
        scale = height / (height + strip)
        ax.set_position([box.x0, 1 - (1 - box.y0) * scale, box.width, box.height * scale])
    for text_artist in fig.texts:
        x, y = text_artist.get_position()
        text_artist.set_position((x, 1 - (1 - y) * height / (height + strip)))
    fig.text(0.01, 0.15 * strip / (height + strip), text, color="C3", fontsize=7, ha="left", va="bottom", wrap=True)


def plot_members(ax, x, y, ok, *, label: str | None = None, **style):
    """Plot one line per batch member (`x`, `y` of shape (members, points) or (points,)): members
    whose solve succeeded (`ok`, e.g. `results["flow/ok"]`) in `style`, the others grey and dotted,
    labelled "did not converge", so a failed member is never read as a converged one.

    **Returns:** the number of failed members drawn."""
    x, y = np.atleast_2d(np.asarray(x)), np.atleast_2d(np.asarray(y))
    ok = np.broadcast_to(np.asarray(ok, dtype=bool), (y.shape[0],))
    x = np.broadcast_to(x, y.shape)
    good, bad = np.flatnonzero(ok), np.flatnonzero(~ok)
    for n, i in enumerate(good):
        ax.plot(x[i], y[i], label=label if n == 0 else None, **style)
    for n, i in enumerate(bad):
        ax.plot(x[i], y[i], label="did not converge" if n == 0 else None, **FAILED_STYLE)
    return len(bad)


def save_figures(
    figures: Mapping, directory: str | pathlib.Path, formats: Sequence[str] = FORMATS
) -> list[pathlib.Path]:
    """Write each figure as `directory/<name>.<fmt>` atomically, close it, and return the paths.

    PDFs carry no creation date, so re-running a scenario with the same result gives the same file.
    """
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    if not isinstance(figures, Mapping):
        raise StoreError(f"plot(results, config) must return a dict of name -> Figure, got {type(figures).__name__}.")
    for name, fig in figures.items():
        if not isinstance(name, str) or not SAFE_NAME.match(name):
            raise StoreError(f"figure name {name!r} is not valid: use letters, digits, '_', '-' or '.'.")
        if not isinstance(fig, Figure):
            raise StoreError(f"figure {name!r} is a {type(fig).__name__}, expected a matplotlib Figure.")
    directory = pathlib.Path(directory)
    paths = []
    try:
        for name, fig in figures.items():
            for fmt in formats:
                target = directory / f"{name}.{fmt}"
                metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else None
                with atomic_path(target) as tmp:
                    fig.savefig(tmp, format=fmt, metadata=metadata)
                paths.append(target)
    finally:
        for fig in figures.values():
            plt.close(fig)
    return paths
