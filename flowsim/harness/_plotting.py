"""Shared plotting helpers: one style for every scenario's figures, and atomic PNG/PDF writes."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Mapping, Sequence

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
