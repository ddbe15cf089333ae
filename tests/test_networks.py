"""Linear tensor networks (fs.networks) against independent computations.

Oracles: explicit tensors M(x) built here with numpy loops and contracted with numpy.einsum;
circular convolutions with numpy.fft; the DFT matrix from numpy.fft; gradient flows
integrated with scipy's solve_ivp (independent of flowsim's engine).
"""

import functools
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

import flowsim as fs

nets = fs.networks


# ---------------------------------------------------------------- independent oracles


def diagonal_tensor(d, depth):
    T = np.zeros((d,) * (depth + 1))
    for j in range(d):
        T[(j,) * (depth + 1)] = 1.0
    return T


def convolutional_tensor(d, depth, k):
    """T[j, i_1..i_L] = 1 iff i_L = j + i_1 + … + i_{L−1} (mod d); filters have k taps."""
    T = np.zeros((d,) + (k,) * (depth - 1) + (d,))
    for j in range(d):
        for taps in itertools.product(range(k), repeat=depth - 1):
            T[(j, *taps, (j + sum(taps)) % d)] = 1.0
    return T


def fully_connected_tensor(dims):
    """dims = [d, h_1, …, h_{L−1}]; layers are row-major vec(W_l) and the last vector."""
    d = dims[0]
    depth = len(dims)
    shape = [d] + [dims[l] * dims[l + 1] for l in range(depth - 1)] + [dims[-1]]
    T = np.zeros(shape)
    for a in itertools.product(*[range(h) for h in dims]):
        index = [a[0]] + [a[l] * dims[l + 1] + a[l + 1] for l in range(depth - 1)] + [a[-1]]
        T[tuple(index)] = 1.0
    return T


def contract(T, x, layers):
    """M(x)(v_1, …, v_L) with numpy.einsum."""
    letters = "abcdefghij"[: len(layers)]
    spec = "z" + letters + ",z," + ",".join(letters) + "->"
    return np.einsum(spec, T, x, *layers)


def tensor_beta(T, layers):
    letters = "abcdefghij"[: len(layers)]
    return np.einsum("z" + letters + "," + ",".join(letters) + "->z", T, *layers)


def tensor_loss_gradient(T, X, y, layers):
    """∇ of L = (1/2n) Σ (f(x_i) − y_i)² over each layer, from the explicit tensor."""
    n = X.shape[0]
    r = (np.array([contract(T, x, layers) for x in X]) - y) / n
    grads = []
    for l in range(len(layers)):
        letters = "abcdefghij"[: len(layers)]
        others = [v for k, v in enumerate(layers) if k != l]
        spec = "z" + letters + ",z," + ",".join(c for k, c in enumerate(letters) if k != l) + "->" + letters[l]
        grads.append(sum(r[i] * np.einsum(spec, T, X[i], *others) for i in range(n)))
    return grads


def squared_loss(model, X, y):
    return 0.5 * jnp.mean((jax.vmap(model)(X) - y) ** 2)


def fft_convolutional_output(x, filters, last):
    """⟨x ∗ v_1 ∗ … ∗ v_{L−1}, v_L⟩ with the filters zero-padded to length d, via numpy.fft."""
    d = x.shape[0]
    spectrum = np.fft.fft(x)
    for v in filters:
        spectrum = spectrum * np.fft.fft(np.concatenate([v, np.zeros(d - v.shape[0])]))
    return float(np.real(np.fft.ifft(spectrum)) @ last)


def gradient_flow_scipy(model, X, y, t1, t_eval=None):
    """Integrate θ' = −∇L(θ) with scipy (DOP853, tight tolerances); returns models at t_eval."""
    theta0, unravel = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)

    @jax.jit
    def rhs(theta):
        params = unravel(theta)
        return -ravel_pytree(jax.grad(lambda p: squared_loss(eqx.combine(p, static), X, y))(params))[0]

    solution = solve_ivp(
        lambda t, th: np.asarray(rhs(jnp.asarray(th))),
        (0.0, t1),
        np.asarray(theta0),
        method="DOP853",
        rtol=1e-11,
        atol=1e-13,
        t_eval=t_eval,
    )
    assert solution.success, solution.message
    return [eqx.combine(unravel(jnp.asarray(theta)), static) for theta in solution.y.T]


def random_layers(rng, shapes, scale=0.8):
    return [scale * rng.standard_normal(shape) for shape in shapes]


# ---------------------------------------------------------------- f and β against explicit tensors


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_diagonal_matches_explicit_tensor(depth):
    rng = np.random.default_rng(1)
    d = 4
    layers = random_layers(rng, [(d,)] * depth)
    net = nets.Diagonal(layers)
    T = diagonal_tensor(d, depth)
    x = rng.standard_normal(d)
    assert net.depth == depth and net.input_dim == d
    np.testing.assert_allclose(net(jnp.asarray(x)), contract(T, x, layers), rtol=1e-13)
    np.testing.assert_allclose(net.beta(), tensor_beta(T, layers), rtol=1e-13)
    np.testing.assert_allclose(net.beta(), np.prod(layers, axis=0), rtol=1e-13)


