"""`fs.simulate(..., nonsmooth="sliding")`: exact event-driven sliding through the public entry point.

Oracles: the hand-solved single-neuron flow of tests/test_nonsmooth.py in closed form (every saved state,
not only the last); the same network written as the user's own `jnp.maximum` module (kinks found by the
jaxpr rewrite), which must follow the same strata; the band field at tight tolerances; an uninterrupted
solve for a checkpointed one. Every refusal names what was wrong.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_nonsmooth import GAMMA, W0, single_neuron_data, single_neuron_problem, sliding_closed_form

import flowsim as fs

T_END = 12.0
SAVE_T = np.array([0.5, 1.0, 1.6, 2.0, 2.5, 3.0, 5.0, 8.0])
TIGHT = dict(rtol=1e-11, atol=1e-13)


def test_every_save_follows_the_hand_solved_sliding_flow():
    expected, t1, t2 = sliding_closed_form(0.3, np.append(SAVE_T, T_END))
    assert t1 < SAVE_T[3] < t2  # some saves fall inside the sliding phase
    traj = fs.simulate(
        single_neuron_problem(0.3), log_t1=np.log(T_END), save_log_t=np.log(SAVE_T), nonsmooth="sliding", **TIGHT
    )
    assert traj.ok, traj.message
    assert traj.info["nonsmooth"] == "sliding" and "sliding on strata" in traj.info["kinks"]
    np.testing.assert_allclose(np.asarray(traj.log_t), np.log(np.append(SAVE_T, T_END)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(traj.params.W)[:, 0, :], expected, rtol=0, atol=1e-8)
    stats = {key: int(value) for key, value in traj.stats.items() if key.endswith("events")}
    assert stats == {"events": 2, "slide_events": 1, "cross_events": 0, "leave_events": 1, "missed_events": 0}
    assert int(traj.stats["pairs_at_kink"]) == 0  # it left the kink at t2 < T_END


def test_auto_slides_where_it_applies_and_says_why_the_band_ran_elsewhere():
    problem = single_neuron_problem(0.3)
    auto = fs.simulate(problem, log_t1=np.log(T_END), **TIGHT)
    sliding = fs.simulate(problem, log_t1=np.log(T_END), nonsmooth="sliding", **TIGHT)
    assert auto.info["nonsmooth"] == "sliding" and "nonsmooth_reason" not in auto.info
    assert np.array_equal(np.asarray(auto.params.W), np.asarray(sliding.params.W))
    band = fs.simulate(problem, log_t1=np.log(T_END), solver="tsit5", rtol=1e-10, atol=1e-12, nonsmooth="band")
    assert band.info["nonsmooth"] == "band"
    (expected,), _, _ = sliding_closed_form(0.3, [T_END])
    # The band holds a sliding pair within ~ its width (10x the tolerances) of the kink: the two agree to that.
    np.testing.assert_allclose(np.asarray(band.final.W[0]), expected, atol=1e-7)
    np.testing.assert_allclose(np.asarray(sliding.final.W[0]), expected, atol=1e-8)
    # Where sliding does not apply, auto runs the band and says why.
    linear = fs.simulate(problem, t1=2.0, n_save=3)
    assert linear.info["nonsmooth"] == "band" and "linear time" in linear.info["nonsmooth_reason"]
    traced = eqx.filter_jit(lambda p: fs.simulate(p, log_t1=1.0, n_save=3, solver="tsit5"))(problem)
    assert traced.info["nonsmooth"] == "band" and "jax.jit" in traced.info["nonsmooth_reason"]
    deep = fs.networks.MLP.init(jax.random.key(0), 2, [3, 3], "scalar")
    X, y = single_neuron_data(0.3)
    deep_traj = fs.simulate(fs.Problem(deep, X, y, "squared"), log_t1=0.5, n_save=3, solver="tsit5")
    assert deep_traj.info["nonsmooth"] == "band" and "depth 3" in deep_traj.info["nonsmooth_reason"]
    smooth = fs.Problem(fs.networks.Linear(jnp.ones(2)), X, y, "squared")
    assert fs.simulate(smooth, t1=1.0, n_save=2).info["nonsmooth"] is False


class UserLeakyNet(eqx.Module):
    """The two-layer leaky-ReLU net as a user writes it: φ(z) = max(z, γz), outer layer fixed."""

    W: jax.Array
    a: jax.Array

    def __call__(self, x):
        z = self.W @ x
        return jnp.dot(self.a, jnp.maximum(z, GAMMA * z))


def test_a_users_jnp_maximum_module_slides_like_the_library_net():
    rng = np.random.default_rng(0)
    n, d, m = 6, 3, 3
    X, y = rng.normal(size=(n, d)), np.sign(rng.normal(size=n))
    W, a = 0.5 * rng.normal(size=(m, d)), np.array([1.0, -1.0, 0.5])
    library = fs.networks.TwoLayer(W, a, GAMMA)
    mine = UserLeakyNet(jnp.asarray(W), jnp.asarray(a))
    trajs = []
    first_layer = eqx.tree_at(lambda t: (t.W, t.a), jax.tree.map(lambda _: False, mine), (True, False))
    for model, trainable in ((library, library.first_layer_filter()), (mine, first_layer)):
        problem = fs.Problem(model, X, y, "logistic", trainable=trainable)
        trajs.append(fs.simulate(problem, log_t1=3.0, nonsmooth="sliding", n_save=10, rtol=1e-10, atol=1e-12))
    lib, user = trajs
    assert lib.ok and user.ok, (lib.message, user.message)
    assert int(lib.stats["slide_events"]) >= 1 and int(lib.stats["events"]) == int(user.stats["events"])
    np.testing.assert_allclose(np.asarray(user.params.W), np.asarray(lib.params.W), rtol=1e-7, atol=1e-9)


def test_target_log_loss_stops_at_the_target():
    target = -8.0
    traj = fs.simulate(single_neuron_problem(0.3), log_t1=8.0, nonsmooth="sliding", target_log_loss=target, **TIGHT)
    assert traj.ok and "target" in traj.message
    assert abs(float(traj.log_loss[-1]) - target) < 1e-6
    band = fs.simulate(
        single_neuron_problem(0.3), log_t1=8.0, target_log_loss=target, solver="tsit5", nonsmooth="band", **TIGHT
    )
    assert abs(float(traj.log_t_reached) - float(band.log_t_reached)) < 1e-5


def test_a_checkpointed_sliding_solve_resumes(tmp_path):
    problem = single_neuron_problem(0.3)
    path = tmp_path / "solve.checkpoint"
    first = fs.simulate(
        problem, log_t1=np.log(T_END), nonsmooth="sliding", max_steps=40, checkpoint=path, checkpoint_every_s=0, **TIGHT
    )
    assert not first.ok and "max_steps" in first.message
    resumed = fs.simulate(
        problem,
        log_t1=np.log(T_END),
        nonsmooth="sliding",
        max_steps=100_000,
        checkpoint=path,
        checkpoint_every_s=0,
        **TIGHT,
    )
    assert resumed.ok and resumed.info["resumed_from_log_t"] == pytest.approx(float(first.log_t_reached), abs=1e-5)
    (expected,), _, _ = sliding_closed_form(0.3, [T_END])
    np.testing.assert_allclose(np.asarray(resumed.final.W[0]), expected, atol=1e-8)
    with pytest.raises(ValueError, match="different arguments"):
        fs.simulate(problem, log_t1=np.log(T_END), nonsmooth="sliding", checkpoint=path, rtol=1e-9)


def test_max_kinks_bounds_sliding_only_without_a_closed_form():
    # Two identical units with output weights 1/2 compute the single neuron: each row follows its hand-solved flow
    # at half speed, and both (sample 0, unit u) pairs slide at once (tests/test_sliding_clarke.py).
    X, y = single_neuron_data(0.3)
    net = fs.networks.TwoLayer(np.stack([W0, W0]), np.array([0.5, 0.5]), GAMMA, max_kinks=1)
    problem = fs.Problem(net, X, y, "squared", trainable=net.first_layer_filter())
    traj = fs.simulate(problem, log_t1=np.log(T_END), nonsmooth="sliding", **TIGHT)
    # The closed form (unit by unit, no K×p matrix) holds any number of pairs: max_kinks is the band's K only.
    assert traj.ok and int(traj.stats["slide_events"]) == 2, traj.message
    (expected,), _, _ = sliding_closed_form(0.3, [T_END / 2])
    np.testing.assert_allclose(np.asarray(traj.final.W), np.stack([expected, expected]), atol=1e-8)
    # A model on the autodiff path forms K×p matrices: its max_kinks bounds the stratum, and a full one stops.
    mine = UserLeakyNet(jnp.stack([jnp.asarray(W0)] * 2), jnp.array([0.5, 0.5]))
    first_layer = eqx.tree_at(lambda t: (t.W, t.a), jax.tree.map(lambda _: False, mine), (True, False))
    kinked = fs.Problem(mine, X, y, "squared", trainable=first_layer).model
    kinked = dataclasses.replace(kinked, max_kinks=1)
    trainable = eqx.tree_at(lambda t: (t.model.W, t.model.a), jax.tree.map(lambda _: False, kinked), (True, False))
    bounded = fs.Problem(kinked, X, y, "squared", trainable=trainable)
    traj = fs.simulate(bounded, log_t1=np.log(T_END), nonsmooth="sliding", **TIGHT)
    assert not traj.ok and "max_kinks" in traj.message


def test_bad_uses_of_sliding_are_refused():
    problem = single_neuron_problem(0.3)
    with pytest.raises(ValueError, match="nonsmooth must be one of.*'slide'"):
        fs.simulate(problem, log_t1=1.0, nonsmooth="slide")
    with pytest.raises(ValueError, match="nonsmooth must be one of"):
        fs.simulate(problem, log_t1=1.0, nonsmooth=None)
    smooth = fs.Problem(fs.networks.Linear(jnp.ones(2)), *single_neuron_data(0.3), "squared")
    with pytest.raises(TypeError, match="no kinks to slide on"):
        fs.simulate(smooth, log_t1=1.0, nonsmooth="sliding")
    deep = fs.networks.MLP([np.ones((2, 2)), np.ones((2, 2)), np.ones(2)])
    with pytest.raises(ValueError, match="one kink layer per sample.*depth 3"):
        fs.simulate(fs.Problem(deep, *single_neuron_data(0.3), "squared"), log_t1=1.0, nonsmooth="sliding")
    with pytest.raises(ValueError, match="integrates in log time"):
        fs.simulate(problem, t1=2.0, time="linear", nonsmooth="sliding")
    with pytest.raises(TypeError, match="flowsim.Problem"):
        fs.simulate(fs.modified_flow(problem, 0.1), t1=1.0, nonsmooth="sliding")
    with pytest.raises(ValueError, match="cannot run under jax.jit or eqx.filter_vmap"):
        eqx.filter_vmap(lambda r: fs.simulate(problem, log_t1=1.0, rtol=r, nonsmooth="sliding"))(
            jnp.array([1e-8, 1e-9])
        )


def test_auto_measures_each_stratum_and_may_go_implicit():
    # After the pair leaves its kink the flow is linear, and in log time its field grows like e^s: stiff.
    (expected,), _, _ = sliding_closed_form(0.3, [np.exp(8.0)])
    runs = [fs.simulate(single_neuron_problem(0.3), log_t1=8.0, nonsmooth="sliding", **TIGHT) for _ in range(2)]
    traj = runs[0]
    assert traj.ok, traj.message
    reasons = [reason for _, _, reason in traj.info["auto"]]
    assert any(reason.startswith("trial") for reason in reasons), reasons
    assert traj.info["implicit"]
    np.testing.assert_allclose(np.asarray(traj.final.W[0]), expected, atol=1e-8)
    # Decided on counted work only: the same call gives bitwise the same result.
    assert np.array_equal(np.asarray(runs[1].params.W), np.asarray(traj.params.W))
    assert runs[1].info["auto"] == traj.info["auto"]


def test_fs_cache_keys_the_nonsmooth_method(tmp_path):
    problem = single_neuron_problem(0.3)
    with fs.cache(tmp_path):
        band = fs.simulate(problem, log_t1=2.0, solver="tsit5", n_save=5, nonsmooth="band")
        sliding = fs.simulate(problem, log_t1=2.0, solver="tsit5", n_save=5, nonsmooth="sliding")
    assert band.info["nonsmooth"] == "band" and sliding.info["nonsmooth"] == "sliding"
    with fs.cache(tmp_path):
        replayed = fs.simulate(problem, log_t1=2.0, solver="tsit5", n_save=5, nonsmooth="sliding")
    assert replayed.info["nonsmooth"] == "sliding"
    assert np.array_equal(np.asarray(replayed.params.W), np.asarray(sliding.params.W))
    assert int(replayed.stats["events"]) == int(sliding.stats["events"])


def test_a_band_solve_stuck_at_a_kink_points_to_sliding():
    traj = fs.simulate(
        single_neuron_problem(0.3), log_t1=np.log(T_END), solver="tsit5", max_steps=100, nonsmooth="band"
    )
    assert not traj.ok and int(traj.stats["pairs_at_kink"]) == 1
    assert "nonsmooth='sliding'" in traj.message


def test_lyu_li_smoothed_margin_never_decreases_along_a_sliding_flow():
    """Lyu & Li (ICLR 2020): once the data are fit, the smoothed normalised margin of a homogeneous net never
    decreases along the Clarke subgradient flow (tests/test_lyu_li.py checks the band field the same way)."""
    from test_lyu_li import separable_data

    X, y = separable_data()
    net = fs.networks.TwoLayer.init(jax.random.key(0), X.shape[1], 6, scale=0.5)
    problem = fs.Problem(net, X, y, "exponential")
    traj = fs.simulate(
        problem,
        log_t1=15.0,
        nonsmooth="sliding",
        solver="tsit5",
        rtol=1e-9,
        atol=1e-11,
        save_log_t=np.linspace(0.0, 15.0, 31),
    )
    assert traj.ok, traj.message
    assert int(traj.stats["slide_events"]) >= 1 and int(traj.stats["missed_events"]) == 0
    margin = np.asarray(fs.analysis.smoothed_margin(problem, traj.params, degree=2))
    fit = X.shape[0] * np.asarray(traj.loss) < 1.0
    assert fit[-1] and np.all(fit[np.argmax(fit) :]) and np.sum(fit) >= 8
    late = margin[fit]
    assert late[0] > 0 and late[-1] > late[0]
    assert np.all(np.diff(late) >= -1e-12 * np.abs(late[1:])), np.diff(late)


def test_a_pair_exactly_at_its_kink_at_the_start_is_decided_at_once():
    # z = ⟨w, x_1⟩ = 0 at t = 0: the event is due before the first segment (a margin already at 0 never triggers
    # diffrax's event, which fires when it falls through 0), so it is taken at the start. The band field at tight
    # tolerances is the reference.
    net = fs.networks.TwoLayer(np.array([[0.0, 0.5]]), np.array([1.0]), GAMMA)
    problem = fs.Problem(net, *single_neuron_data(0.3), "squared", trainable=net.first_layer_filter())
    sliding = fs.simulate(problem, log_t1=np.log(T_END), nonsmooth="sliding", n_save=10, **TIGHT)
    band = fs.simulate(
        problem, log_t1=np.log(T_END), solver="tsit5", n_save=10, rtol=1e-11, atol=1e-13, nonsmooth="band"
    )
    assert sliding.ok and band.ok, (sliding.message, band.message)
    assert int(sliding.stats["events"]) >= 1 and int(sliding.stats["missed_events"]) == 0
    np.testing.assert_allclose(np.asarray(sliding.params.W), np.asarray(band.params.W), atol=1e-8)


def test_a_model_with_two_kink_layers_is_refused_and_one_layer_runs():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(8, 2))
    y = np.sign(X[:, 0] * X[:, 1])
    deep = eqx.nn.MLP(
        2, "scalar", 6, 2, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="one kink layer per sample.*MLP feed each other"):
        fs.simulate(fs.Problem(deep, X, y, "logistic"), log_t1=1.0, nonsmooth="sliding")
    shallow = eqx.nn.MLP(
        2, "scalar", 6, 1, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=jax.random.key(0)
    )
    traj = fs.simulate(fs.Problem(shallow, X, y, "logistic"), log_t1=1.0, nonsmooth="sliding", n_save=3)
    assert traj.ok and traj.info["nonsmooth"] == "sliding", traj.message


def test_a_vector_output_net_slides_like_the_band_field():
    # Timor et al.'s 2-2-2 net from a tiny start (scenarios/timor2023_relu_rank.py): the output's cotangent is
    # (n, k), not (n,). The band field at tight tolerances is the reference.
    x = np.array([[1.0, 0.99], [-1.0, 0.99]])
    X = x / np.linalg.norm(x, axis=1, keepdims=True)
    net = fs.networks.MLP.init(jax.random.key(0), 2, [2], 2, scale=1e-4, distribution="ball")
    problem = fs.Problem(net, X, np.eye(2))
    sliding = fs.simulate(problem, log_t1=np.log(600.0), solver="tsit5", n_save=4, **TIGHT)
    band = fs.simulate(problem, log_t1=np.log(600.0), solver="tsit5", n_save=4, nonsmooth="band", **TIGHT)
    assert sliding.ok and band.ok and sliding.info["nonsmooth"] == "sliding", sliding.message
    for ours, theirs in zip(sliding.final.layers, band.final.layers, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-7)


@pytest.mark.parametrize("seed", [1, 3])
def test_a_pair_that_comes_back_through_its_kink_at_once_is_not_missed(seed):
    # Small noisy nets on which a pair that had just left S (or crossed) came back through its kink within the
    # next segment, while pairs an event moved were left out of its events: the return was found only at the
    # restart and its slide not taken (final W off the band field's by 1e-2 and 2). The band field at tight
    # tolerances is the reference: it agrees to about its band, here 1e-8.
    kx, kw = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(kx, (8, 3))
    y = jnp.where(jnp.arange(8) % 2 == 0, 1.0, -1.0)
    net = fs.networks.TwoLayer.init(kw, 3, 4, scale=0.5, leak=0.1)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    options = dict(log_t1=10.0, n_save=5, rtol=1e-10, atol=1e-12, solver="tsit5")
    sliding = fs.simulate(problem, nonsmooth="sliding", **options)
    band = fs.simulate(problem, nonsmooth="band", **options)
    assert sliding.ok and band.ok, (sliding.message, band.message)
    assert int(sliding.stats["missed_events"]) == 0
    np.testing.assert_allclose(np.asarray(sliding.params.W), np.asarray(band.params.W), atol=1e-6)
