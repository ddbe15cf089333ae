"""Engine II: values are traced (no recompilation, vmap over targets), failures come back per member
with words, "auto" decides on measured stiffness, and segmented solves (auto, checkpoints) equal
single ones. References: closed forms (expm), single solves in a loop, a tight second solver."""

import logging
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import flowsim as fs


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.dot(x, self.w)


class TwoLayerReLU(eqx.Module):
    """x ↦ W₂ relu(W₁ x): the 2×2 net of Timor, Vardi & Shamir (ALT 2023)."""

    W1: jax.Array
    W2: jax.Array

    def __call__(self, x):
        return self.W2 @ jax.nn.relu(self.W1 @ x)


class UndefinedPastHalf(eqx.Module):
    """f(x) = x·w, undefined (NaN) once w passes 1/2: a linear model up to a wall."""

    w: jax.Array

    def __call__(self, x):
        return x[0] * self.w[0] + 0.0 * jnp.log(0.5 - self.w[0])


@pytest.fixture(scope="module")
def stiff_quadratic():
    """Squared loss of a linear model with Hessian eigenvalues from 1 to 10^6 (stiff in linear time)."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    X = np.sqrt(6.0) * np.diag(np.sqrt(np.logspace(0, 6, 6))) @ Q.T  # H = XᵀX / n
    theta_star = rng.normal(size=6)
    y = X @ theta_star
    H = X.T @ X / 6
    return fs.Problem(Linear(jnp.zeros(6)), X, y, "squared"), H, theta_star


@pytest.fixture(scope="module")
def diagonal_classification():
    X, y = fs.data.separable(10, 20, seed=2)
    return fs.Problem(fs.networks.Diagonal.init(20, depth=2, scale=1.0), X, y, "logistic")


def _compiles(caplog, fn):
    """The names of the XLA programs compiled while ``fn`` runs."""
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            fn()
            return [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    finally:
        jax.config.update("jax_log_compiles", False)


def test_new_tolerances_targets_and_horizons_do_not_recompile(stiff_quadratic, caplog):
    problem, _, _ = stiff_quadratic
    fs.simulate(problem, t1=1.0, solver="tsit5", rtol=1e-6, atol=1e-8, target_log_loss=-1.0, max_steps=50_000)
    compiled = _compiles(caplog, lambda: fs.simulate(problem, t1=2.0, solver="tsit5", rtol=1e-7, atol=1e-9,
                                                     target_log_loss=-2.0, max_steps=50_000))
    assert not [m for m in compiled if "segment" in m], compiled


def test_simulate_traces_once_for_many_values(stiff_quadratic):
    problem, _, _ = stiff_quadratic

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(rtol, t1, target):
        return fs.simulate(problem, t1=t1, solver="tsit5", rtol=rtol, atol=rtol * 1e-2, target_log_loss=target,
                           max_steps=50_000).log_loss[-1]

    for rtol, t1, target in [(1e-6, 1.0, -1.0), (1e-7, 3.0, -2.0), (1e-8, 5.0, -3.0)]:
        run(jnp.asarray(rtol), jnp.asarray(t1), jnp.asarray(target))


def test_vmap_over_target_log_loss_equals_a_loop():
    X, y = fs.data.underdetermined_regression(5, 12, seed=0)
    problem = fs.Problem(fs.networks.Diagonal.init(12, depth=2, scale=0.1, shape="last_zero"), X, y)
    targets = jnp.array([-3.0, -8.0, -15.0])
    batch = eqx.filter_vmap(
        lambda target: fs.simulate(problem, log_t1=50.0, target_log_loss=target, solver="kvaerno5", n_save=5)
    )(targets)
    assert np.all(np.asarray(batch.ok)) and np.all(np.asarray(batch.status) == fs.Status.TARGET_REACHED)
    np.testing.assert_allclose(np.asarray(batch.log_loss[:, -1]), np.asarray(targets), atol=1e-5)
    np.testing.assert_array_equal(batch.info["target_log_loss"], np.asarray(targets))
    for i, target in enumerate(np.asarray(targets)):
        single = fs.simulate(problem, log_t1=50.0, target_log_loss=float(target), solver="kvaerno5", n_save=5)
        np.testing.assert_allclose(float(batch.log_t_reached[i]), float(single.log_t_reached), rtol=1e-9)


def test_a_target_at_or_above_the_start_is_refused_eagerly_and_per_member_under_vmap():
    X, y = fs.data.underdetermined_regression(5, 12, seed=0)
    problem = fs.Problem(fs.networks.Diagonal.init(12, depth=2, scale=0.1, shape="last_zero"), X, y)
    assert float(problem.log_loss_value()) < 0  # so that ε = 1e-6 (a forgotten log) lies above it
    with pytest.raises(ValueError, match=r"not below the starting log loss.*did you mean log ε"):
        fs.simulate(problem, t1=1.0, target_log_loss=1e-6)
    start = float(problem.log_loss_value())
    batch = eqx.filter_vmap(lambda target: fs.simulate(problem, t1=1.0, target_log_loss=target, solver="tsit5",
                                                       max_steps=50_000))(jnp.array([start - 1.0, start + 1.0]))
    assert [bool(v) for v in batch.ok] == [True, False]
    assert int(batch.status[1]) == fs.Status.TARGET_AT_START
    assert "member 1" in batch.message and "not below the starting log loss" in batch.message


def test_invalid_labels_under_vmap_fail_that_member_with_words():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    labels = jnp.stack([jnp.array([1.0, -1, 1, -1, 1, -1]), jnp.array([1.0, 0, 1, 0, 1, 0])])

    def solve(y):
        return fs.simulate(fs.Problem(Linear(jnp.zeros(4)), X, y, "logistic"), log_t1=3.0, solver="tsit5")

    batch = eqx.filter_vmap(solve)(labels)
    assert [bool(v) for v in batch.ok] == [True, False]
    assert int(batch.status[1]) == fs.Status.INVALID_INPUT and "labels exactly ±1" in batch.message


def test_event_root_find_never_raises_on_a_vmapped_relu_batch():
    """Timor et al.'s 2×2 ReLU nets trained to a target: some members reach it, some stall at a
    kink or a plateau; each gets its own status, and nothing raises."""
    x = np.array([[1.0, 0.99], [-1.0, 0.99]])
    X = x / np.linalg.norm(x, axis=1, keepdims=True)
    Y = np.eye(2)
    keys = jax.random.split(jax.random.key(0), 6)

    def solve(key):
        k1, k2 = jax.random.split(key)
        model = TwoLayerReLU(1e-2 * jax.random.normal(k1, (2, 2)), 1e-2 * jax.random.normal(k2, (2, 2)))
        return fs.simulate(fs.Problem(model, X, Y, "squared"), t1=300.0, target_log_loss=math.log(1e-4),
                           solver="tsit5", max_steps=20_000)

    batch = eqx.filter_vmap(solve)(keys)
    statuses = {int(s) for s in np.asarray(batch.status)}
    assert statuses <= {fs.Status.TARGET_REACHED, fs.Status.HORIZON_REACHED, fs.Status.MAX_STEPS}
    reached = np.asarray(batch.status) == fs.Status.TARGET_REACHED
    assert np.all(np.asarray(batch.log_loss[:, -1])[reached] <= math.log(1e-4) + 1e-6)


def test_a_steep_target_in_linear_time_does_not_crash():
    """Squared loss at large initialisation: log L falls to round-off; the old event root find raised
    'The root is not contained in [lower, upper]' here."""
    X, y = fs.data.underdetermined_regression(5, 12, seed=0)
    problem = fs.Problem(fs.networks.Diagonal.init(12, depth=2, scale=10.0), X, y)
    traj = fs.simulate(problem, t1=1e3, target_log_loss=math.log(1e-26), solver="kvaerno5", max_steps=5_000)
    assert traj.status in (fs.Status.TARGET_REACHED, fs.Status.HORIZON_REACHED, fs.Status.MAX_STEPS)
    if bool(traj.ok) and traj.status == fs.Status.TARGET_REACHED:
        assert float(traj.log_loss[-1]) <= math.log(1e-26) + 1e-6


def test_a_field_that_turns_nan_is_named_not_blamed_on_max_steps():
    problem = fs.Problem(UndefinedPastHalf(jnp.asarray([0.0])), np.array([[1.0]]), np.array([5.0]), "squared")
    traj = fs.simulate(problem, t1=10.0, solver="tsit5", max_steps=2_000)
    assert not bool(traj.ok)
    assert traj.status == fs.Status.NON_FINITE_FIELD, traj.message
    assert "not finite" in traj.message and "Increase max_steps" not in traj.message


def test_auto_switches_to_the_implicit_solver_on_a_stiff_quadratic_and_matches_expm(stiff_quadratic):
    problem, H, theta_star = stiff_quadratic
    t1 = 5.0
    traj = fs.simulate(problem, t1=t1, rtol=1e-9, atol=1e-11)
    exact = theta_star + scipy.linalg.expm(-t1 * H) @ (np.zeros(6) - theta_star)
    assert bool(traj.ok), traj.message
    np.testing.assert_allclose(np.asarray(traj.final.w), exact, rtol=1e-6, atol=1e-8)
    solvers = [entry[1] for entry in traj.info["auto"]]
    assert "kvaerno5" in solvers and traj.info["auto"][-1][1] == "kvaerno5", traj.info["auto"]
    explicit = fs.simulate(problem, t1=t1, rtol=1e-9, atol=1e-11, solver="tsit5", max_steps=10**6)
    assert int(traj.stats["num_steps"]) < int(explicit.stats["num_steps"]) / 5


def test_auto_stays_explicit_on_a_well_conditioned_problem():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 5))
    problem = fs.Problem(Linear(jnp.zeros(5)), X, X @ rng.normal(size=5), "squared")
    traj = fs.simulate(problem, t1=3.0)
    assert bool(traj.ok) and [entry[1] for entry in traj.info["auto"]] == ["tsit5"]


def test_auto_on_log_time_classification_agrees_with_a_tight_implicit_solve(diagonal_classification):
    problem = diagonal_classification
    auto = fs.simulate(problem, log_t1=2_000.0, rtol=1e-8, atol=1e-10, max_steps=200_000)
    tight = fs.simulate(problem, log_t1=2_000.0, solver="kvaerno5", rtol=1e-11, atol=1e-13)
    assert bool(auto.ok) and bool(tight.ok)
    beta, ref = np.asarray(auto.final.beta()), np.asarray(tight.final.beta())
    assert np.max(np.abs(beta - ref)) / np.max(np.abs(ref)) < 1e-5
    assert "kvaerno5" in [entry[1] for entry in auto.info["auto"]]


def test_log_time_default_save_grid_covers_every_decade_of_log_t(diagonal_classification):
    traj = fs.simulate(diagonal_classification, log_t1=1e5, solver="kvaerno5", n_save=60)
    log_t = np.asarray(traj.log_t)
    for decade in range(0, 5):
        assert np.any((log_t >= 10.0**decade) & (log_t < 10.0 ** (decade + 1))), decade
    assert np.all(np.diff(log_t) > 0)


def test_a_segmented_solve_equals_a_single_one(diagonal_classification):
    """Progress and checkpoints run in segments that carry the solver and controller state: the
    result must be the uninterrupted solve's."""
    single = fs.simulate(diagonal_classification, log_t1=300.0, solver="kvaerno5", n_save=20)
    segmented = fs.simulate(diagonal_classification, log_t1=300.0, solver="kvaerno5", n_save=20, progress=True)
    np.testing.assert_allclose(np.asarray(segmented.params.layers[0]), np.asarray(single.params.layers[0]), rtol=1e-10, atol=1e-13)
    assert int(segmented.stats["num_accepted_steps"]) == int(single.stats["num_accepted_steps"])


