"""`fs.simulate_batch(..., nonsmooth=...)`: a batch of seeds solved by event-driven sliding, and the band default.

Oracles: each member's own `fs.simulate(member, nonsmooth="sliding")`, the member built afresh from its seed (not
taken from the stacked batch), which the batched result must hold bitwise at its index; the fields and shapes of a
vmapped band solve (`eqx.filter_eval_shape`, nothing compiled); the hand-solved single-neuron sliding flow of
tests/test_nonsmooth.py, in a batch mixed with a member whose pair never reaches its kink. Every refusal names
why.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from test_nonsmooth import GAMMA, W0, single_neuron_data, sliding_closed_form

import flowsim as fs

# A small two-layer leaky-ReLU net on noisy labels: strata are joined, crossed and left before log t = 10.
OPTIONS = dict(log_t1=10.0, n_save=5, rtol=1e-10, atol=1e-12, solver="tsit5")
SEEDS = (0, 2, 3)


def _make(seed):
    key_x, key_w = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(key_x, (8, 3))
    y = jnp.where(jnp.arange(8) % 2 == 0, 1.0, -1.0)
    net = fs.networks.TwoLayer.init(key_w, 3, 4, scale=0.5, leak=0.1)
    return fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())


@pytest.fixture(scope="module")
def problems():
    return eqx.filter_vmap(_make)(jnp.asarray(SEEDS))


@pytest.fixture(scope="module")
def batch(problems):
    return fs.simulate_batch(problems, nonsmooth="sliding", **OPTIONS)


def test_each_member_is_its_own_single_sliding_solve_bitwise(batch):
    assert batch.info["nonsmooth"] == "sliding" and batch.info["schedule"] == "loop"
    assert int(np.sum(batch.stats["events"])) > 10  # the members do slide, cross and leave
    for index, seed in enumerate(SEEDS):
        single = fs.simulate(_make(seed), nonsmooth="sliding", **OPTIONS)
        assert single.info["nonsmooth"] == "sliding"
        member = jax.tree_util.tree_map(lambda leaf: leaf[index], eqx.filter(batch, eqx.is_array))
        for got, want in zip(jax.tree_util.tree_leaves(member.params), jax.tree_util.tree_leaves(single.params)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        for name in ("log_t", "loss", "log_loss", "status", "log_t_reached"):
            np.testing.assert_array_equal(np.asarray(getattr(member, name)), np.asarray(getattr(single, name)))
        for key, value in single.stats.items():
            if key != "wall_time_s":
                np.testing.assert_array_equal(np.asarray(batch.stats[key][index]), np.asarray(value), err_msg=key)
        assert batch.info["auto"][index] == single.info["auto"]  # per member: a tuple of the members' own
    assert batch.info["per_member"] == ("auto", "implicit")
    assert batch.info["batch_wall_time_s"] >= float(np.sum(batch.stats["wall_time_s"]))


def test_a_sliding_batch_has_the_fields_and_shapes_of_a_vmapped_batch(problems, batch):
    # The vmapped band solve's output structure, traced only (nothing is compiled or run).
    band = eqx.filter_eval_shape(eqx.filter_vmap(lambda p: fs.simulate(p, nonsmooth="band", **OPTIONS)), problems)
    shape = lambda tree: jax.tree_util.tree_map(lambda leaf: (leaf.shape, leaf.dtype), tree)  # noqa: E731
    for name in ("log_t", "params", "final", "loss", "log_loss", "status", "log_t_reached", "settings"):
        assert shape(eqx.filter(getattr(batch, name), eqx.is_array)) == shape(getattr(band, name)), name
    for key in set(band.stats) & set(batch.stats):
        assert batch.stats[key].shape == band.stats[key].shape == (len(SEEDS),), key
    # Downstream code works unchanged: ok and message per member, a member by index.
    assert batch.ok.shape == (len(SEEDS),) and bool(np.all(batch.ok)) and batch.message == ""
    assert np.asarray(batch.info["rtol"]).shape == (len(SEEDS),)
    assert batch.final.W.shape == (len(SEEDS), 4, 3)


def test_a_mixed_batch_follows_each_members_hand_solved_flow():
    """Member 0: the single neuron of tests/test_nonsmooth.py, whose pair joins its kink, slides and leaves;
    member 1: the same neuron started at w = (−0.5, 0.5), whose pair stays on the leaky side (w₁ < 0 up to t = 12,
    z₂ > 0): one linear phase, w(t) = w* + exp(−A t / n)(w(0) − w*) with x₁ scaled by γ. Both in closed form."""
    t_end = 12.0
    (expected,), _, _ = sliding_closed_form(0.3, [t_end])
    X, y = single_neuron_data(0.3)
    x1 = np.array([GAMMA, 0.0])
    A = np.outer(x1, x1) + np.outer(X[1], X[1])
    w_star = np.linalg.solve(A, y[0] * x1 + y[1] * X[1])
    w0 = np.array([-0.5, 0.5])
    leaky = w_star + scipy.linalg.expm(-A * t_end / len(y)) @ (w0 - w_star)

    def make(w):
        net = fs.networks.TwoLayer(w[None, :], jnp.ones(1), GAMMA)
        return fs.Problem(net, X, y, "squared", trainable=net.first_layer_filter())

    problems = eqx.filter_vmap(make)(jnp.stack([jnp.asarray(W0), jnp.asarray(w0)]))
    batch = fs.simulate_batch(problems, log_t1=np.log(t_end), nonsmooth="sliding", rtol=1e-11, atol=1e-13)
    assert bool(np.all(batch.ok)), batch.message
    np.testing.assert_allclose(np.asarray(batch.final.W[:, 0]), np.stack([expected, leaky]), rtol=0, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(batch.stats["slide_events"]), [1, 0])
    np.testing.assert_array_equal(np.asarray(batch.stats["leave_events"]), [1, 0])


def test_progress_shows_a_bar_over_the_members(problems, batch, capsys):
    again = fs.simulate_batch(problems, nonsmooth="sliding", progress=True, **OPTIONS)
    assert f"{len(SEEDS)}/{len(SEEDS)}" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(again.final.W), np.asarray(batch.final.W))


def test_auto_is_the_band_in_a_batch_and_says_how_to_slide(problems):
    options = dict(OPTIONS, log_t1=1.0)
    auto = fs.simulate_batch(problems, **options)
    band = fs.simulate_batch(problems, nonsmooth="band", **options)
    assert auto.info["nonsmooth"] == band.info["nonsmooth"] == "band"
    assert "one vmapped program" in auto.info["nonsmooth_reason"]
    assert "nonsmooth='sliding'" in auto.info["nonsmooth_reason"]
    assert "nonsmooth_reason" not in band.info  # named explicitly: nothing to explain
    np.testing.assert_array_equal(np.asarray(auto.final.W), np.asarray(band.final.W))


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(schedule="refill"), ValueError, "schedule='refill' cannot run nonsmooth='sliding'.*not vmapped"),
        (dict(chunk_size=2), ValueError, "chunk_size=2 has no meaning with nonsmooth='sliding'"),
        (dict(devices=[jax.devices()[0]] * 2), ValueError, "cannot shard a batch over 2 devices"),
        (dict(checkpoint="x"), ValueError, "does not take checkpoint"),
        (dict(nonsmooth="slide"), ValueError, "unknown nonsmooth 'slide'"),
        (dict(rtol_typo=1e-3), TypeError, "simulate_batch: .*rtol_typo"),
    ],
)
def test_what_cannot_slide_in_a_batch_is_refused(problems, options, error, match):
    options = {"nonsmooth": "sliding", **options}
    with pytest.raises(error, match=match):
        fs.simulate_batch(problems, log_t1=1.0, **options)


def test_a_smooth_model_cannot_slide_in_a_batch():
    X, y = fs.data.separable(8, 6, seed=0)
    smooth = eqx.filter_vmap(lambda a: fs.Problem(fs.networks.Diagonal.init(6, depth=2, scale=a), X, y, "logistic"))(
        jnp.array([0.5, 1.0])
    )
    with pytest.raises(TypeError, match="no kinks to slide on"):
        fs.simulate_batch(smooth, log_t1=1.0, nonsmooth="sliding")
