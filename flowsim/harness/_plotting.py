"""Shared plotting helpers: one style for every scenario's figures (applied only while drawing, never
to matplotlib's global settings), failed solves shown as failed, and atomic PNG/PDF writes."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from ._scenario import _NAME
from ._store import StoreError, atomic_path

FORMATS = ("png", "pdf")

STYLE = {
    "figure.figsize": (7.0, 3.0),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 160,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextlib.contextmanager
def style():
    """Matplotlib rc settings shared by all scenario figures (the runner wraps `plot` in this)."""
    import matplotlib as mpl

    with mpl.rc_context(STYLE):
        yield


FAILED_STYLE = {"color": "0.55", "ls": ":", "lw": 1.0}


def note_failures(fig, failures: Sequence[Mapping]) -> None:
    """Write on `fig` that some solves of its run failed (the runner does this for every figure of
    such a run), so no curve of a failed member passes for a converged one.

    `failures` are the summary's `failed` records: result name, member, status, message."""
    from matplotlib.figure import Figure

    if not failures or not isinstance(fig, Figure):
        return
    names = []
    for f in failures:
        name = f["result"] + ("" if f["member"] is None else f"[{f['member']}]")
        names.append(f"{name} ({f['status']})")
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    # A strip of its own under the axes: the note must not sit on the x-axis labels.
    strip = 0.4  # inches: two lines of 7 pt
    width, height = fig.get_size_inches()
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine(None)
    fig.set_size_inches(width, height + strip)
    for ax in fig.axes:
        box = ax.get_position()
        scale = height / (height + strip)
        ax.set_position([box.x0, 1 - (1 - box.y0) * scale, box.width, box.height * scale])
    for text in fig.texts:
        x, y = text.get_position()
        text.set_position((x, 1 - (1 - y) * height / (height + strip)))
    fig.text(0.01, 0.15 * strip / (height + strip), f"NOT CONVERGED: {shown} — see summary.json", color="C3",
             fontsize=7, ha="left", va="bottom", wrap=True)


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
        if not isinstance(name, str) or not _NAME.match(name):
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