def test_checkpoint_resumes_to_the_uninterrupted_result_and_refuses_other_arguments(diagonal_classification,
                                                                                      tmp_path):
    path = tmp_path / "solve.ckpt"
    reference = fs.simulate(diagonal_classification, log_t1=400.0, solver="tsit5", n_save=10)
    # Interrupted: a step budget stops the first call part-way; its checkpoint holds the state there.
    partial = fs.simulate(diagonal_classification, log_t1=400.0, solver="tsit5", n_save=10, checkpoint=path,
                          max_steps=300, checkpoint_every_s=0.0)
    assert not bool(partial.ok) and path.exists()
    resumed = fs.simulate(diagonal_classification, log_t1=400.0, solver="tsit5", n_save=10, checkpoint=path,
                          max_steps=300, checkpoint_every_s=0.0)
    assert resumed.info["resumed_from_log_t"] == pytest.approx(float(partial.log_t_reached))
    finished = fs.simulate(diagonal_classification, log_t1=400.0, solver="tsit5", n_save=10, checkpoint=path,
                           max_steps=100_000)
    with pytest.raises(ValueError, match="different arguments"):
        fs.simulate(diagonal_classification, log_t1=500.0, solver="tsit5", n_save=10, checkpoint=path)
    fresh = tmp_path / "fresh.ckpt"
    whole = fs.simulate(diagonal_classification, log_t1=400.0, solver="tsit5", n_save=10, checkpoint=fresh,
                        max_steps=100_000)
    assert whole.info["resumed_from_log_t"] is None
    np.testing.assert_allclose(np.asarray(whole.final.layers[0]), np.asarray(reference.final.layers[0]), rtol=1e-10)
    del finished


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(t1=1.0, progress=1), TypeError, "progress must be True or False"),
        (dict(t1=1.0, rtol=True), TypeError, "rtol must be a real number"),
        (dict(t1=1.0, max_steps=True), TypeError, "max_steps must be an integer"),
        (dict(log_t1=3.0, checkpoint=3), TypeError, "checkpoint must be a file path"),
    ],
)
def test_simulate_refuses_more_bad_options(stiff_quadratic, kwargs, error, match):
    problem, _, _ = stiff_quadratic
    with pytest.raises(error, match=match):
        fs.simulate(problem, **kwargs)