@pytest.mark.parametrize("dims", [[4], [4, 3], [3, 2, 4]])
def test_fully_connected_matches_matrix_product_and_tensor(dims):
    rng = np.random.default_rng(2)
    depth = len(dims)
    shapes = [(dims[l], dims[l + 1]) for l in range(depth - 1)] + [(dims[-1],)]
    layers = random_layers(rng, shapes)
    net = nets.FullyConnected(layers)
    x = rng.standard_normal(dims[0])
    beta = functools.reduce(np.matmul, layers)
    np.testing.assert_allclose(net.beta(), beta, rtol=1e-13)
    np.testing.assert_allclose(net(jnp.asarray(x)), x @ beta, rtol=1e-13)
    T = fully_connected_tensor(dims)
    vec = [np.ravel(W) for W in layers]
    np.testing.assert_allclose(net(jnp.asarray(x)), contract(T, x, vec), rtol=1e-13)
    assert net.widths == tuple(dims[1:])


@pytest.mark.parametrize("d, depth, k", [(5, 2, 5), (4, 3, 4), (6, 3, 2), (5, 2, 1)])
def test_convolutional_matches_fft_and_explicit_tensor(d, depth, k):
    rng = np.random.default_rng(3)
    layers = random_layers(rng, [(k,)] * (depth - 1) + [(d,)])
    net = nets.Convolutional(layers, kernel_size=k)
    assert net.kernel_size == k and net.full_length == (k == d)
    x = rng.standard_normal(d)
    expected = fft_convolutional_output(x, layers[:-1], layers[-1])
    np.testing.assert_allclose(net(jnp.asarray(x)), expected, rtol=1e-12)
    T = convolutional_tensor(d, depth, k)
    np.testing.assert_allclose(net(jnp.asarray(x)), contract(T, x, layers), rtol=1e-12)
    np.testing.assert_allclose(net.beta(), tensor_beta(T, layers), rtol=1e-12, atol=1e-14)
    # f is linear with coefficients β: check on the unit vectors (β_j = f(e_j)).
    np.testing.assert_allclose(
        net.beta(), [fft_convolutional_output(e, layers[:-1], layers[-1]) for e in np.eye(d)], atol=1e-12
    )


def test_convolutional_kernel_size_inferred_from_filters():
    net = nets.Convolutional([np.ones(2), np.ones(2), np.arange(5.0)])
    assert net.kernel_size == 2 and not net.full_length


def test_linear_is_inner_product():
    rng = np.random.default_rng(4)
    w = rng.standard_normal(3)
    net = nets.Linear(w)
    x = rng.standard_normal(3)
    np.testing.assert_allclose(net(jnp.asarray(x)), w @ x, rtol=1e-14)
    np.testing.assert_array_equal(net.beta(), w)
    np.testing.assert_array_equal(net.w, w)
    assert net.depth == 1


# ---------------------------------------------------------------- TensorNetwork covers the families


def _special_cases():
    """(name, family network, independent tensor, vectorised layers, gradient vectoriser)."""
    rng = np.random.default_rng(5)

    def as_list(g):
        return list(g.layers)

    diag_layers = random_layers(rng, [(3,)] * 3)
    yield "diagonal", nets.Diagonal(diag_layers), diagonal_tensor(3, 3), diag_layers, as_list
    fc_layers = random_layers(rng, [(3, 2), (2, 2), (2,)])
    fc_vec = [np.ravel(W) for W in fc_layers]

    def fc_grad(g):
        return [jnp.ravel(W) for W in g.layers]

    yield "fully_connected", nets.FullyConnected(fc_layers), fully_connected_tensor([3, 2, 2]), fc_vec, fc_grad
    conv_layers = random_layers(rng, [(3,), (3,), (3,)])
    yield "convolutional", nets.Convolutional(conv_layers), convolutional_tensor(3, 3, 3), conv_layers, as_list
    short_layers = random_layers(rng, [(2,), (4,)])
    yield "convolutional_k2", nets.Convolutional(short_layers), convolutional_tensor(4, 2, 2), short_layers, as_list


SPECIAL_CASES = list(_special_cases())


