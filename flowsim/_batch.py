"""``simulate_batch``: one compiled, vmapped solve of many problems, sharded over every device."""

import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._checks import as_int
from ._flow import ModifiedFlow
from ._problem import Problem
from ._simulate import simulate
from ._trajectory import Trajectory

_VALUE_OPTIONS = ("t1", "log_t1", "rtol", "atol", "target_log_loss")


@eqx.filter_jit
def _solve(problems, values, structure):
    """One compiled vmapped solve, cached by the problems' structure and ``structure``."""
    return eqx.filter_vmap(lambda problem: simulate(problem, **values, **structure))(problems)


def batch_size(problems) -> int:
    """The leading axis shared by every array leaf of a stacked Problem."""
    sizes = {np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(eqx.filter(problems, eqx.is_array))
             if np.ndim(leaf) > 0}
    if len(sizes) != 1:
        raise ValueError(
            "problems must be ONE Problem whose array leaves all carry the same leading batch axis "
            f"(e.g. eqx.filter_vmap(make_problem)(seeds)); found leading sizes {sorted(sizes)}"
        )
    return sizes.pop()


def simulate_batch(problems, *, chunk_size: int | None = None, devices=None, **options) -> Trajectory:
    """Solve a batch of problems as ONE compiled ``eqx.filter_vmap(fs.simulate)``, sharded over devices.

    **Arguments:**

    - ``problems``: a ``fs.Problem`` whose array leaves carry a leading batch axis (what
      ``eqx.filter_vmap(lambda seed: fs.Problem(...))(seeds)`` builds).
    - ``chunk_size``: members solved at once (default: the whole batch). Smaller chunks bound the
      memory, and since a vmapped solve steps in lockstep until its slowest member finishes, they
      also stop one slow member (a stiff one, or one stalled at a kink) from holding everyone.
    - ``devices``: the devices to shard over (default ``jax.devices()``: every GPU, or every CPU
      device — ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` makes four on one CPU; after
      ``jax.distributed.initialize()`` the devices of every process).
    - ``**options``: as ``fs.simulate`` (horizon, solver, tolerances, target, …). Under vmap
      ``solver="auto"`` cannot measure stiffness, so it is Kvaerno5 in log time and Tsit5 in
      linear time; name the solver when you know the problem.

    **Returns:** a batched ``fs.Trajectory``: every leaf with the batch axis first; each member keeps
    its own steps, status and message (``traj.message`` names the members that failed).

    Each chunk is padded to a multiple of the device count (with copies of its last member, dropped
    afterwards) and split over a one-axis ``jax.sharding.Mesh`` with ``NamedSharding``; JAX's
    partitioner runs the members of each device independently, with no communication.
    """
    if not isinstance(problems, (Problem, ModifiedFlow)):
        raise TypeError(f"problems must be a stacked flowsim.Problem, got {type(problems).__name__}")
    if "checkpoint" in options:
        raise ValueError("simulate_batch does not take checkpoint=: checkpoint single solves, or chunks yourself")
    size = batch_size(problems)
    chunk = size if chunk_size is None else as_int("chunk_size", chunk_size)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty: give at least one device")
    mesh = Mesh(np.asarray(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    # Values (tolerances, horizon, target) travel as arrays, so new values reuse the compiled solve;
    # the rest (solver, save count, ...) is structure and part of the cache key.
    values = {key: jnp.asarray(value, dtype=jnp.float64) for key, value in options.items()
              if key in _VALUE_OPTIONS and value is not None}
    structure = {key: value for key, value in options.items() if key not in values}

    start = time.perf_counter()
    pieces = []
    for begin in range(0, size, chunk):
        members = min(chunk, size - begin)
        padded = math.ceil(members / len(devices)) * len(devices)
        index = np.minimum(np.arange(begin, begin + padded), begin + members - 1)
        part = jax.tree_util.tree_map(lambda leaf: leaf[index] if eqx.is_array(leaf) else leaf, problems)
        part = eqx.filter(part, eqx.is_array)
        part = jax.device_put(part, sharding)
        part = eqx.combine(part, eqx.filter(problems, lambda leaf: not eqx.is_array(leaf)))
        result = _solve(part, values, structure)
        pieces.append(jax.tree_util.tree_map(lambda leaf: leaf[:members] if eqx.is_array(leaf) else leaf, result))
    if len(pieces) == 1:
        batched = pieces[0]
    else:
        batched = jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves) if eqx.is_array(leaves[0])
                                         else leaves[0], *pieces)
    batched = jax.block_until_ready(batched)
    wall = time.perf_counter() - start
    return eqx.tree_at(lambda tr: tr.stats["wall_time_s"], batched, jnp.full((size,), wall))
