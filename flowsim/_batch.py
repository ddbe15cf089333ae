"""`simulate_batch`: many problems as vmapped solves, sharded over every device (and every process).

Two schedules. `"lockstep"`: each chunk is ONE compiled `eqx.filter_vmap(fs.simulate)`; a vmapped
while loop runs until its slowest member is done, so every member pays the slowest one's steps.
`"refill"`: a fixed set of slots steps in short segments (the engine's own exact continuation:
solver, controller state and next step carried over); after each segment the members that finished
leave their slots and the next members of the batch take them, so no member waits for a slow one for
longer than a segment. Both give every member exactly the steps and values of its own single solve.

Models with kinks run the band field in a batch (`nonsmooth="auto"` or `"band"`: one vmapped program).
`nonsmooth="sliding"`: event-driven sliding restarts each solve from Python at every event, so it cannot be
vmapped; each member is its own eager `fs.simulate(member, nonsmooth="sliding")`, one after another, and the
results are stacked into one batched `Trajectory` (`_sliding_loop`).
"""

import contextlib
import dataclasses
import inspect
import math
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._checks import as_choice, as_int
from ._engine import finish_arrays, init_carry, metadata_tuple, segment
from ._flow import ModifiedFlow, make_field
from ._plan import plan, solver_choice
from ._problem import Problem
from ._simulate import simulate
from ._sliding import sliding_refusal
from ._trajectory import Status, Trajectory

_VALUE_OPTIONS = ("t1", "log_t1", "rtol", "atol", "target_log_loss")
SCHEDULES = ("lockstep", "refill")
NONSMOOTH_METHODS = ("auto", "band", "sliding")
# Metadata that a sliding batch always keeps per member (a tuple, member by member): what `solver="auto"` ran on
# each member's strata, and whether its last segment was implicit.
_PER_MEMBER = ("auto", "implicit")


@eqx.filter_jit
def _solve(problems, values, structure):
    """One compiled vmapped solve, cached by the problems' structure and `structure`."""
    return eqx.filter_vmap(lambda problem: simulate(problem, **values, **structure))(problems)


@eqx.filter_jit
def _refill_segment(problems, carry, is_new, save_times, settings, band, static, solvers):
    """One segment for every slot: slots with `is_new` start their member's solve afresh (`init_carry`),
    the others continue theirs; at most `static.max_steps` steps each. `band`: the plan's kink band (the
    members share the model's structure and the tolerances, so they share it)."""

    def one(problem, kept, new):
        theta0, field = make_field(problem, static.log_time, band=band)
        start = init_carry(field, theta0, save_times, settings, static, solvers)
        carry = jax.tree_util.tree_map(lambda a, b: jnp.where(new, a, b), start, kept)
        return segment(field, carry, save_times, settings, settings.time1, static, solvers[static.solver])

    return eqx.filter_vmap(one)(problems, carry, is_new)


@eqx.filter_jit
def _refill_finish(problems, carry, save_times, settings, band, log_time):
    def one(problem, c):
        _, field = make_field(problem, log_time, band=band)
        return finish_arrays(field, c, save_times, settings, log_time)

    return eqx.filter_vmap(one)(problems, carry)


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


def _to_devices(tree, sharding):
    """Host arrays (the same on every process) as global arrays split over `sharding`'s devices: each
    process supplies the shards of its own devices, so this works across processes too."""
    return jax.tree_util.tree_map(
        lambda leaf: jax.make_array_from_callback(np.shape(leaf), sharding, lambda index: leaf[index]), tree)


