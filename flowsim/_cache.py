"""`fs.cache(path)`: content-hashed results of every solve, so an interrupted script or scenario resumes.

Inside `with fs.cache(path):` each call of the public `fs.simulate`, `fs.simulate_batch`,
`fs.gradient_descent`, `fs.smoothed_limit` and `fs.simulate_or_smoothed` is keyed by a SHA-256 of everything its result depends
on, and its result is stored in `path` as soon as it returns. A call whose key is already stored is
replayed from the file instead of computed; an eager `fs.simulate` given no `checkpoint=` writes one
into `path` as it goes, so a solve killed halfway continues from its last checkpoint.

**The key** covers the function's name; every argument after binding to its signature (defaults
included): arrays by dtype, shape and bytes, numbers by their exact binary value, models and problems
by class (module and name) and every field, static ones included, functions by module, name and
bytecode; flowsim's `__version__` and a digest of its source files; and the versions of JAX,
Equinox, Diffrax and NumPy. Left out are the options that do not change a result: `progress`,
`checkpoint` and `checkpoint_every_s`. A value with no stable content (an object whose only
description is its address in memory) makes the call uncached — it runs as without the cache — and
a call under `jax.jit`/`vmap` (traced arguments) always runs.

**An entry** is `<function>-<key>.npz` (the result's arrays, written without pickle) plus
`<function>-<key>.json` (its structure, the full key, the SHA-256 of the `.npz`), each written to a
temporary file, fsynced and renamed into place, the record last. An entry whose record is missing or
unreadable, whose checksum or key does not match, or whose structure does not fit the models of this
call is refused and recomputed: it is never unpickled (`np.load(allow_pickle=False)`), and the
result is rebuilt from the stored arrays and the models of the call itself — the only classes ever
instantiated are `fs.Trajectory`, `fs.SmoothedLimit` and the classes of the call's own arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import json
import numbers
import os
import pathlib
import re
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._batch import simulate_batch as _simulate_batch
from ._gd import gradient_descent as _gradient_descent
from ._simulate import simulate as _simulate
from ._smoothed_result import DEFAULT_WIDTHS, SmoothedLimit
from ._trajectory import Trajectory
from .networks._smoothed import Smoothed

FORMAT = "flowsim-cache/1"
# Options that say how a call runs, not what it computes: they are left out of the key.
NOT_KEYED = ("progress", "checkpoint", "checkpoint_every_s")
CHECKPOINT_EVERY_S = 5.0
_RESULT_CLASSES = {"Trajectory": Trajectory, "SmoothedLimit": SmoothedLimit}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

_active: contextvars.ContextVar[SolveCache | None] = contextvars.ContextVar("flowsim_cache", default=None)


class _Uncacheable(Exception):
    """A value with no stable content: the call runs uncached."""


# --------------------------------------------------------------------------------------------
# The context manager


@contextlib.contextmanager
def cache(path, *, replay: bool = True, checkpoint_every_s: float | None = None,
          log: Callable[[str], None] | None = None) -> Iterator[SolveCache]:
    """Store the result of every solve inside the `with` block in the folder `path`, and replay a
    stored one instead of solving again.

    ```python
    with fs.cache("work/"):
        traj = fs.simulate(problem, log_t1=1e4)   # solved, stored in work/
    with fs.cache("work/"):
        traj = fs.simulate(problem, log_t1=1e4)   # replayed from work/ (bitwise the same)
    ```

    Each call of `fs.simulate`, `fs.simulate_batch`, `fs.gradient_descent` or `fs.smoothed_limit`
    is keyed by a SHA-256 of its inputs (arrays, model structure and static fields, every option,
    flowsim's version and source): a call that differs in one array element, one option or the
    version is computed afresh; only the calls it feeds change. An eager `fs.simulate` without a
    `checkpoint=` checkpoints into `path` every `checkpoint_every_s` seconds (default 5, or the
    environment's `FLOWSIM_CHECKPOINT_EVERY_S`), so a killed solve continues where it stopped.
    Damaged or altered entries are refused (and recomputed), never unpickled. `flowsim run` runs
    every scenario inside one (`runs/.cache/<name>/`).

    **Arguments:**

    - `path`: the folder (created if needed).
    - `replay`: False computes every call again and overwrites its entry (`flowsim run --fresh`).
    - `checkpoint_every_s`: how often an automatic checkpoint is written.
    - `log`: where a refused entry is reported (default: standard error).

    **Returns** (as the `with` target): the `SolveCache`, whose `reused`, `computed`, `continued`
    (the log t each resumed solve continued from), `refused` and `uncached` count what happened.
    The cache is a context variable: it applies to the code inside the `with` (and the threads and
    tasks it starts with a copied context), never after it.
    """
    store = SolveCache(path, replay=replay, checkpoint_every_s=checkpoint_every_s, log=log)
    token = _active.set(store)
    try:
        yield store
    finally:
        _active.reset(token)


def active_cache() -> SolveCache | None:
    """The `SolveCache` of the innermost `fs.cache` block around this call, or None."""
    return _active.get()


class SolveCache:
    """One cache folder and what happened to the calls made while it was active (see `fs.cache`)."""

    def __init__(self, path, *, replay: bool = True, checkpoint_every_s: float | None = None,
                 log: Callable[[str], None] | None = None):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"fs.cache needs a folder path, got {type(path).__name__}")
        self.folder = pathlib.Path(path)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"fs.cache: {str(self.folder)!r} exists and is not a folder")
        if checkpoint_every_s is None:
            checkpoint_every_s = float(os.environ.get("FLOWSIM_CHECKPOINT_EVERY_S", CHECKPOINT_EVERY_S))
        if not (isinstance(checkpoint_every_s, numbers.Real) and checkpoint_every_s >= 0):
            raise ValueError(f"checkpoint_every_s must be a number >= 0, got {checkpoint_every_s!r}")
        self.replay = bool(replay)
        self.checkpoint_every_s = float(checkpoint_every_s)
        self.log = log if log is not None else _stderr
        self.reused = 0
        self.computed = 0
        self.continued: list[float] = []
        self.refused: list[str] = []
        self.uncached = 0
        self._said: set[str] = set()
        self.folder.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(self.folder)

    def entry(self, name: str, key: str) -> pathlib.Path:
        """The `.npz` of the entry with this key (its record is the same path with `.json`)."""
        return self.folder / f"{name}-{key[:40]}.npz"

    def call(self, name: str, fn: Callable, signature: inspect.Signature, args: tuple, kwargs: dict):
        """`fn(*args, **kwargs)`, replayed from the folder when stored, else computed and stored."""
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return fn(*args, **kwargs)  # let the function say what is wrong with its arguments
        bound.apply_defaults()
        arguments = {k: v for k, v in bound.arguments.items() if k not in NOT_KEYED}
        options = arguments.get("options")
        if isinstance(options, Mapping):  # a **options parameter: its keys are options too
            arguments["options"] = {k: v for k, v in options.items() if k not in NOT_KEYED}
        try:
            key = call_key(name, arguments)
        except _Uncacheable as why:
            self._uncached(name, f"its arguments hold {why}")
            return fn(*args, **kwargs)
        templates = _templates(name, bound.arguments)
        path = self.entry(name, key)
        if self.replay:
            result = self._load(path, key, templates)
            if result is not None:
                self.reused += 1
                path.with_suffix(".checkpoint").unlink(missing_ok=True)  # a kill after the store left it
                return result
        auto_checkpoint = None
        if "checkpoint" in signature.parameters and bound.arguments.get("checkpoint") is None:
            auto_checkpoint = path.with_suffix(".checkpoint")
            if not self.replay:
                auto_checkpoint.unlink(missing_ok=True)
            kwargs = dict(kwargs, checkpoint=auto_checkpoint)
            kwargs.setdefault("checkpoint_every_s", self.checkpoint_every_s)
        result = fn(*args, **kwargs)
        self.computed += 1
        resumed = _resumed_from(result)
        if resumed is not None:
            self.continued.append(resumed)
        self._store(path, key, name, result, templates)
        if auto_checkpoint is not None:
            auto_checkpoint.unlink(missing_ok=True)  # the entry holds the result now
        return result

    def _uncached(self, name: str, why: str) -> None:
        """Count a call that could not be cached; say why once per reason (a traced call is expected)."""
        self.uncached += 1
        if "traced" not in why and why not in self._said:
            self._said.add(why)
            self.log(f"flowsim cache: a call of {name} is not cached ({why}); it runs as without the cache, "
                     "and a rerun computes it again")

    # -- reading and writing entries ---------------------------------------------------------

    def _load(self, path: pathlib.Path, key: str, templates: list):
        record_path = path.with_suffix(".json")
        if not path.is_file() and not record_path.is_file():
            return None
        try:
            if not record_path.is_file():
                raise ValueError("its record is missing (a write was interrupted)")
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError("its record is not a flowsim cache record")
            if record.get("key") != key:
                raise ValueError("its record is for other inputs")
            if file_sha256(path) != record.get("sha256"):
                raise ValueError("its arrays do not match the checksum in its record (truncated or altered)")
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            result = _decode(record["structure"], arrays, templates)
        except Exception as error:  # noqa: BLE001 - any damage means: recompute, never trust
            self.refused.append(path.name)
            self.log(f"flowsim cache: refused {path} ({error}); recomputing it")
            return None
        return result

    def _store(self, path: pathlib.Path, key: str, name: str, result, templates: list) -> None:
        arrays: dict[str, np.ndarray] = {}
        try:
            structure = _encode(result, arrays, templates)
        except _Uncacheable as why:
            self._uncached(name, f"its result holds {why}")
            return
        _atomic_write(path, lambda f: np.savez(f, **arrays))
        version, source, versions = _environment()
        record = {"format": FORMAT, "function": name, "key": key, "sha256": file_sha256(path), "structure": structure,
                  "environment": {"flowsim": version, "source_sha256": source, "versions": dict(versions)}}
        text = json.dumps(record, allow_nan=False, separators=(",", ":"))
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(text.encode()))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _resumed_from(result) -> float | None:
    if isinstance(result, Trajectory):
        value = dict(result.metadata).get("resumed_from_log_t")
        return float(value) if isinstance(value, numbers.Real) else None
    return None


def file_sha256(path: pathlib.Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: pathlib.Path, write: Callable) -> None:
    """Write to `.<name>.<pid>.<random>.part` next to `path`, fsync, rename over `path`, fsync the folder."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible everywhere)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _remove_dead_temporaries(folder: pathlib.Path) -> None:
    """Temporary files of writes a kill interrupted (`.<name>.<pid>.<random>.part` of an entry,
    `<name>.checkpoint.<pid>.<random>.tmp` of a checkpoint): removed when the process they name is gone;
    a checkpoint temporary that names no process (an older flowsim) once it is a minute old."""
    for part in folder.glob(".*.part"):
        pid = part.name.split(".")[-3] if part.name.count(".") >= 4 else ""
        if pid.isdigit() and not _alive(int(pid)):
            part.unlink(missing_ok=True)
    for temporary in folder.glob("*.checkpoint.*.tmp"):
        pid = temporary.name.split(".")[-3]
        with contextlib.suppress(OSError):
            if (not _alive(int(pid))) if pid.isdigit() else time.time() - temporary.stat().st_mtime > 60.0:
                temporary.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# Keys


def call_key(name: str, arguments: Mapping) -> str:
    """The SHA-256 hex digest that identifies a call of `name` with these bound arguments."""
    digest = hashlib.sha256()
    _feed(digest, (FORMAT, name, _environment()), depth=0)
    _feed(digest, dict(arguments), depth=0)
    return digest.hexdigest()


def _source_digest() -> str:
    """SHA-256 of flowsim's source files, taken when flowsim is imported: the code this process runs."""
    root = pathlib.Path(__file__).parent
    source = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        source.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return source.hexdigest()


_SOURCE_SHA256 = _source_digest()


@functools.cache
def _environment() -> tuple:
    """flowsim's version and a digest of its source files, and the versions of the libraries under it."""
    import flowsim

    versions = []
    for package in ("jax", "jaxlib", "equinox", "diffrax", "numpy"):
        try:
            versions.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((package, None))
    return getattr(flowsim, "__version__", None), _SOURCE_SHA256, tuple(versions)


def _feed(digest, value, depth: int) -> None:
    if depth > 50:
        raise _Uncacheable("nested too deeply")
    depth += 1
    if value is None or isinstance(value, (bool, np.bool_)):
        digest.update(f"<{value!r}>".encode())
    elif isinstance(value, jax.core.Tracer):
        raise _Uncacheable("a traced value")
    elif isinstance(value, enum.Enum):
        digest.update(f"<enum {_type_name(type(value))}.{value.name}>".encode())
    elif isinstance(value, numbers.Integral) and not isinstance(value, (np.ndarray, np.generic)):
        digest.update(f"<int {int(value)}>".encode())
    elif isinstance(value, float):
        digest.update(f"<float {value.hex()}>".encode())
    elif isinstance(value, complex):
        digest.update(f"<complex {value.real.hex()} {value.imag.hex()}>".encode())
    elif isinstance(value, str):
        digest.update(f"<str {len(value)}>".encode() + value.encode())
    elif isinstance(value, bytes):
        digest.update(f"<bytes {len(value)}>".encode() + value)
    elif isinstance(value, (np.ndarray, np.generic, jax.Array)):
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype.hasobject:
            raise _Uncacheable("an object array")
        weak = bool(getattr(value, "weak_type", False))
        digest.update(f"<array {array.dtype.str} {array.shape} {weak}>".encode() + array.tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"<{_type_name(type(value))} {len(value)}>".encode())
        for item in value:
            _feed(digest, item, depth)
    elif isinstance(value, Mapping):
        digest.update(f"<{_type_name(type(value))} {len(value)}>".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key, depth)
            _feed(digest, value[key], depth)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # Equinox modules included
        fields = dataclasses.fields(value)
        digest.update(f"<dataclass {_type_name(type(value))} {len(fields)}>".encode())
        for field in fields:
            _feed(digest, field.name, depth)
            _feed(digest, getattr(value, field.name, None), depth)
    elif isinstance(value, (np.dtype, type)):
        digest.update(f"<type {_type_name(value) if isinstance(value, type) else value.str}>".encode())
    elif callable(value):
        _feed_function(digest, value, depth)
    else:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        if len(leaves) == 1 and leaves[0] is value:
            text = repr(value)
            if _ADDRESS.search(text):
                raise _Uncacheable(f"a value of type {type(value).__name__} with no stable content (only its address)")
            digest.update(f"<repr {_type_name(type(value))} {text}>".encode())
        else:
            digest.update(f"<tree {_ADDRESS.sub('', str(treedef))}>".encode())
            for leaf in leaves:
                _feed(digest, leaf, depth)


def _feed_function(digest, fn, depth: int) -> None:
    """A function by module, qualified name and what it computes (bytecode, constants, defaults, closure)."""
    inner = fn
    while True:  # jax.jit, custom_jvp and functools.wraps keep the function they wrap here
        nxt = getattr(inner, "__wrapped__", None) or getattr(inner, "fun", None)
        if nxt is None or nxt is inner or not callable(nxt):
            break
        inner = nxt
    if isinstance(inner, functools.partial):
        digest.update(b"<partial>")
        _feed(digest, (inner.func, inner.args, inner.keywords), depth)
        return
    module = getattr(inner, "__module__", None)
    qualname = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
    if not isinstance(qualname, str):
        raise _Uncacheable(f"a {type(fn).__name__} with no name")
    digest.update(f"<function {module}.{qualname}>".encode())
    bound_to = getattr(inner, "__self__", None)
    if bound_to is not None and not isinstance(bound_to, types.ModuleType):  # a bound method: its object too
        _feed(digest, bound_to, depth)
    code = getattr(inner, "__code__", None)
    if isinstance(code, types.CodeType):
        _feed_code(digest, code, depth)
        _feed(digest, getattr(inner, "__defaults__", None), depth)
        _feed(digest, getattr(inner, "__kwdefaults__", None), depth)
        for cell in getattr(inner, "__closure__", None) or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell
                contents = None
            _feed(digest, contents, depth)


def _feed_code(digest, code: types.CodeType, depth: int) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(digest, const, depth)
        else:
            _feed(digest, const, depth)


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------
# Results as arrays + a JSON structure, rebuilt without unpickling


def _templates(name: str, arguments: Mapping) -> list:
    """The models a result's model-valued parts are rebuilt from: every Equinox module among the call's
    arguments, and for `smoothed_limit` its smoothed networks (one per width)."""
    found: list = []
    _collect_modules(dict(arguments), found, depth=0)
    if name in ("smoothed_limit", "simulate_or_smoothed"):
        problem = arguments.get("problem")
        widths = arguments.get("widths", DEFAULT_WIDTHS)
        with contextlib.suppress(Exception):  # bad arguments: smoothed_limit itself says what is wrong
            found.extend(Smoothed(problem.model, float(w)) for w in widths)
    return found


def _collect_modules(value, found: list, depth: int) -> None:
    if depth > 50:
        return
    if isinstance(value, eqx.Module):
        found.append(value)
        for field in dataclasses.fields(value):
            _collect_modules(getattr(value, field.name, None), found, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_modules(item, found, depth + 1)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_modules(item, found, depth + 1)


def _encode(value, arrays: dict, templates: list):
    """A JSON description of `value`; its arrays go into `arrays` (`a0`, `a1`, …)."""
    if isinstance(value, jax.core.Tracer):
        raise _Uncacheable("a traced result")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return {"int": str(value)}
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise _Uncacheable("an object array")
        key = f"a{len(arrays)}"
        arrays[key] = array
        kind = "jax" if isinstance(value, jax.Array) else ("numpy" if isinstance(value, np.ndarray) else "scalar")
        return {"array": key, "kind": kind}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return {type(value).__name__: [_encode(item, arrays, templates) for item in value]}
    if type(value) is dict:
        if not all(isinstance(k, str) for k in value):
            raise _Uncacheable("a dict with non-string keys")
        return {"dict": [[k, _encode(v, arrays, templates)] for k, v in value.items()]}
    if type(value) in _RESULT_CLASSES.values():
        fields = {f.name: _encode(getattr(value, f.name), arrays, templates) for f in dataclasses.fields(value)}
        return {"result": type(value).__name__, "fields": fields}
    if isinstance(value, eqx.Module):
        treedef = jax.tree_util.tree_structure(value)
        for index, template in enumerate(templates):
            template_leaves, template_def = jax.tree_util.tree_flatten(template)
            if template_def != treedef:
                continue
            leaves = []
            for leaf, template_leaf in zip(jax.tree_util.tree_leaves(value), template_leaves, strict=True):
                if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
                    leaves.append(_encode(leaf, arrays, templates))
                elif leaf is template_leaf:
                    leaves.append({"template_leaf": True})
                else:
                    break
            else:
                return {"model": index, "leaves": leaves}
        raise _Uncacheable(f"a {type(value).__name__} that none of the call's models describes")
    raise _Uncacheable(f"a {type(value).__name__} in the result")


def _decode(node, arrays: Mapping[str, np.ndarray], templates: list):
    if node is None or isinstance(node, (bool, str)):
        return node
    if not isinstance(node, dict) or not node:
        raise ValueError(f"unexpected structure {str(node)[:60]!r}")
    if "int" in node:
        return int(node["int"])
    if "float" in node:
        return float.fromhex(node["float"])
    if "array" in node:
        array = arrays[node["array"]]
        if node.get("kind") == "jax":
            return jnp.asarray(array)
        return array[()] if node.get("kind") == "scalar" else array
    if "list" in node:
        return [_decode(item, arrays, templates) for item in node["list"]]
    if "tuple" in node:
        return tuple(_decode(item, arrays, templates) for item in node["tuple"])
    if "dict" in node:
        return {str(k): _decode(v, arrays, templates) for k, v in node["dict"]}
    if "result" in node:
        cls = _RESULT_CLASSES[node["result"]]
        fields = node["fields"]
        names = [f.name for f in dataclasses.fields(cls)]
        if sorted(fields) != sorted(names):
            raise ValueError(f"a {cls.__name__} with fields {sorted(fields)}")
        obj = object.__new__(cls)  # as Equinox's own unflatten does: no __init__ runs
        for field_name in names:
            object.__setattr__(obj, field_name, _decode(fields[field_name], arrays, templates))
        return obj
    if "model" in node:
        template = templates[int(node["model"])]
        template_leaves, treedef = jax.tree_util.tree_flatten(template)
        stored = node["leaves"]
        if len(stored) != len(template_leaves):
            raise ValueError(f"a model with {len(stored)} leaves where this call's has {len(template_leaves)}")
        leaves = [template_leaf if isinstance(item, dict) and item.get("template_leaf") is True
                  else _decode(item, arrays, templates)
                  for item, template_leaf in zip(stored, template_leaves, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, leaves)
    raise ValueError(f"unexpected structure {str(node)[:60]!r}")


# --------------------------------------------------------------------------------------------
# The public functions, keyed inside `fs.cache`


def cached(name: str, fn: Callable) -> Callable:
    """`fn` unchanged outside `fs.cache`; inside, its calls are replayed or stored (`SolveCache.call`)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        store = _active.get()
        if store is None:
            return fn(*args, **kwargs)
        return store.call(name, fn, signature, args, kwargs)

    return wrapper


simulate = cached("simulate", _simulate)
simulate_batch = cached("simulate_batch", _simulate_batch)
gradient_descent = cached("gradient_descent", _gradient_descent)

