"""Kinks of any model (flowsim._kinks) beyond the field: smoothing every site kind, the band widths
without the full Jacobian, and the analysis of a user's own model (issue 20).

Oracles: hand-written smoothed models; the closed-form band of a first-layer unit,
(atol + rtol‖w_u‖)‖x‖; the dense Hessian of the current linear piece; the library's own
`fs.networks.MLP` (its hand-written kink description) for the same weights.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import OwnLeaky, OwnReLU

import flowsim as fs
from flowsim._kinks import Kinked, NonsmoothWarning, _kink_widths


class WhereKinks(OwnLeaky):
    """Kinks written as where-forms: jax.nn.leaky_relu, jnp.where(z > 0, z, γz), jax.nn.hard_tanh."""

    def __call__(self, x):
        z = self.W @ x
        return self.a @ (jax.nn.leaky_relu(z, self.leak) + jnp.where(z > 0, z, self.leak * z)
                         + jax.nn.hard_tanh(z))


def _data(seed, n, d):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, np.where(X[:, 0] > 0, 1.0, -1.0)


def test_where_sites_are_smoothed_like_the_hand_written_model():
    rng = np.random.default_rng(0)
    d, m, leak, width = 3, 5, 0.2, 0.3
    net = WhereKinks(rng.standard_normal((m, d)), rng.standard_normal(m), leak)
    X, y = _data(1, 6, d)
    problem = fs.Problem(net, X, y, "logistic")
    assert isinstance(problem.model, Kinked)
    assert [s.label for s in problem.model.sites] == ["leaky_relu", "where", "hard_tanh", "hard_tanh"]

    def step(z):  # ψ'(z) of ψ(z) = ε·softplus(z/ε)
        return 1.0 / (1.0 + np.exp(-z / width))

    def hand(x):
        z = net.W @ x
        leaky = leak * z + step(z) * (1 - leak) * z
        inner = z + step(-1.0 - z) * (-1.0 - z)  # where(z < −1, −1, z)
        tanh = inner + step(z - 1.0) * (1.0 - inner)  # where(z > 1, 1, ·)
        return net.a @ (2 * leaky + tanh)

    smoothed = fs.networks.Smoothed(problem.model, width)
    for x in X:
        expected = hand(x)
        assert float(smoothed(jnp.asarray(x))) == pytest.approx(expected, rel=1e-13, abs=1e-13)
    # As the width goes to 0 the smoothed model tends to the model (error O(ε)).
    gaps = [np.max(np.abs(jax.vmap(fs.networks.Smoothed(problem.model, eps))(X) - jax.vmap(net)(X)))
            for eps in (1e-2, 1e-4)]
    assert gaps[1] < 2e-2 * gaps[0] + 1e-12


def test_kink_widths_in_blocks_equal_the_whole_jacobian_and_the_closed_form():
    key = jax.random.PRNGKey(3)
    mlp = eqx.nn.MLP(4, "scalar", 6, 2, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=key)
    X, y = _data(2, 5, 4)
    kinked = fs.Problem(mlp, X, y, "logistic").model
    rtol, atol = 1e-3, 1e-5
    for x in X:
        whole = _kink_widths(kinked, jnp.asarray(x), rtol, atol, 10**9)
        for entries in (1, 40, 200):  # one unit per pass, several, two blocks with padding
            np.testing.assert_allclose(_kink_widths(kinked, jnp.asarray(x), rtol, atol, entries), whole,
                                       rtol=1e-13, atol=0)
        # First-layer units: z_u = ⟨w_u, x⟩ moves by (atol + rtol‖w_u‖)‖x‖.
        W1 = np.asarray(mlp.layers[0].weight)
        np.testing.assert_allclose(whole[:6], (atol + rtol * np.linalg.norm(W1, axis=1)) * np.linalg.norm(x),
                                   rtol=1e-13)


def test_kink_widths_of_a_large_user_model_stay_small_in_memory():
    """m = 100 units, n = 100 samples, d = 10³: the whole Jacobian would be n·U·p = 10⁹ numbers (8 GB)."""
    n, m, d = 100, 100, 1000
    rng = np.random.default_rng(4)
    X = rng.standard_normal((n, d))
    net = OwnReLU(rng.standard_normal((m, d)) / np.sqrt(d), rng.standard_normal(m))
    kinked = fs.Problem(net, X, np.sign(X[:, 0]), "logistic").model
    widths = jax.jit(jax.vmap(lambda x: kinked.kink_widths(x, 1e-7, 1e-9)))
    compiled = widths.lower(jnp.asarray(X)).compile()
    memory = compiled.memory_analysis()
    if memory is not None:
        assert memory.temp_size_in_bytes < 2**30
    got = np.asarray(compiled(jnp.asarray(X[:n])))
    expected = (1e-9 + 1e-7 * np.linalg.norm(net.W1, axis=1))[None, :] * np.linalg.norm(X, axis=1)[:, None]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def _net_and_data(seed=5, on_kink=False):
    rng = np.random.default_rng(seed + 100)
    n, d, m = 8, 3, 4
    X, y = _data(seed, n, d)
    W1 = rng.standard_normal((m, d))
    if on_kink:  # sample 0 exactly at unit 0's kink
        W1[0] -= (W1[0] @ X[0]) / (X[0] @ X[0]) * X[0]
    return OwnReLU(W1, rng.standard_normal(m)), X, y


def _piece_hessian_top(net, X, y):
    """λ_max of the Hessian of the logistic loss of the piece with the activation pattern held fixed."""
    mask = (X @ net.W1.T > 0).astype(float)

    def loss(theta):
        W1, w2 = theta[:net.W1.size].reshape(net.W1.shape), theta[net.W1.size:]
        f = (mask * (X @ W1.T)) @ w2
        return jnp.mean(jnp.logaddexp(0.0, -y * f))

    theta = jnp.concatenate([jnp.ravel(net.W1), net.w2])
    return float(np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(theta)))[-1])


def test_sharpness_of_a_users_relu_model_and_its_trajectory():
    net, X, y = _net_and_data()
    problem = fs.Problem(net, X, y, "logistic")
    top = _piece_hessian_top(net, X, y)
    assert float(fs.analysis.sharpness(problem, num_iters=20)) == pytest.approx(top, rel=1e-10)
    assert float(fs.analysis.sharpness(problem, net, num_iters=20)) == pytest.approx(top, rel=1e-10)
    library = fs.Problem(fs.networks.MLP([net.W1, net.w2]), X, y, "logistic")
    assert float(fs.analysis.sharpness(library, num_iters=20)) == pytest.approx(top, rel=1e-10)
    # A stack of the user's models (as traj.params holds them): one value per state.
    scales = (1.0, 1.3, 0.7)
    stacked = OwnReLU(jnp.stack([c * net.W1 for c in scales]), jnp.stack([net.w2 / c**2 for c in scales]))
    expected = [_piece_hessian_top(OwnReLU(c * net.W1, net.w2 / c**2), X, y) for c in scales]
    np.testing.assert_allclose(fs.analysis.sharpness(problem, stacked, num_iters=20), expected, rtol=1e-10)
    with pytest.raises(TypeError, match="problem's class"):
        fs.analysis.sharpness(problem, fs.networks.MLP([net.W1, net.w2]))


def test_sharpness_warns_where_pairs_sit_at_kinks():
    net, X, y = _net_and_data(on_kink=True)
    problem = fs.Problem(net, X, y, "logistic")
    with pytest.warns(NonsmoothWarning, match="sit at kinks"):
        fs.analysis.sharpness(problem, num_iters=4)


def test_kink_statistics_of_a_users_model_and_its_trajectory():
    net, X, y = _net_and_data(on_kink=True)
    problem = fs.Problem(net, X, y, "logistic")
    library = fs.Problem(fs.networks.MLP([net.W1, net.w2]), X, y, "logistic")
    got = fs.analysis.kink_statistics(problem, net)
    assert int(got["pairs_at_kink"]) == 1 and int(got["units_at_kink"]) == 1
    expected = fs.analysis.kink_statistics(library)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12)
    traj = fs.simulate(problem, log_t1=0.5, n_save=3)
    over_time = fs.analysis.kink_statistics(problem, traj.params, rtol=1e-8, atol=1e-10)
    assert over_time["pairs_at_kink"].shape == (3,)
    assert int(over_time["active_pairs"][0]) == int(got["active_pairs"])


def test_kink_statistics_and_kkt_refuse_what_they_cannot_read():
    net, X, y = _net_and_data()
    problem = fs.Problem(net, X, y, "logistic")
    with pytest.raises(TypeError, match="found none in Diagonal"):
        fs.analysis.kink_statistics(fs.Problem(fs.networks.Diagonal.init(3, 2), X, y, "logistic"))
    with pytest.raises(TypeError, match="flowsim.Problem"):
        fs.analysis.kink_statistics(net)
    with pytest.raises(ValueError, match="rtol"):
        fs.analysis.kink_statistics(problem, rtol=-1.0)
    with pytest.raises(TypeError, match="problem's class"):
        fs.analysis.kink_statistics(problem, fs.networks.MLP([net.W1, net.w2]))


def test_homogeneous_kkt_of_a_users_model_sees_its_kinks():
    net, X, y = _net_and_data(on_kink=True)
    net = eqx.tree_at(lambda t: t.w2, net, np.abs(net.w2))
    y = np.sign(np.asarray(jax.vmap(net)(X)) + 1e-3)  # labels the net fits
    problem = fs.Problem(net, X, y, "logistic")
    library = fs.Problem(fs.networks.MLP([net.W1, net.w2]), X, y, "logistic")
    got = fs.analysis.homogeneous_kkt(problem, net, kink_rtol=1e-6)
    expected = fs.analysis.homogeneous_kkt(library, kink_rtol=1e-6)
    assert got.num_kinks == expected.num_kinks >= 1
    assert got.residual == pytest.approx(expected.residual, rel=1e-6, abs=1e-9)


def _field_at_start(problem):
    from flowsim._flow import make_field

    theta, field = make_field(problem, log_time=False)
    return np.asarray(eqx.filter_jit(lambda p, th: make_field(p, log_time=False)[1](0.0, th))(problem, theta))


def _as_kinked(net, X, y, spec):
    """`net` (a library ReLU class) on the path of any model: its kinks found by tracing."""
    mask = fs.Problem(net, X, y, "logistic", trainable=spec).trainable_mask
    sites = fs.find_kinks(net, jnp.asarray(X[0]), mask).sites
    kinked = Kinked(net, sites, (), mask)
    kinked_spec = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(kinked), list(mask))
    return fs.Problem(kinked, X, y, "logistic", trainable=kinked_spec)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_library_two_layer_net_on_the_traced_path_gives_the_same_field(leak):
    """fs.networks.TwoLayer's hand-written kink description and the traced one (sites of its
    jnp.maximum(z, γz)) give the same min-norm field, at a state with three pairs on kinks."""
    rng = np.random.default_rng(11)
    n, d, m = 6, 8, 3
    X = rng.standard_normal((n, d))
    y = np.array([1.0, -1, 1, -1, 1, 1])
    W = rng.standard_normal((m, d))
    for j, samples in ((0, [0, 1]), (1, [2])):
        Q, _ = np.linalg.qr(X[samples].T)
        W[j] -= Q @ (Q.T @ W[j])
    net = fs.networks.TwoLayer(W, np.array([1.0, -1.0, 1.0]) / np.sqrt(m), leak)
    assert [(s.label, s.shape) for s in fs.find_kinks(net, jnp.asarray(X[0])).sites] == [("maximum", (m,))]
    library = fs.Problem(net, X, y, "logistic", trainable=net.first_layer_filter())
    traced = _as_kinked(net, X, y, net.first_layer_filter())
    assert int(fs.analysis.kink_statistics(library)["pairs_at_kink"]) == 3
    expected = _field_at_start(library)
    np.testing.assert_allclose(_field_at_start(traced), expected, rtol=0, atol=1e-12 * np.linalg.norm(expected))


def test_library_mlp_on_the_traced_path_gives_the_same_field():
    rng = np.random.default_rng(12)
    X, y = _data(13, 6, 4)
    layers = [rng.standard_normal((5, 4)), rng.standard_normal((3, 5)), rng.standard_normal(3)]
    layers[0][0] -= (layers[0][0] @ X[0]) / (X[0] @ X[0]) * X[0]  # a first-layer pair on its kink
    net = fs.networks.MLP(layers)
    library = fs.Problem(net, X, y, "logistic")
    traced = _as_kinked(net, X, y, None)
    assert int(fs.analysis.kink_statistics(library)["pairs_at_kink"]) >= 1
    expected = _field_at_start(library)
    np.testing.assert_allclose(_field_at_start(traced), expected, rtol=0, atol=1e-12 * np.linalg.norm(expected))
