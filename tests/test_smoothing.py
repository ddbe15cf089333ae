"""Smoothed ReLU activations and the width → 0 extrapolation (fs.smoothed_limit, fs.analysis.richardson).

Oracles: the closed-form bound |φ_ε − φ| ≤ (1 − γ)ε log 2; exact expansions for Richardson; the hand-solved
three-phase single-neuron flow of tests/test_nonsmooth.py (smooth piece, sliding along a kink, exit).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_nonsmooth import SAVE_T, T_END, single_neuron_problem, sliding_closed_form

import flowsim as fs

nets = fs.networks


@pytest.mark.parametrize("leak", [0.0, 0.2])
def test_smoothed_networks_tend_to_the_relu_networks(leak):
    X = jax.random.normal(jax.random.key(0), (50, 3))
    mlp = nets.MLP.init(jax.random.key(1), 3, [4, 4], leak=leak)
    two = nets.TwoLayer.init(jax.random.key(2), 3, 5, leak=leak)
    z = jnp.linspace(-0.01, 0.01, 201)
    for width in (1e-2, 1e-4):
        phi = nets._smoothed.smoothed_leaky_relu(z, leak, width)
        gap = np.max(np.abs(phi - jnp.maximum(z, leak * z)))
        assert gap <= (1 - leak) * width * np.log(2) * (1 + 1e-12)
        np.testing.assert_allclose(gap, (1 - leak) * width * np.log(2), rtol=1e-12)  # attained at z = 0
        for net in (mlp, two):
            smooth = jax.vmap(net.smoothed(width))(X)
            exact = jax.vmap(net)(X)
            # Each layer adds at most (1 − γ)ε log 2 per unit, carried forward by the weights' norms.
            assert np.max(np.abs(smooth - exact)) < 50 * width


def test_richardson_is_exact_on_its_expansion():
    steps = [1e-1, 1e-2, 1e-3]
    v0 = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}

    def value(h, log):
        lead = h * np.log(h) if log else h
        second = h if log else h**2
        return jax.tree.map(lambda v: v + 0.7 * lead - 5.0 * second, v0)

    for log in (False, True):
        limit = fs.analysis.richardson(steps, [value(h, log) for h in steps], logarithmic=log)
        np.testing.assert_allclose(limit.value["a"], v0["a"], atol=1e-12)
        np.testing.assert_allclose(limit.value["b"], v0["b"], atol=1e-12)
        assert float(limit.error) > 0  # the two-step extrapolation misses the second term
    # Two steps remove the leading term only; the order is honoured (h² error: order 2).
    two = fs.analysis.richardson([0.1, 0.05], [1 + 0.1**2, 1 + 0.05**2], order=2)
    np.testing.assert_allclose(two.value, 1.0, atol=1e-14)
    # Unsorted steps give the same answer.
    shuffled = fs.analysis.richardson(steps[::-1], [value(h, False) for h in steps[::-1]])
    np.testing.assert_allclose(shuffled.value["a"], v0["a"], atol=1e-12)


def test_smoothed_limit_matches_the_hand_solved_sliding_flow():
    expected, t1, t2 = sliding_closed_form(0.3, np.append(SAVE_T, T_END))
    limit = fs.smoothed_limit(single_neuron_problem(0.3), t1=T_END, solver="tsit5", rtol=1e-10, atol=1e-12,
                              save_log_t=np.log(SAVE_T))
    assert bool(limit.ok), limit.message
    assert limit.widths == (1e-3, 1e-4, 1e-5)
    error = np.max(np.abs(np.asarray(limit.params.W)[:, 0, :] - expected))
    smallest = np.max(np.abs(np.asarray(limit.trajectories[-1].params.network.W)[:, 0, :] - expected))
    assert error < 1e-5 and error < smallest / 10, (error, smallest)  # measured 2.7e-6 vs 7.1e-5
    final_error = np.max(np.abs(np.asarray(limit.final.W)[0] - expected[-1]))
    assert float(limit.error) >= 0.5 * final_error  # the reported uncertainty is not optimistic
    assert float(limit.spread) > final_error
    assert isinstance(limit.final, nets.TwoLayer)
    np.testing.assert_allclose(limit.log_t_reached, np.log(T_END), rtol=1e-12)
    # The outer layer was not trained in any width (the trainable choice carries over).
    for traj in limit.trajectories:
        np.testing.assert_array_equal(np.asarray(traj.final.network.a), [1.0])
    # log L extrapolated along the saves: close to the closed form's.
    X, y = single_neuron_problem(0.3).X, single_neuron_problem(0.3).y
    exact_log_loss = [float(fs.Problem(nets.TwoLayer(w[None], np.ones(1), 0.2), X, y).log_loss_value())
                      for w in expected]
    np.testing.assert_allclose(limit.log_loss, exact_log_loss, atol=1e-4)


def test_a_smoothed_network_is_a_smooth_model_for_every_solver():
    problem = single_neuron_problem(0.3)
    smooth = fs.Problem(problem.model.smoothed(1e-3), problem.X, problem.y, "squared",
                        trainable=problem.model.smoothed(1e-3).first_layer_filter())
    explicit = fs.simulate(smooth, t1=T_END, solver="tsit5", rtol=1e-10, atol=1e-12)
    implicit = fs.simulate(smooth, t1=T_END, solver="kvaerno5", rtol=1e-10, atol=1e-12)
    assert bool(explicit.ok) and bool(implicit.ok)
    assert "pairs_at_kink" not in explicit.stats  # not the min-norm path
    np.testing.assert_allclose(explicit.final.network.W, implicit.final.network.W, atol=1e-7)


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: nets.Smoothed(nets.Diagonal([np.ones(2), np.ones(2)]), 1e-3), TypeError, "AbstractNonsmoothModel"),
        (lambda: nets.Smoothed(nets.TwoLayer(np.ones((2, 3)), np.ones(2)), 0.0), ValueError, "width"),
        (lambda: nets.Smoothed(nets.TwoLayer(np.ones((2, 3)), np.ones(2)), -1e-3), ValueError, "-0.001"),
        (lambda: fs.smoothed_limit(single_neuron_problem(0.3), (1e-3,), t1=1.0), ValueError, "at least 2"),
        (lambda: fs.smoothed_limit(single_neuron_problem(0.3), (1e-3, 1e-3), t1=1.0), ValueError, "distinct"),
        (lambda: fs.smoothed_limit(single_neuron_problem(0.3), (1e-3, -1.0), t1=1.0), ValueError, "positive"),
        (lambda: fs.smoothed_limit(single_neuron_problem(0.3), "small", t1=1.0), TypeError, "widths"),
        (lambda: fs.smoothed_limit(fs.Problem(nets.Diagonal([np.ones(2), np.ones(2)]), np.ones((1, 2)),
                                              np.ones(1)), t1=1.0), TypeError, "smooth model"),
        (lambda: fs.smoothed_limit(fs.Problem(nets.TwoLayer(np.ones((2, 2)), np.ones(2)).smoothed(1e-3),
                                              np.ones((1, 2)), np.ones(1)), t1=1.0), TypeError, "not of an fs.networks.Smoothed"),
        (lambda: fs.smoothed_limit("problem", t1=1.0), TypeError, "fs.Problem"),
        (lambda: fs.analysis.richardson([1e-3], [1.0]), ValueError, "at least 2"),
        (lambda: fs.analysis.richardson([1e-3, 1e-4], [1.0]), ValueError, "2 steps"),
        (lambda: fs.analysis.richardson([1e-3, 0.0], [1.0, 2.0]), ValueError, "positive"),
        (lambda: fs.analysis.richardson([1e-3, 1e-3], [1.0, 2.0]), ValueError, "distinct"),
        (lambda: fs.analysis.richardson([1e-3, 1e-4], [1.0, 2.0], order=0), ValueError, "order"),
        (lambda: fs.analysis.richardson([1e-3, 1e-4], [1.0, 2.0], logarithmic="yes"), TypeError, "logarithmic"),
        (lambda: fs.analysis.richardson([1e-3, 1e-4], [1.0, (1.0, 2.0)]), ValueError, "same structure"),
        (lambda: fs.analysis.richardson("ab", [1.0, 2.0]), TypeError, "steps"),
    ],
)
def test_bad_inputs_are_refused(build, error, words):
    with pytest.raises(error) as info:
        build()
    assert words in str(info.value), str(info.value)


def xor_mlp_problem(width):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2))
    y = np.sign(X[:, 0] * X[:, 1])
    net = nets.MLP.init(jax.random.key(0), 2, [16, 16], scale=0.5)
    return fs.Problem(net.smoothed(width), X, y, "logistic")


def test_auto_loses_a_hopeless_implicit_trial_at_once():
    # A smoothed deep ReLU net: Tsit5 runs at its stability limit (h·ρ ≥ 1, so auto tries Kvaerno5), but
    # Kvaerno5's steps are held by accuracy there, at ~10^4 × Tsit5's cost per unit time. Before the trial
    # could be abandoned, it never finished measuring and ran Kvaerno5 to the horizon (16× Tsit5's wall).
    problem = xor_mlp_problem(1e-5)
    auto = fs.simulate(problem, log_t1=3.0, solver="auto")
    explicit = fs.simulate(problem, log_t1=3.0, solver="tsit5")
    assert bool(auto.ok) and bool(explicit.ok)
    record = auto.info["auto"]
    trials = [i for i, entry in enumerate(record) if entry[2].startswith("trial:")]
    assert trials, record  # the stiffness test did fire
    for i in trials:
        assert record[i + 1][1] == "tsit5" and record[i + 1][2].startswith("trial lost"), record
    for a, b in zip(jax.tree.leaves(auto.final), jax.tree.leaves(explicit.final)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_smoothed_limit_with_a_target_extrapolates_where_the_target_is_reached():
    # The target is the closed-form loss at t = 8 (after the slide): every width stops near t = 8, and the
    # extrapolated stopping time and state approach the closed form's.
    X, y = single_neuron_problem(0.3).X, single_neuron_problem(0.3).y
    expected, _, _ = sliding_closed_form(0.3, [8.0])
    target = float(fs.Problem(nets.TwoLayer(expected[0][None], np.ones(1), 0.2), X, y).log_loss_value())
    limit = fs.smoothed_limit(single_neuron_problem(0.3), t1=T_END, solver="tsit5", rtol=1e-10, atol=1e-12,
                              target_log_loss=target, n_save=4)
    assert bool(limit.ok), limit.message
    assert all(traj.status == fs.Status.TARGET_REACHED for traj in limit.trajectories)
    single = abs(float(limit.trajectories[-1].log_t_reached) - np.log(8.0))
    # measured: 3.4e-8 against 8.5e-5 for the smallest width alone
    assert abs(float(limit.log_t_reached) - np.log(8.0)) < single / 100, (limit.log_t_reached, single)
    np.testing.assert_allclose(np.asarray(limit.final.W)[0], expected[0], atol=1e-6)  # measured 8e-8


def test_a_stalled_member_falls_back_to_the_smoothed_limit():
    # Two members: the sliding flow (c = 0.3, 238 Tsit5 steps to T_END) and a transversal crossing
    # (c = 0.05, 190 steps). With max_steps = 200 the first stops short (as a chattering deep net does)
    # and falls back to the smoothed-width extrapolation, checked against the closed form; the second
    # keeps its exact solve.
    sliding, crossing = single_neuron_problem(0.3), single_neuron_problem(0.05)
    problems = jax.tree.map(lambda a, b: jnp.stack([a, b]) if eqx.is_array(a) else a, sliding, crossing)
    options = dict(t1=T_END, solver="tsit5", rtol=1e-10, atol=1e-12, save_log_t=np.log(SAVE_T))
    exact = fs.simulate_batch(problems, max_steps=200, **options)
    assert list(np.asarray(exact.status)) == [fs.Status.MAX_STEPS, fs.Status.HORIZON_REACHED]
    # A two-layer net has one layer of kinks and no corners: by default a stalled solve of it is kept as it is.
    kept = fs.smoothed_fallback(problems, exact, max_steps=100_000, **options)
    assert list(np.asarray(kept.status)) == [fs.Status.MAX_STEPS, fs.Status.HORIZON_REACHED]
    assert not np.any(kept.stats["smoothed_fallback"]) and "smoothed" not in kept.message
    traj = fs.simulate_or_smoothed(problems, batched=True, max_steps=200, smoothed_options=dict(max_steps=100_000),
                                   corners_only=False, **options)
    assert list(np.asarray(traj.ok)) == [True, True], traj.message
    assert list(np.asarray(traj.stats["smoothed_fallback"])) == [True, False]
    assert traj.info["smoothed_fallback_members"] == (0,)
    assert traj.info["smoothed_fallback_widths"] == (1e-3, 1e-4, 1e-5)
    assert int(traj.stats["exact_status"][0]) == fs.Status.MAX_STEPS
    assert float(traj.stats["exact_log_t_reached"][0]) < np.log(T_END)
    # The fallback member is the extrapolation (closed form within its error, as smoothed_limit alone).
    expected, _, _ = sliding_closed_form(0.3, np.append(SAVE_T, T_END))
    assert np.max(np.abs(np.asarray(traj.params.W)[0, :, 0, :] - expected)) < 1e-5
    assert 0 < float(traj.stats["smoothed_error"][0]) < 1e-4 and np.isnan(traj.stats["smoothed_error"][1])
    np.testing.assert_allclose(traj.log_t_reached[0], np.log(T_END), rtol=1e-12)
    assert int(traj.stats["num_steps"][0]) > 200  # the exact attempt and the three smoothed solves
    # The exact member is untouched.
    for a, b in zip(jax.tree.leaves(traj.params), jax.tree.leaves(exact.params)):
        np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])
    lines = traj.message.splitlines()
    assert len(lines) == 1 and lines[0].startswith("member 0: smoothed-width fallback"), traj.message
    assert "MAX_STEPS" in lines[0] and "1e-05" in lines[0]
    # Unbatched: a member that reached its horizon is returned as it was; a stalled one falls back.
    member = [jax.tree.map(lambda leaf, k=k: leaf[k] if eqx.is_array(leaf) else leaf, exact) for k in (0, 1)]
    kept = fs.smoothed_fallback(crossing, member[1], corners_only=False, **options)
    assert not bool(kept.stats["smoothed_fallback"]) and kept.message == "" and kept.info["smoothed_fallback_members"] == ()
    for a, b in zip(jax.tree.leaves(kept.final), jax.tree.leaves(member[1].final)):
        np.testing.assert_array_equal(a, b)
    single = fs.smoothed_fallback(sliding, member[0], max_steps=100_000, corners_only=False, **options)
    assert bool(single.ok) and single.message.startswith("smoothed-width fallback"), single.message
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(traj.params)):
        np.testing.assert_array_equal(a, np.asarray(b)[0])
