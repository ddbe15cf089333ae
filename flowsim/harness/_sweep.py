"""Sweeps in scenario files: `for alpha in fs.sweep(alphas, desc="α"): ...`, with a progress bar,
or `fs.sweep(alphas, "α", each=solve, cache=resume)`, whose finished members survive a kill."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import tqdm

from ._store import flatten_results
from ._work import Resume

T = TypeVar("T")


def show_progress() -> bool:
    """Whether progress bars are shown: `FLOWSIM_PROGRESS=1`/`0` decides, else only when stderr is a terminal."""
    env = os.environ.get("FLOWSIM_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def sweep(
    values: Iterable[T],
    desc: str | None = None,
    *,
    unit: str = "run",
    each: Callable[[T], Mapping[str, Any]] | None = None,
    cache: Resume | None = None,
) -> Iterator[T] | list[dict[str, np.ndarray]]:
    """Go through `values` with a progress bar (runs done / total, time per run).

    **Arguments:**

    - `values`: what to sweep over (numbers, tuples, arrays, models, …).
    - `desc`: the bar's label; for a cached sweep also its name in the run's `work/` folder.
    - `unit`: what one value is called on the bar.
    - `each`: a function `value -> dict` of results (arrays, numbers, strings, `fs.Trajectory`s,
      nested dicts of those), as `run(config)` returns them.
    - `cache`: the `resume` that `flowsim run` passes to `run(config, resume)` (None: no cache). Members that
      finished in an interrupted run are loaded from its `work/` folder instead of recomputed,
      keyed by a SHA-256 of (`desc`, value); each new member is stored as soon as it finishes.

    **Returns:** without `each`, an iterator over `values`. With `each`, the list of
    `each(value)` results, each as a flat dict name → numpy array exactly as a run's results are
    stored and reloaded (a trajectory `flow` becomes `flow/log_t`, `flow/ok`, `flow/params/…`,
    …), so a member computed now and one loaded from an interrupted run look the same. Put the
    list into what `run` returns, e.g. `{"alpha": {str(i): m for i, m in enumerate(members)}}`:
    failed members then show up in the summary with their messages.

    The bar is drawn on stderr only when it is a terminal (or when `FLOWSIM_PROGRESS=1`),
    so logs and tests stay clean.
    """
    values = list(values)
    bar = tqdm.tqdm(values, desc=desc, unit=unit, disable=not show_progress(), leave=False, file=sys.stderr,
                    dynamic_ncols=True)
    if each is None:
        if cache is not None:
            raise ValueError("fs.sweep(cache=...) needs each=: a cached sweep stores what each(value) returns.")
        return iter(bar)
    if not callable(each):
        raise TypeError(f"each must be a function value -> dict of results, got {type(each).__name__}.")
    cache = Resume() if cache is None else cache  # None: what run(config, resume=None) gets outside flowsim run
    if not isinstance(cache, Resume):
        raise TypeError(f"cache must be the `resume` flowsim run passes to run(config, resume), got "
                        f"{type(cache).__name__}.")
    if cache.folder is not None and (not isinstance(desc, str) or not desc):
        raise ValueError("a cached fs.sweep needs desc= (a non-empty string): it names the sweep's saved members.")
    members = []
    for value in bar:
        arrays = cache.load_member(desc, value)
        if arrays is None:
            arrays, _ = flatten_results(each(value))
            cache.save_member(desc, value, arrays)
            arrays = cache.load_member(desc, value) if cache.folder is not None else _as_loaded(arrays)
        members.append(arrays)
    return members


def _as_loaded(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What `load_arrays` gives for these arrays, without the disk: 0-d arrays as numpy scalars."""
    return {k: (v[()] if v.ndim == 0 else v) for k, v in arrays.items()}
