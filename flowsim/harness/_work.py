"""Resuming an interrupted `flowsim run`: the run folder's `work/` subfolder (opt-in work that is not a solve).

Every solve resumes without this: `flowsim run` runs the scenario inside `fs.cache(OUT/.cache/<name>/)`
(`flowsim._cache`), which stores each `fs.simulate`/`simulate_batch`/`gradient_descent`/`smoothed_limit`
call by a content hash of its inputs and checkpoints eager solves. What follows is for scenarios that
also keep other work: `run(config, resume)` and `fs.sweep(..., each=f, cache=resume)`.

While a run is unfinished, `runs/<name>/work/` holds what it has done so far:

- `run.json` — the scenario, its config and the SHA-256 of the scenario file. A rerun resumes only
  when all three match; otherwise it is refused (`--fresh` discards the folder and starts over),
  so partial work made with other arguments or other code is never mixed into a result.
- `<sweep>-<key>.npz` + `.json` — one finished member of `fs.sweep(values, desc, each=f,
  cache=resume)`: the arrays `f(value)` returned (no pickle) and their SHA-256.
- `<name>-<key>.checkpoint` — the state of a solve that was given
  `checkpoint=resume.checkpoint(name, ...)`, written by `fs.simulate` itself.

The folder is deleted once the run's summary is written: a finished run is never resumed, and
rerunning it recomputes everything. Keys are SHA-256 digests of the values (numbers by their
exact binary value, arrays by dtype, shape and bytes), never Python's salted `hash`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import pathlib
import re
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ._store import StoreError, load_arrays, save_arrays, sha256, to_jsonable, write_json

WORK_DIR = "work"
MANIFEST = "run.json"
WORK_FORMAT = "flowsim-work/1"


def value_key(*parts: Any) -> str:
    """A stable SHA-256 hex digest of `parts`: numbers, strings, bools, None, arrays, and lists,
    tuples, dicts and pytrees (e.g. Equinox models) of those. Equal values give equal keys in
    every process; anything else is refused in words."""
    digest = hashlib.sha256()
    _feed(digest, parts)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if value is None or isinstance(value, (bool, np.bool_)):
        digest.update(f"<{value!r}>".encode())
    elif isinstance(value, numbers.Integral):
        digest.update(f"<int {int(value)}>".encode())
    elif isinstance(value, numbers.Real):
        digest.update(f"<float {float(value).hex()}>".encode())
    elif isinstance(value, str):
        digest.update(f"<str {len(value)}>".encode() + value.encode())
    elif isinstance(value, (np.ndarray, np.generic, jax.Array)):
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype.kind not in "biufcUS":
            raise StoreError(f"a sweep value of dtype {array.dtype} has no stable key; use numbers, strings or "
                             "numeric arrays.")
        digest.update(f"<array {array.dtype.str} {array.shape}>".encode() + array.tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"<{type(value).__name__} {len(value)}>".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, Mapping):
        digest.update(f"<dict {len(value)}>".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    else:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        if len(leaves) == 1 and leaves[0] is value:
            raise StoreError(f"a sweep value {value!r} ({type(value).__name__}) has no stable key; use numbers, "
                             "strings, arrays, or pytrees of those.")
        digest.update(f"<tree {treedef}>".encode())
        for leaf in leaves:
            _feed(digest, leaf)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return slug[:40] or "x"


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where a scenario's `run` keeps work that a rerun of an interrupted `flowsim run` picks up.

    `flowsim run` passes one as the second argument when `run` accepts two, so a scenario opts in
    with `def run(config, resume=None):` (None when `run` is called by hand: nothing is saved).
    `Resume()` without a folder saves nothing either: `checkpoint` gives None and a cached sweep
    recomputes every member.

    **Arguments:**

    - `folder`: the run's `work/` folder, or None.

    Use it in two places: `fs.simulate(..., checkpoint=resume.checkpoint("flow") if resume else
    None)` resumes an interrupted solve from its last checkpoint, and `fs.sweep(values, desc,
    each=f, cache=resume)` loads the members that finished instead of recomputing them (inside
    `f`, give each member's solve its own `resume.checkpoint(desc, value)`).
    """

    folder: pathlib.Path | None = None

    def checkpoint(self, name: str, *key: Any) -> pathlib.Path | None:
        """The checkpoint file for the solve called `name` (plus any values that tell solves of one
        sweep apart, e.g. `resume.checkpoint("α", alpha)`); None when nothing is saved."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"checkpoint name must be a non-empty string, got {name!r}.")
        if self.folder is None:
            return None
        return self.folder / f"{_slug(name)}-{value_key(name, *key)[:20]}.checkpoint"

    def _member(self, desc: str, value) -> pathlib.Path:
        return self.folder / f"{_slug(desc)}-{value_key(desc, value)[:20]}.npz"

    def load_member(self, desc: str, value) -> dict[str, np.ndarray] | None:
        """The saved arrays of the sweep member (`desc`, `value`), or None if it has not finished.

        A member file without its checksum record (a kill between the two writes) counts as
        unfinished; one whose checksum does not match is refused."""
        if self.folder is None:
            return None
        path = self._member(desc, value)
        record = path.with_suffix(".json")
        if not (path.is_file() and record.is_file()):
            return None
        try:
            expected = json.loads(record.read_text(encoding="utf-8"))["sha256"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"{record} is not a sweep member record ({e}); rerun with --fresh.") from None
        if sha256(path) != expected:
            raise StoreError(f"{path} (sweep {desc!r}, value {_short_repr(value)}) does not match its checksum in "
                             f"{record.name} (truncated or altered); rerun with --fresh.")
        return load_arrays(path)

    def save_member(self, desc: str, value, arrays: Mapping[str, np.ndarray]) -> None:
        """Store a finished sweep member: its arrays first, then the record with their checksum."""
        if self.folder is None:
            return
        path = self._member(desc, value)
        digest = save_arrays(path, arrays)
        write_json(path.with_suffix(".json"), {"sweep": desc, "value": _short_repr(value), "sha256": digest})

    def saved(self) -> dict[str, int]:
        """How many sweep members and solve checkpoints the folder holds."""
        if self.folder is None or not self.folder.is_dir():
            return {"sweep_members": 0, "checkpoints": 0}
        members = sum(1 for p in self.folder.glob("*.json") if p.name != MANIFEST and p.with_suffix(".npz").is_file())
        return {"sweep_members": members, "checkpoints": len(list(self.folder.glob("*.checkpoint")))}


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def open_work(run_dir: pathlib.Path, manifest: dict, *, fresh: bool) -> tuple[Resume, bool]:
    """The `Resume` of a run in `run_dir`, and whether it resumes an interrupted run.

    `manifest` says what the run is (scenario, config, scenario file digest). An existing `work/`
    with the same manifest is resumed; with another it is refused, naming what differs, unless
    `fresh`, which deletes it first."""
    folder = pathlib.Path(run_dir) / WORK_DIR
    manifest = to_jsonable({"format": WORK_FORMAT, **manifest})
    if fresh and folder.exists():
        shutil.rmtree(folder)
    record = folder / MANIFEST
    if folder.is_dir() and record.is_file():
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = None
        if saved != manifest:
            raise StoreError(f"{folder} holds the unfinished work of a run with {_difference(saved, manifest)}; "
                             "rerun with --fresh to discard it and start over.")
        return Resume(folder), True
    if folder.exists():  # killed before the manifest was written: nothing in it can be trusted
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(record, manifest)
    return Resume(folder), False


def _difference(saved, manifest: dict) -> str:
    if not isinstance(saved, dict) or saved.get("format") != WORK_FORMAT:
        return "an unreadable record"
    if saved.get("scenario") != manifest["scenario"]:
        return f"another scenario ({saved.get('scenario')!r})"
    if saved.get("file_sha256") != manifest["file_sha256"]:
        return "an earlier version of the scenario file"
    old, new = saved.get("config") or {}, manifest["config"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return "other arguments"
    return "another config (" + ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys) + ")"


def close_work(resume: Resume) -> None:
    """Delete the work folder of a run whose summary has been written."""
    if resume.folder is not None and resume.folder.is_dir():
        shutil.rmtree(resume.folder)

