"""simulate_batch: a sharded, chunked vmapped solve equals a loop of single solves (4 forced CPU devices)."""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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
    refill = fs.simulate_batch(problems, schedule="refill", chunk_size=4, segment_steps=10, max_steps=1000, **options)
    np.testing.assert_allclose(np.asarray(refill.final.layers[0]), np.asarray(one.final.layers[0]), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(refill.stats["num_steps"]), np.asarray(one.stats["num_steps"]))
    loop = [fs.simulate(fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=float(a)), X, y, "logistic"),
                        **options) for a in scales]
    for i, single in enumerate(loop):
        np.testing.assert_allclose(np.asarray(sharded.final.layers[0][i]), np.asarray(single.final.layers[0]),
                                   rtol=1e-10, atol=1e-14)
        assert int(sharded.stats["num_steps"][i]) == int(single.stats["num_steps"])
    # Same steps; values to rounding (XLA may compile a batch of 1 per device differently from 6 on one).
    np.testing.assert_allclose(np.asarray(sharded.final.layers[0]), np.asarray(one.final.layers[0]), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(sharded.stats["num_steps"]), np.asarray(one.stats["num_steps"]))
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
    # Members share one call: their wall times are shares by steps that add up to the call's, not copies.
    walls, steps = np.asarray(batch.stats["wall_time_s"]), np.asarray(batch.stats["num_steps"])
    np.testing.assert_allclose(walls.sum(), batch.info["batch_wall_time_s"], rtol=1e-12)
    np.testing.assert_allclose(walls / walls.sum(), steps / steps.sum(), rtol=1e-12)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda p: fs.simulate_batch("not a problem", log_t1=1.0), TypeError, "stacked flowsim.Problem"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, chunk_size=0), ValueError, "chunk_size must be an integer"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, devices=[]), ValueError, "devices is empty"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, checkpoint="x"), ValueError, "does not take checkpoint"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="bucket"), ValueError, "unknown schedule 'bucket'"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="refill", segment_steps=0), ValueError,
         "segment_steps must be an integer"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="refill", max_steps=101), ValueError,
         "must divide max_steps = 101"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="refill", progress=True), ValueError, "progress"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="refill", rtoll=1e-3), TypeError, "rtoll"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="refill", rtol=-1.0), ValueError, "rtol must be positive"),
        (lambda p: fs.simulate_batch(p, schedule="refill"), ValueError, "exactly one horizon"),
        (lambda p: fs.simulate_batch(p, log_t1=1.0, schedule="refill", solver="rk4"), ValueError,
         "unknown solver 'rk4'"),
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


def _timor(seeds):
    """Timor et al.'s 2×2 ReLU net from disk-uniform inits of radius 1e-4: members need 10 to ~400 steps."""
    x = np.array([[1.0, 0.99], [-1.0, 0.99]])
    X = x / np.linalg.norm(x, axis=1, keepdims=True)

    def make(key):
        return fs.Problem(fs.networks.MLP.init(key, 2, [2], 2, scale=1e-4, distribution="ball"), X, np.eye(2))

    keys = jax.vmap(jax.random.key)(np.arange(seeds))
    return eqx.filter_vmap(make)(keys), [make(keys[i]) for i in range(seeds)]


def test_refill_returns_each_members_own_solve_through_relu_kinks():
    """Per-member adaptive steps do not depend on batch neighbours (nor on where a solve is cut into
    segments): refill, lockstep and single solves agree step for step."""
    problems, singles = _timor(10)
    options = dict(t1=300.0, solver="tsit5", n_save=4)
    lock = fs.simulate_batch(problems, **options)
    refill = fs.simulate_batch(problems, schedule="refill", chunk_size=3, segment_steps=20, **options)
    for leaf_r, leaf_l in zip(refill.params.layers, lock.params.layers):
        np.testing.assert_array_equal(np.asarray(leaf_r), np.asarray(leaf_l))
    for key in ("num_steps", "num_rejected_steps", "pairs_at_kink", "kink_crossings"):
        np.testing.assert_array_equal(np.asarray(refill.stats[key]), np.asarray(lock.stats[key]))
    np.testing.assert_array_equal(np.asarray(refill.status), np.asarray(lock.status))
    np.testing.assert_allclose(np.asarray(refill.loss), np.asarray(lock.loss), rtol=1e-12, atol=0)
    steps = np.asarray(lock.stats["num_steps"])
    assert steps.min() < steps.max() / 4  # easy and hard members in one batch: the case refill is for
    for i in (int(np.argmin(steps)), int(np.argmax(steps))):
        single = fs.simulate(singles[i], **options)
        assert int(single.stats["num_steps"]) == int(steps[i])
        for leaf_s, leaf_r in zip(single.final.layers, refill.final.layers):
            np.testing.assert_allclose(np.asarray(leaf_r[i]), np.asarray(leaf_s), rtol=1e-12, atol=1e-18)
    # Lockstep: one loop of max(steps) iterations for all 10; refill: 3 slots, at most 20 idle steps a slot.
    assert lock.info["lockstep_waste"] == pytest.approx(10 * steps.max() / steps.sum(), rel=1e-12)
    assert 1.0 <= refill.info["lockstep_waste"] < lock.info["lockstep_waste"]
    assert refill.info["schedule"] == "refill" and refill.info["solver"] == "tsit5"


def test_refill_keeps_failures_targets_and_step_budgets():
    X, y = fs.data.separable(8, 6, seed=0)
    problems = eqx.filter_vmap(lambda a: fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=a), X, y,
                                                     "logistic"))(jnp.array([0.01, 2.0, 0.2]))
    # Needs to log L = -6: 97, 41, 67 steps. A budget of 60: member 1 reaches the target, 0 and 2 run out.
    for target, exact in ((None, True), (-6.0, False)):
        options = dict(log_t1=20.0, solver="tsit5", n_save=5, max_steps=60, target_log_loss=target)
        lock = fs.simulate_batch(problems, **options)
        refill = fs.simulate_batch(problems, schedule="refill", chunk_size=2, segment_steps=10, **options)
        np.testing.assert_array_equal(np.asarray(refill.status), np.asarray(lock.status))
        np.testing.assert_array_equal(np.asarray(refill.stats["num_steps"]), np.asarray(lock.stats["num_steps"]))
        assert refill.message == lock.message and "max_steps = 60" in refill.message
        assert ("target" in refill.message) == (target is not None)
        # Bitwise without a target. With one, Diffrax's event is re-armed at every segment start, and a member
        # cut into segments of 10 steps ends ~1e-11 (relative) from the uncut solve.
        # (log t is formed from the solver's time by the vectorised finish: to rounding.)
        rtol = 0.0 if exact else 1e-9
        np.testing.assert_allclose(np.asarray(refill.log_t), np.asarray(lock.log_t), rtol=max(rtol, 1e-14))
        np.testing.assert_allclose(np.asarray(refill.final.layers[0]), np.asarray(lock.final.layers[0]), rtol=rtol)