def test_modified_flow_is_linear_time_only(stiff_quadratic):
    problem, _, _ = stiff_quadratic
    with pytest.raises(ValueError, match="linear time only"):
        fs.simulate(fs.modified_flow(problem, 0.1), log_t1=3.0)


def test_trainable_filter_keeps_excluded_leaves_fixed_exactly():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 3))
    y = np.sign(X[:, 0])
    net = fs.networks.Diagonal([0.5 * jnp.ones(3), 0.5 * jnp.ones(3)])
    spec = eqx.tree_at(lambda m: m.layers, jax.tree.map(lambda _: False, net), (True, False))
    problem = fs.Problem(net, X, y, "logistic", trainable=spec)
    traj = fs.simulate(problem, t1=5.0, solver="tsit5", rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(traj.params.layers[1]), 0.5)
    # the first layer follows the flow of a linear model with weights 0.5·v: compare with that flow
    linear = fs.Problem(Linear(jnp.full(3, 0.25)), X, y, "logistic")
    reference = fs.simulate(linear, t1=5.0 * 0.25, solver="tsit5", rtol=1e-10, atol=1e-12)
    # d(0.5 v)/dt = 0.5·(−0.5 ∇L(β)) = −0.25 ∇L: β = 0.5 v runs the linear flow at speed 0.25
    np.testing.assert_allclose(0.5 * np.asarray(traj.final.layers[0]), np.asarray(reference.final.w), rtol=1e-7)
    with pytest.raises(ValueError, match="no trainable arrays selected"):
        fs.Problem(net, X, y, "logistic", trainable=lambda leaf: False)
    with pytest.raises(TypeError, match="must return True or False"):
        fs.Problem(net, X, y, "logistic", trainable=lambda leaf: "yes")
    with pytest.raises(ValueError, match="does not match the model"):
        fs.Problem(net, X, y, "logistic", trainable=(True,))


