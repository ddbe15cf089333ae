"""simulate_batch across processes: two JAX processes on localhost (2 forced CPU devices each, joined by
``jax.distributed.initialize``) shard one sweep over the 4 global devices; both must return every member of
the single-process sweep and of a loop of single solves."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import flowsim as fs

WORKER = textwrap.dedent(
    """
    import os, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    port, rank, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=rank)
    assert (jax.process_count(), len(jax.devices()), len(jax.local_devices())) == (2, 4, 2), jax.devices()
    import numpy as np
    import flowsim as fs
    sys.path.insert(0, os.path.dirname(out))
    from sweep import OPTIONS, problems
    lock = fs.simulate_batch(problems(), **OPTIONS)
    refill = fs.simulate_batch(problems(), schedule="refill", chunk_size=4, segment_steps=10, **OPTIONS)
    np.savez(out, **{f"{name}/{key}": np.asarray(value) for name, traj in (("lockstep", lock), ("refill", refill))
                     for key, value in (("W", traj.final.layers[0]), ("steps", traj.stats["num_steps"]),
                                        ("status", traj.status), ("log_loss", traj.log_loss))})
    """
)

SWEEP = textwrap.dedent(
    """
    import equinox as eqx, jax.numpy as jnp
    import flowsim as fs
    OPTIONS = dict(log_t1=20.0, solver="tsit5", n_save=5, max_steps=1000)
    def problem(scale):
        X, y = fs.data.separable(8, 6, seed=0)
        return fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=scale), X, y, "logistic")
    def problems():
        return eqx.filter_vmap(problem)(jnp.linspace(0.2, 1.0, 6))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_shard_one_sweep_and_equal_the_single_process_one(tmp_path):
    (tmp_path / "sweep.py").write_text(SWEEP)
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = _free_port()
    workers = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(port), str(rank),
                                 str(tmp_path / f"out{rank}.npz")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=240)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]

    sys.path.insert(0, str(tmp_path))
    try:
        from sweep import OPTIONS, problem, problems
    finally:
        sys.path.remove(str(tmp_path))
    single = fs.simulate_batch(problems(), devices=jax.devices()[:1], **OPTIONS)
    loop = [fs.simulate(problem(float(a)), **OPTIONS) for a in jnp.linspace(0.2, 1.0, 6)]
    for rank in (0, 1):
        out = np.load(tmp_path / f"out{rank}.npz")
        for name in ("lockstep", "refill"):
            # Every process holds the whole result; each member is the single-process member (the same steps;
            # values to rounding: XLA may vectorise a batch of 1 or 2 per device differently from 6 on one).
            np.testing.assert_allclose(out[f"{name}/W"], np.asarray(single.final.layers[0]), rtol=1e-12, atol=1e-15)
            np.testing.assert_array_equal(out[f"{name}/steps"], np.asarray(single.stats["num_steps"]))
            np.testing.assert_array_equal(out[f"{name}/status"], np.asarray(single.status))
            np.testing.assert_allclose(out[f"{name}/log_loss"], np.asarray(single.log_loss), rtol=1e-12)
            for i, traj in enumerate(loop):
                np.testing.assert_allclose(out[f"{name}/W"][i], np.asarray(traj.final.layers[0]), rtol=1e-12,
                                           atol=1e-15)
                assert int(out[f"{name}/steps"][i]) == int(traj.stats["num_steps"])
    assert np.all(np.asarray(single.ok))

