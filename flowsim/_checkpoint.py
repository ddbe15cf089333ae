"""Checkpoints of a segmented solve: the carry and the solver policy's state between segments, written
atomically (no pickle)."""

import hashlib
import os
import pathlib
import tempfile

import equinox as eqx
import jax
import numpy as np

from ._flow import base_problem
from ._policy import IMPLICIT_SEGMENT_STEPS, SEGMENT_STEPS


def fingerprint(plan) -> str:
    """A digest of everything a solve's result depends on: a checkpoint made with other arguments is
    refused. `max_steps` is left out on purpose: resuming with a larger budget is the common case."""
    digest = hashlib.sha256()
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter((plan.problem, plan.save_times, plan.settings),
                                                            eqx.is_array))
    digest.update(str(treedef).encode())
    for leaf in leaves:
        array = np.asarray(leaf)
        digest.update(str((array.shape, array.dtype)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    static_part = eqx.filter((plan.problem,), lambda leaf: not eqx.is_array(leaf))
    digest.update(repr(jax.tree_util.tree_structure(static_part)).encode())
    solver = plan.solver if isinstance(plan.solver, str) else (
        type(plan.solver).__name__, str(jax.tree_util.tree_structure(plan.solver)))
    digest.update(repr((type(base_problem(plan.problem).model).__name__, solver, plan.linear_solver, plan.log_time,
                        plan.has_target, SEGMENT_STEPS, IMPLICIT_SEGMENT_STEPS)).encode())
    return digest.hexdigest()


class CheckpointStore:
    """One solve's checkpoint at `path`: the arrays of its carry plus a fingerprint of its arguments.

    Written to a temporary file in the same folder and moved into place with `os.replace`, so a
    kill at any moment leaves either the previous checkpoint or the new one, never half a file."""

    def __init__(self, path, fingerprint: str):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path, got {path!r}")
        self.path = pathlib.Path(path)
        if self.path.exists() and self.path.is_dir():
            raise ValueError(f"checkpoint {str(self.path)!r} is a directory; give a file path")
        self.fingerprint = fingerprint
        self.policy_state = None  # the solver policy's state (JSON) of the last checkpoint loaded

    def save(self, carry, solver: str, policy_state: str | None = None) -> None:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(carry) if isinstance(leaf, jax.Array)]
        arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        arrays["fingerprint"] = np.asarray(self.fingerprint)
        arrays["solver"] = np.asarray(solver)
        if policy_state is not None:
            arrays["policy"] = np.asarray(policy_state)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary names its process, so a later run can tell a killed writer's leftover from a live write.
        handle, temporary = tempfile.mkstemp(prefix=f"{self.path.name}.{os.getpid()}.", suffix=".tmp",
                                             dir=self.path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            pathlib.Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, template_for):
        """(carry, solver) from the file, or None when there is none. `template_for(solver)` gives
        a carry of the right structure (shapes only) for that solver."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                contents = {key: data[key] for key in data.files}
        except Exception as error:  # a damaged file is the user's to remove, not ours to guess
            raise ValueError(f"checkpoint {str(self.path)!r} cannot be read ({error}); delete it to start over") from error
        if str(contents.get("fingerprint")) != self.fingerprint:
            raise ValueError(
                f"checkpoint {str(self.path)!r} was written by a solve with different arguments (problem, horizon, "
                "tolerances, solver, target or save grid); delete it or pass another path to start over"
            )
        solver = str(contents["solver"])
        self.policy_state = str(contents["policy"]) if "policy" in contents else None
        template = template_for(solver)
        leaves, treedef = jax.tree_util.tree_flatten(template)
        slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.ShapeDtypeStruct)]
        if len(slots) != sum(key.startswith("leaf_") for key in contents):
            raise ValueError(f"checkpoint {str(self.path)!r} does not match this solve; delete it to start over")
        import jax.numpy as jnp

        for count, i in enumerate(slots):
            stored = contents[f"leaf_{count}"]
            if tuple(leaves[i].shape) != tuple(stored.shape):
                raise ValueError(f"checkpoint {str(self.path)!r} does not match this solve (array {count} has shape "
                                 f"{stored.shape}, expected {tuple(leaves[i].shape)}); delete it to start over")
            leaves[i] = jnp.asarray(stored, dtype=leaves[i].dtype)
        return jax.tree_util.tree_unflatten(treedef, leaves), solver