@pytest.mark.parametrize("name, net, T, vec_layers, vec_grad", SPECIAL_CASES, ids=[c[0] for c in SPECIAL_CASES])
def test_tensor_network_reproduces_family(name, net, T, vec_layers, vec_grad):
    rng = np.random.default_rng(6)
    general = nets.TensorNetwork(T, vec_layers)
    d = net.input_dim
    n = 3
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    for x in X:
        np.testing.assert_allclose(general(jnp.asarray(x)), net(jnp.asarray(x)), rtol=1e-12)
        np.testing.assert_allclose(general(jnp.asarray(x)), contract(T, x, vec_layers), rtol=1e-12)
    np.testing.assert_allclose(general.beta(), net.beta(), rtol=1e-12, atol=1e-14)
    # Equal loss gradients at this θ (after vectorising matrix layers), and both equal to the
    # gradient computed from the explicit tensor with numpy.
    oracle = tensor_loss_gradient(T, X, y, vec_layers)
    g_family = vec_grad(jax.grad(squared_loss)(net, X, y))
    g_general = list(jax.grad(squared_loss)(general, X, y).layers)
    for a, b, c in zip(g_family, g_general, oracle, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(b, c, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["diagonal", "fully_connected", "convolutional"])
def test_tensor_network_same_gradient_flow_scipy(index):
    rng = np.random.default_rng(7)
    _, net, T, vec_layers, _ = SPECIAL_CASES[index]
    general = nets.TensorNetwork(T, vec_layers)
    X = rng.standard_normal((2, net.input_dim))
    y = rng.standard_normal(2)
    t_eval = np.array([0.5, 2.0])
    path_family = gradient_flow_scipy(net, X, y, 2.0, t_eval)
    path_general = gradient_flow_scipy(general, X, y, 2.0, t_eval)
    for a, b in zip(path_family, path_general, strict=True):
        np.testing.assert_allclose(a.beta(), b.beta(), rtol=1e-8, atol=1e-10)
    # The flow moved: the comparison is not between two copies of the initial point.
    assert float(jnp.linalg.norm(path_family[-1].beta() - net.beta())) > 1e-2


def test_tensor_network_trajectory_under_flowsim_simulate():
    """fs.simulate on the general TensorNetwork follows the scipy flow of the Convolutional net."""
    rng = np.random.default_rng(8)
    _, net, T, vec_layers, _ = SPECIAL_CASES[2]  # convolutional, depth 3
    general = nets.TensorNetwork(T, vec_layers)
    X = rng.standard_normal((2, net.input_dim))
    y = rng.standard_normal(2)
    traj = fs.simulate(fs.Problem(general, X, y, loss="squared"), t1=1.0, n_save=3, rtol=1e-10, atol=1e-12)
    assert traj.ok
    reference = gradient_flow_scipy(net, X, y, 1.0, np.array([1.0]))[0]
    np.testing.assert_allclose(traj.final.beta(), reference.beta(), rtol=1e-7, atol=1e-9)
    assert float(jnp.linalg.norm(reference.beta() - net.beta())) > 1e-2


def test_tensor_is_static_not_trained():
    T = diagonal_tensor(3, 2)
    general = nets.TensorNetwork(T, [np.ones(3), np.ones(3)])
    leaves = jax.tree_util.tree_leaves(eqx.filter(general, eqx.is_inexact_array))
    assert [leaf.shape for leaf in leaves] == [(3,), (3,)]
    np.testing.assert_array_equal(general.tensor, T)
    # Two networks on equal tensors share a tree structure (stackable, one compilation).
    other = nets.TensorNetwork(T.copy(), [np.zeros(3), np.zeros(3)])
    assert jax.tree_util.tree_structure(general) == jax.tree_util.tree_structure(other)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), general, other)
    x = jnp.arange(3.0)
    np.testing.assert_allclose(eqx.filter_vmap(lambda m: m(x))(stacked), [general(x), other(x)])


# ---------------------------------------------------------------- ODN view


def unitary_dft_numpy(d):
    return np.fft.fft(np.eye(d), axis=0, norm="ortho")


@pytest.mark.parametrize("depth", [2, 3])
def test_convolutional_odn_view(depth):
    rng = np.random.default_rng(9)
    d = 5
    layers = random_layers(rng, [(d,)] * depth)
    net = nets.Convolutional(layers)
    S = unitary_dft_numpy(d) * d ** ((depth - 1) / 2)
    np.testing.assert_allclose(net.transform, S, atol=1e-13)
    rho = np.asarray(net.rho())
    a = np.asarray(net.odn_coordinates())
    assert a.shape == (depth, d) and np.iscomplexobj(a)
    np.testing.assert_allclose(rho, np.prod(a, axis=0), rtol=1e-13)
    for x in rng.standard_normal((3, d)):
        value = np.vdot(S @ x, rho)  # Σ_j conj((Sx)_j) ρ_j
        np.testing.assert_allclose(value.real, net(jnp.asarray(x)), rtol=1e-12)
        assert abs(value.imag) < 1e-12
    beta = S.conj().T @ rho
    np.testing.assert_allclose(beta.real, net.beta(), atol=1e-12)
    assert np.max(np.abs(beta.imag)) < 1e-12
    # ρ is the unitary DFT of β up to the scale, and the coordinates are Hermitian-symmetric.
    scaled_dft_of_beta = np.fft.fft(np.asarray(net.beta()), norm="ortho") / d ** ((depth - 1) / 2)
    np.testing.assert_allclose(rho, scaled_dft_of_beta, atol=1e-12)
    np.testing.assert_allclose(a[:, (-np.arange(d)) % d], np.conj(a), atol=1e-13)
    # Moduli are those of the layers' DFTs (U_l unitary).
    np.testing.assert_allclose(np.abs(a), np.abs(np.fft.fft(np.stack(layers), axis=1, norm="ortho")), atol=1e-13)