def _to_host(tree):
    """Global arrays back as numpy on every process (`process_allgather` when some shards live on other
    processes' devices)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if all(leaf.is_fully_addressable for leaf in leaves if isinstance(leaf, jax.Array)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _take(tree, index):
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


def simulate_batch(problems, *, chunk_size: int | None = None, devices=None, schedule: str = "lockstep",
                   segment_steps: int = 50, nonsmooth: str = "auto", **options) -> Trajectory:
    """Solve a batch of problems as vmapped `fs.simulate` solves, sharded over devices.

    **Arguments:**

    - `problems`: a `fs.Problem` whose array leaves carry a leading batch axis (what
      `eqx.filter_vmap(lambda seed: fs.Problem(...))(seeds)` builds).
    - `chunk_size`: members solved at once (default: the whole batch for `"lockstep"`, 96 slots
      for `"refill"`); rounded up to a multiple of the device count.
    - `devices`: the devices to shard over (default `jax.devices()`: every GPU, or every CPU
      device — `XLA_FLAGS=--xla_force_host_platform_device_count=4` makes four on one CPU; after
      `jax.distributed.initialize()` the devices of every process, and every process gets the
      whole result).
    - `schedule`: `"lockstep"` (each chunk one vmapped solve: its while loop runs until the
      chunk's slowest member is done) or `"refill"` (`chunk_size` slots step in segments of
      `segment_steps` steps; a finished member's slot goes to the next member at once).
    - `segment_steps`: steps per refill segment, rounded down to a divisor of `max_steps` so a
      member stops at exactly `max_steps` as its single solve would.
    - `nonsmooth`: how members with ReLU-type kinks are solved (ignored for a smooth model).
      `"auto"` (the default) and `"band"`: the band field, as one vmapped program per chunk —
      `fs.simulate`'s `"auto"` runs the band under `eqx.filter_vmap` too, so the batch is
      `eqx.filter_vmap(fs.simulate)` member for member; `traj.info["nonsmooth_reason"]` says
      why auto did not slide. `"sliding"`: exact event-driven sliding, which restarts each solve
      from Python at every event and so cannot be vmapped: each member is solved by its own
      `fs.simulate(member, nonsmooth="sliding", **options)`, eagerly, one after another (on the
      one device `devices` names, else the default device; `progress=True` adds a bar over the
      members), and the results are stacked into one batched `Trajectory` with the same fields
      and shapes as a lockstep batch. `solver="auto"` then measures each member's strata as a
      single solve does. Refused with sliding: `schedule="refill"`, `chunk_size`, and more than
      one device (there is no vmapped program to refill, chunk or shard).
    - `**options`: as `fs.simulate` (horizon, solver, tolerances, target, …). Under vmap
      `solver="auto"` cannot measure stiffness, so it is Kvaerno5 in log time and Tsit5 in
      linear time; name the solver when you know the problem.

    **Returns:** a batched `fs.Trajectory`: every leaf with the batch axis first; each member keeps
    its own steps, status and message (`traj.message` names the members that failed).
    `traj.info["batch_wall_time_s"]` is the wall time of the whole call, and each member's
    `stats["wall_time_s"]` its share by steps (they add up to the call's).
    `traj.info["lockstep_waste"]` is the work done over the work needed: Σ over the compiled
    calls of slots × loop iterations, over Σ member steps (1 = no member waited).

    A sliding batch (`nonsmooth="sliding"`): `traj.info["schedule"]` is `"loop"`,
    `lockstep_waste` 1 (no member waits for another), each member's `stats["wall_time_s"]` its own
    solve's. Its static metadata is the members' common value where they agree; `traj.info["auto"]`
    and `traj.info["implicit"]` are always tuples with one entry per member (what `solver="auto"`
    ran on each member's strata), so is any other key on which members differ, and
    `traj.info["per_member"]` names those keys. `traj.info["sliding_note"]` (why a sliding solve
    stopped, when its status alone does not say) is one string, `"member i: …"` for each member
    that has one.

    Arrays go to a one-axis `jax.sharding.Mesh` with `NamedSharding` (padded with copies of a
    member, dropped afterwards); JAX's partitioner runs each device's members independently, with no
    communication. A member's adaptive steps never depend on its batch neighbours, so both schedules
    return each member's single solve.
    """
    if not isinstance(problems, (Problem, ModifiedFlow)):
        raise TypeError(f"problems must be a stacked flowsim.Problem, got {type(problems).__name__}")
    if "checkpoint" in options:
        raise ValueError("simulate_batch does not take checkpoint=: checkpoint single solves, or chunks yourself")
    schedule = as_choice("schedule", schedule, SCHEDULES)
    nonsmooth = as_choice("nonsmooth", nonsmooth, NONSMOOTH_METHODS)
    size = batch_size(problems)
    devices = None if devices is None else list(devices)
    if devices is not None and not devices:
        raise ValueError("devices is empty: give at least one device")
    if nonsmooth == "sliding":
        return _sliding_loop(problems, size, chunk_size, devices, schedule, options)
    devices = jax.devices() if devices is None else devices
    default_chunk = size if schedule == "lockstep" else min(size, 96)
    chunk = default_chunk if chunk_size is None else as_int("chunk_size", chunk_size)
    chunk = math.ceil(min(chunk, size) / len(devices)) * len(devices)
    sharding = NamedSharding(Mesh(np.asarray(devices), ("batch",)), PartitionSpec("batch"))
    arrays, rest = eqx.partition(problems, eqx.is_array)
    arrays = jax.device_get(arrays)  # host copies (the same on every process) to gather chunks from

    start = time.perf_counter()
    if schedule == "lockstep":
        # "auto" is the band here (as `fs.simulate`'s auto under vmap), named so the vmapped solve is the band's.
        batched, waste = _lockstep(arrays, rest, size, chunk, sharding, dict(options, nonsmooth="band"))
    else:
        segment_steps = as_int("segment_steps", segment_steps)
        batched, waste = _refill(arrays, rest, size, chunk, sharding, segment_steps, options)
    batched = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf) if isinstance(leaf, np.ndarray) else leaf, batched)
    batched = jax.block_until_ready(batched)
    wall = time.perf_counter() - start
    metadata = dict(batched.metadata, schedule=schedule, lockstep_waste=waste, batch_wall_time_s=wall)
    if nonsmooth == "auto" and dict(batched.metadata).get("nonsmooth"):
        metadata["nonsmooth_reason"] = _band_reason(eqx.combine(_take(arrays, 0), rest), options)
    batched = dataclasses.replace(batched, metadata=tuple(sorted(metadata.items(), key=lambda item: item[0])))
    # Members share compiled calls, so a member has no wall time of its own: each gets the call's wall
    # time in proportion to its steps, and the members' times add up to the batch's (a summary that
    # sums them must not count the batch once per member).
    steps = np.asarray(batched.stats["num_steps"], dtype=float)
    share = steps / steps.sum() if steps.sum() > 0 else np.full(size, 1.0 / size)
    return eqx.tree_at(lambda tr: tr.stats["wall_time_s"], batched, jnp.asarray(wall * share))


def _lockstep(arrays, rest, size, chunk, sharding, options):
    """Each chunk (padded with copies of its last member) as ONE compiled vmapped `simulate`."""
    # Values (tolerances, horizon, target) travel as arrays, so new values reuse the compiled solve;
    # the rest (solver, save count, ...) is structure and part of the cache key.
    values = {key: jnp.asarray(value, dtype=jnp.float64) for key, value in options.items()
              if key in _VALUE_OPTIONS and value is not None}
    structure = {key: value for key, value in options.items() if key not in values}
    pieces, work = [], 0
    for begin in range(0, size, chunk):
        members = min(chunk, size - begin)
        index = np.minimum(np.arange(begin, begin + chunk), begin + members - 1)
        part = eqx.combine(_to_devices(_take(arrays, index), sharding), rest)
        solved = _solve(part, values, structure)
        result = _to_host(eqx.filter(solved, eqx.is_array))
        work += chunk * int(np.max(result.stats["num_steps"]))
        pieces.append(_take(result, slice(0, members)))
    arrays_out = jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *pieces)
    batched = eqx.combine(arrays_out, eqx.filter(solved, eqx.is_array, inverse=True))
    return batched, work / max(int(np.sum(batched.stats["num_steps"])), 1)


def _refill_plan(problem, options):
    """`fs.simulate`'s plan for the batch's first member (every member shares the options)."""
    try:
        inspect.signature(simulate).bind(problem, **options)
    except TypeError as error:
        raise TypeError(f"simulate_batch: {error}") from None
    if options.get("progress"):
        raise ValueError("schedule='refill' does not show progress=True: it reports per segment in Python instead")
    auto = solver_choice(options.get("solver", "auto"))[2]
    if auto is not None:
        # Under vmap nothing is measured: the fixed rule, as `simulate` under vmap applies it.
        log_time = options.get("log_t1") is not None if options.get("time", "auto") == "auto" \
            else options["time"] == "log"
        options = dict(options, solver=auto.implicit if log_time else auto.explicit)
        the_plan = plan(problem, **options)
        metadata = dict(the_plan.metadata, auto="under jit/vmap: fixed rule (no measurement possible)")
    else:
        the_plan = plan(problem, **options)
        metadata = dict(the_plan.metadata, auto=None)
    name = the_plan.solver_name
    implicit = the_plan.is_implicit(name)
    metadata.update(solver=name, t1=None, linear_solver=the_plan.linear_solver if implicit else None,
                    implicit=implicit)
    return the_plan, metadata


def _segment_budget(max_steps: int, segment_steps: int) -> int:
    """The largest divisor of `max_steps` not above `segment_steps`."""
    budget = min(segment_steps, max_steps)
    while max_steps % budget:
        budget -= 1
    if 4 * budget < min(segment_steps, max_steps):
        raise ValueError(
            f"segment_steps = {segment_steps}: refill segments must divide max_steps = {max_steps} (so members "
            f"stop exactly where their single solve does), and its largest divisor ≤ {segment_steps} is {budget}; "
            "give a rounder max_steps (e.g. 100000)"
        )
    return budget


def _refill(arrays, rest, size, slots, sharding, segment_steps, options):
    """`slots` members step together in segments; finished members leave, the next ones take their slots."""
    first = eqx.combine(_take(arrays, 0), rest)
    the_plan, metadata = _refill_plan(first, options)
    save_times, settings, solvers = the_plan.save_times, the_plan.settings, the_plan.solvers
    max_steps = the_plan.max_steps
    static = the_plan.static(the_plan.solver_name, max_steps=_segment_budget(max_steps, segment_steps))
    shapes, fixed = eqx.partition(eqx.filter_eval_shape(init_carry, the_plan.field, the_plan.theta0, save_times,
                                                        settings, static, solvers),
                                  lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct))
    blank = jax.tree_util.tree_map(lambda leaf: np.zeros((slots, *leaf.shape), leaf.dtype), shapes)
    finals = jax.tree_util.tree_map(lambda leaf: np.zeros((size, *leaf.shape), leaf.dtype), shapes)

    carry, occupant = blank, np.full(slots, -1)
    is_new = np.zeros(slots, bool)
    queue, work = 0, 0
    while True:
        # Give every free slot the next member; slots left over hold a finished stand-in.
        free = np.flatnonzero(occupant < 0)
        take = free[: max(0, size - queue)]
        occupant[take] = np.arange(queue, queue + take.size)
        is_new[:] = False
        is_new[take] = True
        queue += take.size
        if np.all(occupant < 0):
            break
        idle = occupant < 0
        carry.status[idle] = Status.HORIZON_REACHED
        part = eqx.combine(_to_devices(_take(arrays, np.maximum(occupant, 0)), sharding), rest)
        device_carry = eqx.combine(_to_devices(carry, sharding), fixed)
        before = np.where(is_new, 0, carry.num_steps)
        carry = _to_host(eqx.filter(_refill_segment(part, device_carry, _to_devices(is_new, sharding), save_times,
                                                    settings, the_plan.band, static, solvers), eqx.is_array))
        carry = jax.tree_util.tree_map(np.array, carry)  # writable host copies
        work += slots * int(np.max(np.where(idle, 0, carry.num_steps - before)))
        done = ~idle & ((carry.status >= 0) | (carry.num_steps >= max_steps))
        for slot in np.flatnonzero(done):
            for final, leaf in zip(jax.tree_util.tree_leaves(finals), jax.tree_util.tree_leaves(carry)):
                final[occupant[slot]] = leaf[slot]
        occupant[done] = -1

    pieces = []
    for begin in range(0, size, slots):
        members = min(slots, size - begin)
        index = np.minimum(np.arange(begin, begin + slots), size - 1)
        part = eqx.combine(_to_devices(_take(arrays, index), sharding), rest)
        result = _refill_finish(part, eqx.combine(_to_devices(_take(finals, index), sharding), fixed), save_times, settings,
                                the_plan.band, static.log_time)
        pieces.append(_take(_to_host(eqx.filter(result, eqx.is_array)), slice(0, members)))
    arrays_out = jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *pieces)
    batched = eqx.combine(arrays_out, eqx.filter(result, eqx.is_array, inverse=True))
    batched = dataclasses.replace(batched, metadata=metadata_tuple(metadata))
    return batched, work / max(int(np.sum(finals.num_steps)), 1)


def _band_reason(first, options) -> str:
    """`traj.info["nonsmooth_reason"]` of a batch that `nonsmooth="auto"` ran on the band field: why the model
    cannot slide at all (as a single solve says it), else that a batch is one vmapped program and how to slide."""
    if not isinstance(first, Problem):
        return f"sliding needs a plain fs.Problem, got {type(first).__name__}"
    # The plan a member's sliding solve would run (eager, in log time): only the model can refuse it.
    kwargs = {key: value for key, value in options.items() if key not in ("progress", "checkpoint")}
    reason = sliding_refusal(plan(first, **dict(kwargs, time="log")))
    if reason is not None:
        return reason
    return (
        "simulate_batch runs a batch as one vmapped program, on the band field (sliding restarts each solve "
        "from Python at every event, so it cannot be vmapped): nonsmooth='sliding' solves each member exactly "
        "by sliding, one after another"
    )


def _merged_metadata(trajectories) -> dict:
    """One batched metadata from the members' own: a common value where members agree, else a tuple per member
    (always for `_PER_MEMBER`; `per_member` names the tuples); the sliding notes as one string by member."""
    dicts = [dict(traj.metadata) for traj in trajectories]
    keys = sorted({key for d in dicts for key in d})
    merged, per_member = {}, []
    for key in keys:
        values = tuple(d.get(key) for d in dicts)
        if key == "sliding_note":
            notes = [f"member {i}: {note}" for i, note in enumerate(values) if note]
            merged[key] = "; ".join(notes) or None
        elif key in _PER_MEMBER or len({repr(value) for value in values}) > 1:  # repr: NaN equals NaN
            merged[key] = values
            per_member.append(key)
        else:
            merged[key] = values[0]
    merged["per_member"] = tuple(per_member)
    return merged


def _sliding_loop(problems, size, chunk_size, devices, schedule, options) -> Trajectory:
    """`nonsmooth="sliding"`: each member's own eager sliding solve, stacked into one batched Trajectory."""
    if schedule != "lockstep":
        raise ValueError(
            f"schedule={schedule!r} cannot run nonsmooth='sliding': refill steps vmapped slots in compiled segments, "
            "and a sliding solve restarts from Python at every event, so it is not vmapped. With sliding the members "
            "are solved one after another (each takes only its own steps, so none waits for another); leave "
            "schedule at its default"
        )
    if chunk_size is not None:
        raise ValueError(
            f"chunk_size={chunk_size!r} has no meaning with nonsmooth='sliding': the members are solved one at a "
            "time (there is no vmapped chunk); leave chunk_size out"
        )
    if devices is not None and len(devices) > 1:
        raise ValueError(
            f"nonsmooth='sliding' cannot shard a batch over {len(devices)} devices: each member's solve runs eagerly "
            "(every event restarts it from Python), so there is no vmapped program to split; give one device (or "
            "none: the default device), or use the band field (nonsmooth='band') to shard"
        )
    try:
        inspect.signature(simulate).bind(problems, **options)
    except TypeError as error:
        raise TypeError(f"simulate_batch: {error}") from None
    arrays, rest = eqx.partition(problems, eqx.is_array)
    progress = bool(options.get("progress", False))
    bar = None
    if progress:
        import tqdm

        bar = tqdm.tqdm(total=size, desc="sliding members", unit="member", file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    trajectories = []
    try:
        with contextlib.ExitStack() as stack:
            if devices is not None:
                stack.enter_context(jax.default_device(devices[0]))
            for index in range(size):
                member = eqx.combine(_take(arrays, index), rest)
                trajectories.append(simulate(member, nonsmooth="sliding", **options))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    metadata = dict(_merged_metadata(trajectories), schedule="loop", lockstep_waste=1.0, batch_wall_time_s=wall)
    kinks = {traj.kinks for traj in trajectories}
    kinks = kinks.pop() if len(kinks) == 1 else "; ".join(f"member {i}: {t.kinks}" for i, t in enumerate(trajectories))
    keys = {tuple(sorted(traj.stats)) for traj in trajectories}
    if len(keys) != 1:  # every sliding solve reports the same statistics; a mismatch is a bug, said plainly
        raise RuntimeError(f"simulate_batch: the members' sliding solves report different stats keys {sorted(keys)}")
    # Every member now carries the same static metadata, so their array parts share one structure and stack.
    same = [dataclasses.replace(traj, metadata=metadata_tuple(metadata), kinks=kinks) for traj in trajectories]
    parts = [eqx.partition(traj, eqx.is_array) for traj in same]
    stacked = jax.tree_util.tree_map(
        lambda *leaves: jnp.asarray(np.stack([np.asarray(leaf) for leaf in leaves])), *[part for part, _ in parts]
    )
    return eqx.combine(stacked, parts[0][1])
