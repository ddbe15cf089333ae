"""Progress for sweeps in scenario files: `for alpha in fs.sweep(alphas, desc="α"): ...`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import tqdm

T = TypeVar("T")


def show_progress() -> bool:
    """Whether progress bars are shown: `FLOWSIM_PROGRESS=1`/`0` decides, else only when stderr is a terminal."""
    env = os.environ.get("FLOWSIM_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def sweep(values: Iterable[T], desc: str | None = None, *, unit: str = "run") -> Iterator[T]:
    """Iterate over `values` with a progress bar (runs done / total, time per run).

    The bar is drawn on stderr only when it is a terminal (or when `FLOWSIM_PROGRESS=1`),
    so logs and tests stay clean.
    """
    values = list(values)
    yield from tqdm.tqdm(
        values, desc=desc, unit=unit, disable=not show_progress(), leave=False, file=sys.stderr, dynamic_ncols=True
    )