@pytest.mark.parametrize("family", ["diagonal", "linear"])
def test_real_odn_views(family):
    rng = np.random.default_rng(10)
    d = 4
    if family == "diagonal":
        layers = random_layers(rng, [(d,)] * 3)
        net = nets.Diagonal(layers)
    else:
        layers = random_layers(rng, [(d,)])
        net = nets.Linear(layers[0])
    np.testing.assert_array_equal(net.transform, np.eye(d))
    np.testing.assert_allclose(net.odn_coordinates(), np.stack(layers), rtol=0)
    np.testing.assert_allclose(net.rho(), np.prod(layers, axis=0), rtol=1e-14)
    x = rng.standard_normal(d)
    np.testing.assert_allclose(np.eye(d) @ x @ np.asarray(net.rho()), net(jnp.asarray(x)), rtol=1e-13)


@pytest.mark.parametrize("family", ["diagonal", "convolutional"])
def test_odn_per_coordinate_velocity(family):
    """da_{lj}/dt = −conj(Π_{k≠l} a_{kj}) g_j with g = S Xᵀ r, r_i = ∂L/∂f(x_i) (class docstring)."""
    rng = np.random.default_rng(11)
    d, depth, n = 4, 3, 3
    layers = random_layers(rng, [(d,)] * depth)
    net = nets.Diagonal(layers) if family == "diagonal" else nets.Convolutional(layers)
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    velocity = [-np.asarray(g) for g in jax.grad(squared_loss)(net, X, y).layers]
    if family == "diagonal":
        a_dot = np.stack(velocity)
        S = np.eye(d)
    else:
        F = unitary_dft_numpy(d)
        a_dot = np.stack([np.conj(F @ v) for v in velocity[:-1]] + [F @ velocity[-1]])
        S = F * d ** ((depth - 1) / 2)
    r = (np.array([float(net(jnp.asarray(x))) for x in X]) - y) / n
    g = S @ X.T @ r
    a = np.asarray(net.odn_coordinates())
    for l in range(depth):
        others = np.prod(np.delete(a, l, axis=0), axis=0)
        np.testing.assert_allclose(a_dot[l], -np.conj(others) * g, atol=1e-12)


@pytest.mark.parametrize("family", ["diagonal", "convolutional"])
def test_odn_conservation_along_scipy_flow(family):
    """|a_{lj}|² − |a_{kj}|² is conserved along the gradient flow (integrated by scipy)."""
    rng = np.random.default_rng(12)
    d, depth, n = 4, 3 if family == "diagonal" else 2, 3
    key = jr.key(7)
    if family == "diagonal":
        net = nets.Diagonal.init(d, depth, scale=0.9, shape="random", key=key)
    else:
        net = nets.Convolutional.init(d, depth, scale=0.9, shape="random", key=key)
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    start, end = gradient_flow_scipy(net, X, y, 5.0, np.array([0.0, 5.0]))
    a0 = np.abs(np.asarray(start.odn_coordinates())) ** 2
    a1 = np.abs(np.asarray(end.odn_coordinates())) ** 2
    np.testing.assert_allclose(a1 - a1[0], a0 - a0[0], atol=1e-8)
    assert np.max(np.abs(a1 - a0)) > 1e-2  # the coordinates themselves moved
    assert float(squared_loss(end, X, y)) < 0.8 * float(squared_loss(start, X, y))  # and trained


def test_short_convolution_is_not_odn():
    """k < d builds a ShortKernelConvolutional, outside the ODN hierarchy: no rho/transform, and its margin
    geometry carries no built-in exponent. k = d builds the ODN FullLengthConvolutional. Both are Convolutional."""
    short = nets.Convolutional.init(4, 2, kernel_size=2)
    full = nets.Convolutional.init(4, 2)
    assert type(short) is nets.ShortKernelConvolutional and type(full) is nets.FullLengthConvolutional
    assert isinstance(short, nets.Convolutional) and isinstance(full, nets.Convolutional)
    assert not isinstance(short, nets.AbstractOrthogonallyDecomposableNetwork)
    assert isinstance(full, nets.AbstractOrthogonallyDecomposableNetwork)
    assert not hasattr(short, "rho") and not hasattr(short, "transform")
    geometry = short.margin_geometry()
    assert geometry.q is None and geometry.layer_coordinates is None
    np.testing.assert_array_equal(geometry.rho, short.beta())
    with pytest.raises(ValueError, match="shorter than d"):
        nets.ShortKernelConvolutional([np.ones(4), np.ones(4)])
    with pytest.raises(ValueError, match="filters of length d=4"):
        nets.FullLengthConvolutional([np.ones(2), np.ones(4)])