@pytest.mark.parametrize(
    "y, match",
    [
        (np.array([0.0, 1.0, 2.0]), r"shape \(n, k\) with k ≥ 2"),
        (np.array([[1.0, 0.0], [0.5, 0.6], [0.0, 1.0]]), "row 1 is"),
        (np.array([[1.0, 0.0], [-1.0, 2.0], [0.0, 1.0]]), "row 1 is"),
    ],
)
def test_cross_entropy_targets_must_be_probability_rows(y, match):
    class Logits(eqx.Module):
        W: jax.Array

        def __call__(self, x):
            return self.W @ x

    k = 1 if y.ndim == 1 else y.shape[1]
    model = Logits(jnp.zeros((k, 2))) if y.ndim == 2 else Linear(jnp.zeros(2))
    with pytest.raises(ValueError, match=match):
        fs.Problem(model, np.ones((3, 2)), y, "cross_entropy")


def test_chained_segments_compile_once_per_solver(caplog):
    # A segment's output carry must have exactly the types of its input (Diffrax's PID controller
    # starts with a Python bool and returns an array): otherwise the second segment recompiles, and
    # auto measured that compilation as the solver's cost.
    X, y = fs.data.separable(10, 21, seed=2)
    problem = fs.Problem(fs.networks.Diagonal.init(21, depth=2, scale=1.0), X, y, "logistic")

    def run():
        traj = fs.simulate(problem, log_t1=1_000.0, solver="tsit5", progress=True, max_steps=100_000)
        assert bool(traj.ok) and int(traj.stats["num_steps"]) > 2 * 512, traj.stats

    compiled = [m for m in _compiles(caplog, run) if "segment" in m]
    assert len(compiled) <= 1, compiled


