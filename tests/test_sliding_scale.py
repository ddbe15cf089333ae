"""Event-driven sliding at scale (flowsim._sliding): the unit-block equivalent control and the crossings taken
inside the compiled solve, against independent references on small nets.

Oracles: the equivalent control built from automatic derivatives (J_S = ∂z_S/∂θ row by row, G_S = ∂g/∂d_S column
by column) and solved densely by numpy, against the closed form solved unit block by unit block; the unit layout
against a plain loop; the solve with crossings in the compiled loop against the one that returns to Python at
every event.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs
import flowsim._sliding as sliding
from flowsim._flow import make_field
from flowsim._nonsmooth import pair_columns
from flowsim._sliding import _block_shape, _Segment, unit_blocks


def _net_problem(n, d, m, seed, depth2=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    if depth2:
        net = fs.networks.MLP([rng.standard_normal((m, d)) / np.sqrt(d), rng.standard_normal(m) / np.sqrt(m)], 0.1)
        return fs.Problem(net, X, y, "logistic")
    net = fs.networks.TwoLayer.init(jax.random.key(seed), d, m, scale=1 / np.sqrt(d), leak=0.1)
    return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())


def test_unit_blocks_group_the_held_slots_by_unit_in_slot_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        K = int(rng.integers(1, 40))
        unit = rng.integers(0, 7, K)
        valid = rng.random(K) < 0.7
        B, c = 7, max(1, int(np.bincount(unit[valid], minlength=1).max()))
        layout = np.asarray(unit_blocks(jnp.asarray(unit), jnp.asarray(valid), B, c))
        expected = [[k for k in range(K) if valid[k] and unit[k] == u] for u in sorted(set(unit[valid]))]
        rows = [[int(k) for k in row if k != K] for row in layout]
        assert rows[: len(expected)] == expected and not any(rows[len(expected) :])


@pytest.mark.parametrize("depth2", [False, True])
def test_block_equivalent_control_matches_the_dense_autodiff_solve(depth2, monkeypatch):
    monkeypatch.setattr(sliding, "BLOCKS_FROM", 1)  # blocks on this small stratum too
    n, d, m = 10, 14, 5  # d > n: every unit block is a full-rank Gram matrix (the ridge does not matter)
    problem = _net_problem(n, d, m, 1, depth2)
    theta, field = make_field(problem, log_time=True, rtol=1e-8, atol=1e-10)
    seg = _Segment(field, 0.1, 10.0, (n, m), gram=problem.X @ problem.X.T)
    rng = np.random.default_rng(2)
    s = jnp.asarray(0.7)
    for held in (3, 9, 20):
        K = 32
        index = np.zeros(K, np.int64)
        valid = np.zeros(K, bool)
        slots = rng.permutation(K)[:held]
        index[slots] = rng.choice(n * m, held, replace=False)
        valid[slots] = True
        z = np.asarray(seg.z(theta))
        base = jnp.asarray(np.where(z > 0, 1.0, 0.1))
        blocks = _block_shape(index % m, valid, m)
        assert blocks is not None and blocks[1] < K
        velocity, slopes = dataclasses.replace(seg, blocks=blocks).rates(
            s, theta, base, jnp.asarray(index), jnp.asarray(valid)
        )
        # The reference: J_S and G_S by automatic differentiation, one dense solve in numpy.
        g0, weights = seg._gradient(theta, base.reshape(n, m), s)
        sample, unit = np.divmod(index, m)
        G = np.asarray(pair_columns(field, theta, problem.X, weights, base.reshape(n, m), sample, unit, valid))
        J = np.asarray(seg.normals(theta, jnp.asarray(index), jnp.asarray(valid)))
        M = (J @ G)[np.ix_(valid, valid)]
        rhs = 10.0 * z[index[valid]] - (J @ np.asarray(g0))[valid]
        delta = np.linalg.solve(M, rhs)
        expected_velocity = -(np.asarray(g0) + G[:, valid] @ delta)
        np.testing.assert_allclose(
            np.asarray(velocity), expected_velocity, rtol=1e-12, atol=1e-12 * np.abs(expected_velocity).max()
        )
        np.testing.assert_allclose(
            np.asarray(slopes)[valid],
            np.asarray(base)[index[valid]] + delta,
            rtol=1e-12,
            atol=1e-12 * np.abs(delta).max(),
        )
        # And the dense closed-form solve gives the same.
        dense_velocity, _ = seg.rates(s, theta, base, jnp.asarray(index), jnp.asarray(valid))
        np.testing.assert_allclose(
            np.asarray(dense_velocity), np.asarray(velocity), rtol=1e-12, atol=1e-12 * np.abs(expected_velocity).max()
        )


def _frei_problem(n=16, d=24, m=6, seed=0):
    rng = np.random.default_rng(seed)
    clean = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    X = clean[:, None] * np.eye(d)[0] * d**0.3 + rng.standard_normal((n, d))
    y = clean.copy()
    y[rng.permutation(n)[: n // 6]] *= -1  # label noise: pairs slide
    net = fs.networks.TwoLayer.init(jax.random.key(seed), d, m, scale=1 / np.sqrt(d), leak=0.1)
    return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())


def test_crossings_in_the_compiled_loop_match_an_event_by_event_solve(monkeypatch):
    problem = _frei_problem()
    runs = {}
    for inline in (True, False):
        monkeypatch.setattr(sliding, "INLINE_CROSSINGS", inline)
        runs[inline] = fs.simulate(problem, log_t1=4.0, solver="tsit5", n_save=6, nonsmooth="sliding")
    fast, slow = runs[True], runs[False]
    assert fast.ok and slow.ok, (fast.message, slow.message)
    keys = (
        "num_steps",
        "num_accepted_steps",
        "num_rejected_steps",
        "slide_events",
        "cross_events",
        "leave_events",
        "missed_events",
        "pairs_at_kink",
    )
    assert {k: int(fast.stats[k]) for k in keys} == {k: int(slow.stats[k]) for k in keys}
    assert int(fast.stats["cross_events"]) >= 5 and int(fast.stats["slide_events"]) >= 1  # the test has teeth
    np.testing.assert_allclose(np.asarray(fast.log_t), np.asarray(slow.log_t), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fast.params.W), np.asarray(slow.params.W), rtol=0, atol=1e-10)