@pytest.mark.parametrize("family", ["diagonal", "linear", "convolutional", "fully_connected", "tensor"])
def test_margin_geometry(family):
    """Each network states its max-margin problem: q = 2/L, S and ρ for ODNs (f(x) = Re⟨Sx, ρ⟩, checked on
    random inputs), q = 2 and ρ = β for fully connected nets (Ji & Telgarsky 2020), q = None for a general
    tensor."""
    rng = np.random.default_rng(17)
    d = 4
    if family == "diagonal":
        net, q = nets.Diagonal(random_layers(rng, [(d,)] * 3)), 2.0 / 3.0
    elif family == "linear":
        net, q = nets.Linear(rng.standard_normal(d)), 2.0
    elif family == "convolutional":
        net, q = nets.Convolutional(random_layers(rng, [(d,)] * 2)), 1.0
    elif family == "fully_connected":
        net, q = nets.FullyConnected(random_layers(rng, [(d, 3), (3,)])), 2.0
    else:
        net, q = nets.TensorNetwork(diagonal_tensor(d, 2), random_layers(rng, [(d,)] * 2)), None
    geometry = net.margin_geometry()
    assert geometry.q == q
    S, rho = np.asarray(geometry.transform), np.asarray(geometry.rho)
    for x in rng.standard_normal((3, d)):
        np.testing.assert_allclose(np.real(np.vdot(S @ x, rho)), net(jnp.asarray(x)), rtol=1e-12)
    if isinstance(net, nets.AbstractOrthogonallyDecomposableNetwork):
        np.testing.assert_allclose(np.prod(np.asarray(geometry.layer_coordinates), axis=0), rho, rtol=1e-13)
    else:
        assert geometry.layer_coordinates is None
        np.testing.assert_allclose(rho, net.beta(), rtol=1e-14)


# ---------------------------------------------------------------- initialisers


def test_diagonal_initialisers():
    d, depth, alpha = 4, 3, 0.3
    u = np.array([1.0, -2.0, 0.5, 3.0])
    balanced = nets.Diagonal.init(d, depth, scale=alpha, direction=u)
    for v in balanced.layers:
        np.testing.assert_allclose(v, alpha * u, rtol=1e-15)
    np.testing.assert_allclose(balanced.beta(), alpha**depth * u**depth, rtol=1e-14)
    ones = nets.Diagonal.init(d, depth, scale=alpha)
    np.testing.assert_allclose(ones.beta(), np.full(d, alpha**depth), rtol=1e-14)
    last_zero = nets.Diagonal.init(d, depth, scale=alpha, shape="last_zero")
    np.testing.assert_allclose(np.stack(last_zero.layers[:-1]), alpha * np.ones((depth - 1, d)))
    np.testing.assert_array_equal(last_zero.layers[-1], np.zeros(d))
    key = jr.key(3)
    r1 = nets.Diagonal.init(d, depth, scale=1.0, shape="random", key=key)
    r2 = nets.Diagonal.init(d, depth, scale=2.5, shape="random", key=key)
    for a, b in zip(r1.layers, r2.layers, strict=True):
        np.testing.assert_allclose(b, 2.5 * np.asarray(a), rtol=1e-15)
    assert not np.allclose(r1.layers[0], r1.layers[1])  # independent layers
    wide = nets.Diagonal.init(20_000, 1, scale=2.0, shape="random", key=key).layers[0]
    assert abs(float(jnp.std(wide)) - 2.0) < 0.05 and abs(float(jnp.mean(wide))) < 0.05