def test_auto_on_a_relu_net_is_the_explicit_solve_in_one_segment():
    X, y = fs.data.separable(12, 6, seed=3)
    net = fs.networks.TwoLayer.init(jax.random.key(1), 6, 5, scale=0.3, leak=0.1)
    problem = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    # The band field (sliding decides per stratum instead: tests/test_sliding_simulate.py).
    auto = fs.simulate(problem, log_t1=4.0, solver="auto", nonsmooth="band")
    explicit = fs.simulate(problem, log_t1=4.0, solver="tsit5", nonsmooth="band")
    assert bool(auto.ok) and int(auto.stats["num_steps"]) == int(explicit.stats["num_steps"])
    np.testing.assert_array_equal(np.asarray(auto.final.W), np.asarray(explicit.final.W))
    assert [entry[1] for entry in auto.info["auto"]] == ["tsit5"] and "non-smooth" in auto.info["auto"][0][2]


def test_a_relu_solve_out_of_steps_at_a_kink_gets_advice_that_fits():
    # A single leaky-ReLU neuron whose flow slides along its kink for t in about (1.5, 2.7) (the hand-solved
    # flow of tests/test_nonsmooth.py): stopped by max_steps inside that phase, the message names the kink and
    # does not send the user to an implicit solver, which steps over a kink no better.
    net = fs.networks.TwoLayer(np.array([[0.5, 0.5]]), np.array([1.0]), 0.2)
    problem = fs.Problem(net, np.array([[1.0, 0.0], [0.3, 1.0]]), np.array([-1.0, 3.0]), "squared",
                         trainable=net.first_layer_filter())
    full = fs.simulate(problem, t1=2.0, solver="tsit5")
    assert bool(full.ok)
    cut = fs.simulate(problem, t1=2.0, solver="tsit5", max_steps=int(full.stats["num_steps"]) - 1)
    assert cut.status == fs.Status.MAX_STEPS
    assert "kink" in cut.message and "loosen rtol/atol" in cut.message and "smoothed_limit" in cut.message, cut.message
    assert "kvaerno5" not in cut.message and "auto" not in cut.message, cut.message
