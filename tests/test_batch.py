"""simulate_batch: a sharded, chunked vmapped solve equals a loop of single solves (4 forced CPU devices)."""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax.numpy as jnp
import pytest

import flowsim as fs

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    import flowsim as fs
    assert len(jax.devices()) == 4, jax.devices()
    X, y = fs.data.separable(8, 6, seed=0)
    scales = jnp.linspace(0.2, 1.0, 6)
    problems = eqx.filter_vmap(lambda a: fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=a), X, y,
                                                     "logistic"))(scales)
    options = dict(log_t1=20.0, solver="kvaerno5", n_save=5)
    sharded = fs.simulate_batch(problems, chunk_size=4, **options)
    one = fs.simulate_batch(problems, devices=jax.devices()[:1], **options)
    loop = [fs.simulate(fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=float(a)), X, y, "logistic"),
                        **options) for a in scales]
    for i, single in enumerate(loop):
        np.testing.assert_allclose(np.asarray(sharded.final.layers[0][i]), np.asarray(single.final.layers[0]),
                                   rtol=1e-10, atol=1e-14)
        assert int(sharded.stats["num_steps"][i]) == int(single.stats["num_steps"])
    np.testing.assert_array_equal(np.asarray(sharded.final.layers[0]), np.asarray(one.final.layers[0]))
    assert np.all(np.asarray(sharded.ok))
    print("OK", len(jax.devices()))
    """
)


def test_sharded_chunked_batch_equals_a_loop_on_four_cpu_devices(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK 4" in out.stdout


def test_batch_members_keep_their_own_status():
    X, y = fs.data.separable(8, 6, seed=0)
    scales = jnp.array([0.5, 1.0])
    problems = eqx.filter_vmap(lambda a: fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=a), X, y,
                                                     "logistic"))(scales)
    single = fs.simulate(fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=1.0), X, y, "logistic"),
                         log_t1=20.0, solver="tsit5", n_save=5)
    budget = int(single.stats["num_steps"]) - 1
    batch = fs.simulate_batch(problems, log_t1=20.0, solver="tsit5", n_save=5, max_steps=budget)
    assert batch.log_t.shape == (2, 5)
    assert not bool(batch.ok[1]) and "member 1" in batch.message


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda p: fs.simulate_batch("not a problem", log_t1=1.0), TypeError, "stacked flowsim.Problem"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, chunk_size=0), ValueError, "chunk_size must be an integer"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, devices=[]), ValueError, "devices is empty"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, checkpoint="x"), ValueError, "does not take checkpoint"),
    ],
)
def test_simulate_batch_refuses_bad_arguments(call, error, match):
    X, y = fs.data.separable(8, 6, seed=0)
    problems = eqx.filter_vmap(lambda a: fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=a), X, y,
                                                     "logistic"))(jnp.array([0.5, 1.0]))
    with pytest.raises(error, match=match):
        call(problems)


def test_unequal_batch_axes_are_refused():
    X, y = fs.data.separable(8, 6, seed=0)
    problem = fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=0.5), X, y, "logistic")
    with pytest.raises(ValueError, match="same leading batch axis"):
        fs.simulate_batch(problem, log_t1=1.0)