def test_linear_initialisers():
    np.testing.assert_array_equal(nets.Linear.init(3, scale=2.0).w, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(nets.Linear.init(3, shape="last_zero").w, np.zeros(3))
    w = nets.Linear.init(3, scale=0.5, shape="random", key=jr.key(0)).w
    np.testing.assert_allclose(w, 0.5 * np.asarray(jr.normal(jr.key(0), (3,), dtype=jnp.float64)))


def test_fully_connected_initialisers():
    d, alpha = 3, 0.7
    u = np.array([3.0, 0.0, 4.0])
    net = nets.FullyConnected.init(d, 4, width=[2, 3, 2], scale=alpha, direction=u)
    assert [tuple(W.shape) for W in net.layers] == [(3, 2), (2, 3), (3, 2), (2,)]
    np.testing.assert_allclose(net.beta(), alpha**4 * u / 5.0, rtol=1e-14)
    mats = [np.asarray(W) for W in net.layers[:-1]] + [np.asarray(net.layers[-1])[:, None]]
    for l in range(len(mats) - 1):  # balanced: W_lᵀ W_l = W_{l+1} W_{l+1}ᵀ
        np.testing.assert_allclose(mats[l].T @ mats[l], mats[l + 1] @ mats[l + 1].T, atol=1e-15)
    zero_last = nets.FullyConnected.init(d, 3, scale=alpha, shape="last_zero")
    np.testing.assert_array_equal(zero_last.layers[-1], np.zeros(d))
    first = alpha * np.outer(np.ones(d) / np.sqrt(d), np.eye(d)[0])  # α û e_1ᵀ with u = 1
    np.testing.assert_allclose(zero_last.layers[0], first, rtol=1e-15)
    rand = nets.FullyConnected.init(d, 3, width=4, scale=2.0, shape="random", key=jr.key(1))
    assert [tuple(W.shape) for W in rand.layers] == [(3, 4), (4, 4), (4,)]
    rand1 = nets.FullyConnected.init(d, 3, width=4, scale=1.0, shape="random", key=jr.key(1))
    for a, b in zip(rand.layers, rand1.layers, strict=True):
        np.testing.assert_allclose(a, 2.0 * np.asarray(b), rtol=1e-15)
    # depth 1 is the linear model
    np.testing.assert_allclose(nets.FullyConnected.init(d, 1, scale=alpha, direction=u).beta(), alpha * u / 5.0)


def test_fully_connected_balancedness_conserved_along_scipy_flow():
    """W_lᵀW_l − W_{l+1}W_{l+1}ᵀ is conserved by the gradient flow over the layers (Arora et al. 2018)."""
    rng = np.random.default_rng(15)
    net = nets.FullyConnected.init(3, 3, width=[2, 3], scale=0.8, shape="random", key=jr.key(4))
    X = rng.standard_normal((2, 3))
    y = rng.standard_normal(2)
    start, end = gradient_flow_scipy(net, X, y, 3.0, np.array([0.0, 3.0]))

    def imbalance(model):
        mats = [np.asarray(W) for W in model.layers[:-1]] + [np.asarray(model.layers[-1])[:, None]]
        return [mats[l].T @ mats[l] - mats[l + 1] @ mats[l + 1].T for l in range(len(mats) - 1)]

    for a, b in zip(imbalance(start), imbalance(end), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-8)
    assert float(jnp.linalg.norm(end.layers[0] - start.layers[0])) > 1e-2
    assert float(squared_loss(end, X, y)) < 0.5 * float(squared_loss(start, X, y))


def test_fully_connected_rank_one_set_is_invariant():
    """On W_1 = w e_1ᵀ, W_l = s_l e_1e_1ᵀ, w_L = s_L e_1 the loss gradient stays in the same set."""
    rng = np.random.default_rng(16)
    w, s2, s3 = rng.standard_normal(3), rng.standard_normal(), rng.standard_normal()
    e1 = np.eye(2)[0]
    net = nets.FullyConnected([np.outer(w, e1), s2 * np.outer(e1, e1), s3 * e1])
    X = rng.standard_normal((4, 3))
    y = rng.standard_normal(4)
    g1, g2, g3 = (np.asarray(g) for g in jax.grad(squared_loss)(net, X, y).layers)
    np.testing.assert_array_equal(g1[:, 1:], 0.0)
    np.testing.assert_array_equal(np.delete(g2.ravel(), 0), 0.0)
    np.testing.assert_array_equal(g3[1:], 0.0)
    assert np.linalg.norm(g1[:, 0]) > 1e-3


def test_convolutional_initialisers():
    rng = np.random.default_rng(13)
    d, depth, alpha = 6, 3, 0.8
    net = nets.Convolutional.init(d, depth, scale=alpha)
    a = np.asarray(net.odn_coordinates())
    np.testing.assert_allclose(a, np.full((depth, d), alpha / np.sqrt(d)), atol=1e-15)  # flat spectrum
    np.testing.assert_allclose(net.beta(), alpha**depth * np.eye(d)[0], atol=1e-15)  # identity filters
    u = rng.standard_normal(d)
    moduli = np.abs(np.asarray(nets.Convolutional.init(d, depth, scale=alpha, direction=u).odn_coordinates()))
    np.testing.assert_allclose(moduli, np.broadcast_to(moduli[0], moduli.shape), rtol=1e-13)  # balanced
    last_zero = nets.Convolutional.init(d, depth, scale=alpha, shape="last_zero", kernel_size=2)
    assert last_zero.kernel_size == 2
    np.testing.assert_array_equal(last_zero.layers[-1], np.zeros(d))
    np.testing.assert_allclose(np.stack(last_zero.layers[:-1]), alpha * np.array([[1.0, 0.0]] * (depth - 1)))
    short = nets.Convolutional.init(d, 2, scale=alpha, direction=[1.0, 2.0], kernel_size=2)
    np.testing.assert_allclose(short.layers[-1], alpha * np.array([1.0, 2.0, 0, 0, 0, 0]))
    rand = nets.Convolutional.init(d, depth, scale=1.5, shape="random", key=jr.key(2), kernel_size=3)
    assert [tuple(v.shape) for v in rand.layers] == [(3,), (3,), (d,)]


def test_random_init_under_vmap_and_problem():
    rng = np.random.default_rng(14)
    keys = jr.split(jr.key(11), 4)
    batch = eqx.filter_vmap(lambda k: nets.Diagonal.init(3, 2, scale=0.5, shape="random", key=k))(keys)
    assert batch.layers[0].shape == (4, 3)
    single = nets.Diagonal.init(3, 2, scale=0.5, shape="random", key=keys[2])
    np.testing.assert_allclose(batch.layers[1][2], single.layers[1], rtol=1e-15)
    X = jnp.asarray(rng.standard_normal((5, 3)))
    betas = eqx.filter_vmap(lambda m: m.beta())(batch)
    outputs = eqx.filter_vmap(lambda m: jax.vmap(m)(X))(batch)
    np.testing.assert_allclose(outputs, betas @ X.T, rtol=1e-12)
    problem = fs.Problem(nets.Convolutional.init(3, 2, scale=0.5), X, jnp.sign(X[:, 0]), loss="logistic")
    assert np.isfinite(float(problem.loss_value()))


# ---------------------------------------------------------------- bad inputs, refused in words


BAD_INPUTS = [
    ("diag-empty", lambda: nets.Diagonal([]), ValueError, r"Diagonal depth \(number of layers\) must be an integer ≥ 1"),
    ("diag-array", lambda: nets.Diagonal(np.ones((2, 3))), TypeError, r"list of layers, got a single array"),
    ("diag-not-seq", lambda: nets.Diagonal(3.0), TypeError, r"list \(or tuple\) of layers, got float"),
    ("diag-mismatch", lambda: nets.Diagonal([np.ones(3), np.ones(4)]), ValueError, r"layer 2 has shape \(4,\)"),
    ("diag-ndim", lambda: nets.Diagonal([np.ones((3, 1))]), ValueError, r"layer 1 must be a vector, got shape"),
    ("diag-nan", lambda: nets.Diagonal([np.array([1.0, np.nan])]), ValueError, r"1 non-finite value"),
    ("diag-inf", lambda: nets.Diagonal([np.ones(2), np.array([np.inf, 1.0])]), ValueError, r"layer 2 .*non-finite"),
    ("diag-complex", lambda: nets.Diagonal([np.array([1 + 1j])]), TypeError, r"real numeric array.*complex"),
    ("diag-str", lambda: nets.Diagonal(["abc"]), TypeError, r"real numeric array"),
    ("diag-empty-layer", lambda: nets.Diagonal([np.ones(0)]), ValueError, r"is empty"),
    ("diag-depth0", lambda: nets.Diagonal.init(3, 0), ValueError, r"depth \(number of layers\) must be an integer ≥ 1, got 0"),
    ("diag-depth-float", lambda: nets.Diagonal.init(3, 2.5), TypeError, r"depth .*must be an integer ≥ 1, got 2.5"),
    ("diag-depth-bool", lambda: nets.Diagonal.init(3, True), TypeError, r"depth .*must be an integer"),
    ("diag-d0", lambda: nets.Diagonal.init(0, 2), ValueError, r"input dimension d must be an integer ≥ 1, got 0"),
    ("diag-shape", lambda: nets.Diagonal.init(3, 2, shape="orthogonal"), ValueError,
     r"unknown Diagonal init shape 'orthogonal'; valid: \['balanced', 'last_zero', 'random'\]"),
    ("diag-nokey", lambda: nets.Diagonal.init(3, 2, shape="random"), ValueError, r"'random' needs a PRNG key"),
    ("diag-random-direction", lambda: nets.Diagonal.init(3, 2, shape="random", key=jr.key(0), direction=np.ones(3)),
     ValueError, r"direction is used by the 'balanced' and 'last_zero' shapes only"),
    ("diag-direction", lambda: nets.Diagonal.init(3, 2, direction=np.ones(4)), ValueError,
     r"direction must have shape \(3,\), got shape \(4,\)"),
    ("diag-scale-inf", lambda: nets.Diagonal.init(3, 2, scale=np.inf), ValueError, r"scale must be a finite"),
    ("diag-scale-bool", lambda: nets.Diagonal.init(3, 2, scale=True), TypeError, r"scale must be a real number"),
    ("diag-scale-str", lambda: nets.Diagonal.init(3, 2, scale="big"), TypeError, r"scale must be a real number"),
    ("diag-input", lambda: nets.Diagonal.init(3, 2)(jnp.ones(5)), ValueError,
     r"ONE input of shape \(3,\).*got an input of shape \(5,\)"),
    ("linear-ndim", lambda: nets.Linear(np.ones((2, 2))), ValueError, r"Linear weight w must be a vector"),
    ("linear-nokey", lambda: nets.Linear.init(3, shape="random"), ValueError, r"needs a PRNG key"),
    ("fc-empty", lambda: nets.FullyConnected([]), ValueError, r"FullyConnected depth \(number of layers\) must"),
    ("fc-chain", lambda: nets.FullyConnected([np.ones((3, 2)), np.ones(3)]), ValueError,
     r"layer 2 has shape \(3,\).*needs 2 rows"),
    ("fc-chain-mid", lambda: nets.FullyConnected([np.ones((3, 2)), np.ones((3, 2)), np.ones(2)]), ValueError,
     r"layer 2 has shape \(3, 2\)"),
    ("fc-vector-first", lambda: nets.FullyConnected([np.ones(3), np.ones(3)]), ValueError,
     r"layer 1 must be a matrix"),
    ("fc-matrix-last", lambda: nets.FullyConnected([np.ones((3, 2)), np.ones((2, 1))]), ValueError,
     r"last layer 2 \(w_L\) must be a vector"),
    ("fc-widths", lambda: nets.FullyConnected.init(3, 3, width=[2]), ValueError, r"needs 2 hidden widths, got 1"),
    ("fc-width0", lambda: nets.FullyConnected.init(3, 2, width=0), ValueError, r"width must be an integer ≥ 1, got 0"),
    ("fc-zero-direction", lambda: nets.FullyConnected.init(3, 2, direction=np.zeros(3)), ValueError, r"non-zero"),
    ("fc-shape", lambda: nets.FullyConnected.init(3, 2, shape="xavier"), ValueError, r"unknown FullyConnected init"),
    ("conv-depth1", lambda: nets.Convolutional([np.ones(4)]), ValueError, r"Convolutional depth .* ≥ 2, got 1"),
    ("conv-init-depth1", lambda: nets.Convolutional.init(4, 1), ValueError, r"Convolutional depth .* ≥ 2, got 1"),
    ("conv-long-filter", lambda: nets.Convolutional([np.ones(5), np.ones(4)]), ValueError,
     r"filter 1 has length 5.*between 1 and d=4"),
    ("conv-filter-mismatch", lambda: nets.Convolutional([np.ones(2), np.ones(3), np.ones(4)]), ValueError,
     r"filter 2 has shape \(3,\) but kernel_size=2"),
    ("conv-kernel-vs-filter", lambda: nets.Convolutional([np.ones(3), np.ones(4)], kernel_size=2), ValueError,
     r"filter 1 has shape \(3,\) but kernel_size=2 needs shape \(2,\)"),
    ("conv-kernel-big", lambda: nets.Convolutional([np.ones(3), np.ones(4)], kernel_size=5), ValueError,
     r"kernel_size must be between 1 and d=4, got kernel_size=5"),
    ("conv-kernel-zero", lambda: nets.Convolutional.init(4, 2, kernel_size=0), ValueError,
     r"kernel_size must be an integer ≥ 1, got 0"),
    ("conv-kernel-float", lambda: nets.Convolutional.init(4, 2, kernel_size=2.0), TypeError,
     r"kernel_size must be an integer"),
    ("conv-direction", lambda: nets.Convolutional.init(4, 2, kernel_size=2, direction=np.ones(4)), ValueError,
     r"direction must have shape \(2,\)"),
    ("conv-nokey", lambda: nets.Convolutional.init(4, 2, shape="random"), ValueError, r"needs a PRNG key"),
    ("tn-ndim", lambda: nets.TensorNetwork(np.ones(3), [np.ones(3)]), ValueError,
     r"tensor must have shape \(d, k_1, …, k_L\)"),
    ("tn-count", lambda: nets.TensorNetwork(np.ones((3, 2)), [np.ones(2), np.ones(2)]), ValueError,
     r"1 layer dimensions, so it needs 1 layers; got 2"),
    ("tn-layer-shape", lambda: nets.TensorNetwork(np.ones((3, 2)), [np.ones(3)]), ValueError,
     r"layer 1 has shape \(3,\) but tensor axis 1 has length 2"),
    ("tn-nan", lambda: nets.TensorNetwork(np.full((3, 2), np.nan), [np.ones(2)]), ValueError, r"non-finite"),
    ("tn-complex", lambda: nets.TensorNetwork(np.ones((3, 2)) * 1j, [np.ones(2)]), TypeError, r"real numeric"),
    ("tn-traced", lambda: jax.jit(lambda T: nets.TensorNetwork(T, [jnp.ones(2)]).beta())(jnp.ones((3, 2))),
     TypeError, r"tensor must be a concrete array"),
]


@pytest.mark.parametrize("build, error, message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_are_refused_in_words(build, error, message):
    with pytest.raises(error, match=message):
        build()
