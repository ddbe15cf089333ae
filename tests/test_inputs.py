"""Inputs that used to give silent wrong results or raw errors: each is refused with a message naming the
argument, or flagged by a status. Values are checked against direct NumPy formulas."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs
from flowsim import _losses
from flowsim._trajectory import saved_losses


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return x @ self.w


class Scaled(eqx.Module):
    """f(x) = c · xᵀw with a fixed (non-trained) factor c."""

    w: jax.Array
    c: jax.Array

    def __call__(self, x):
        return self.c * (x @ self.w)


class Root(eqx.Module):
    """f(x) = sqrt(xᵀw): NaN where xᵀw < 0, so one sample's prediction can be NaN at finite θ."""

    w: jax.Array

    def __call__(self, x):
        return jnp.sqrt(x @ self.w)


X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
Y = np.array([1.0, -1.0, 1.0])
MODEL = Linear(jnp.array([0.5, -0.25]))


# --- Problem: complex, ragged and non-numeric data; complex parameters ----------------------------------

@pytest.mark.parametrize("name", ["X", "y"])
def test_complex_data_is_refused_naming_it(name):
    data = {"X": X, "y": Y}
    data[name] = data[name] + 1j
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way: the check comes before any cast
        with pytest.raises(TypeError, match=f"{name} must be real-valued, got dtype complex128"):
            fs.Problem(MODEL, data["X"], data["y"])


def test_complex_data_is_refused_under_vmap_too():
    with pytest.raises(TypeError, match="X must be real-valued"):
        eqx.filter_vmap(lambda X: fs.Problem(MODEL, X, Y))(jnp.stack([X, X]).astype(jnp.complex128))


def test_complex_trained_parameter_is_refused_naming_the_leaf():
    with pytest.raises(TypeError, match=r"model parameter \.w is complex \(dtype complex128\)"):
        fs.Problem(Linear(jnp.array([0.5, -0.25]) + 0j), X, Y)
    # complex64 too (it used to be promoted to complex128 and trained)
    with pytest.raises(TypeError, match=r"model parameter \.w is complex \(dtype complex64\)"):
        fs.Problem(Linear(jnp.array([0.5, -0.25], dtype=jnp.complex64)), X, Y)


class RealPart(Scaled):
    def __call__(self, x):
        return jnp.real(self.c * (x @ self.w))


def test_complex_fixed_leaf_is_allowed_when_the_output_is_real_and_refused_when_it_is_not():
    real_only = lambda leaf: not jnp.iscomplexobj(leaf)  # noqa: E731
    # f = Re((2 + 3i) xᵀw) = 2 xᵀw: GD on it is GD on the real model 2 xᵀw.
    problem = fs.Problem(RealPart(jnp.array([0.5, -0.25]), jnp.asarray(2.0 + 3.0j)), X, Y, trainable=real_only)
    gd = fs.gradient_descent(problem, 0.1, save_steps=[0, 1])
    grad = (2 * X).T @ (2 * X @ np.array([0.5, -0.25]) - Y) / 3
    np.testing.assert_allclose(gd.final.w, np.array([0.5, -0.25]) - 0.1 * grad, rtol=1e-14)
    with pytest.raises(TypeError, match="returns complex outputs"):
        fs.Problem(Scaled(jnp.ones(2), jnp.asarray(1j)), X, Y, trainable=real_only)
    # A complex constant that makes a complex output is refused; without `trainable` the leaf is θ and refused first.
    with pytest.raises(TypeError, match=r"model parameter \.c is complex"):
        fs.Problem(Scaled(jnp.ones(2), jnp.asarray(1j)), X, Y)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([[1.0, 2.0], [3.0]], ValueError, "X cannot be read as an array .are its rows of unequal length"),
        ([["a", "b"], ["c", "d"]], TypeError, "X must be a numeric array .float, int or bool., got dtype <U1"),
        ("abc", TypeError, "X must be a numeric array"),
        (np.array([[None, 1.0]], dtype=object), TypeError, "X must be a numeric array .* got dtype object"),
    ],
)
def test_ragged_or_non_numeric_X_is_refused_naming_X(bad, error, match):
    with pytest.raises(error, match=match):
        fs.Problem(MODEL, bad, Y[: len(bad)] if isinstance(bad, list) else Y[:1])


def test_ragged_y_is_refused_naming_y():
    with pytest.raises(ValueError, match="y cannot be read as an array"):
        fs.Problem(MODEL, X, [[1.0], [2.0, 3.0], [4.0]])


def test_integer_and_boolean_data_are_cast_exactly_and_traced_data_is_promoted_to_float64():
    problem = fs.Problem(MODEL, X.astype(bool), Y.astype(int))
    assert problem.X.dtype == jnp.float64 and problem.y.dtype == jnp.float64
    np.testing.assert_array_equal(problem.X, X != 0)
    np.testing.assert_array_equal(problem.y, Y)
    stacked = eqx.filter_vmap(lambda X: fs.Problem(MODEL, X, Y))(jnp.stack([X, 2 * X]).astype(jnp.float32))
    assert stacked.X.dtype == jnp.float64


# --- log L is NaN wherever L is -------------------------------------------------------------------------

def _direct_loss(name, f, y):
    if name == "squared":
        return 0.5 * (f - y) ** 2
    if name == "logistic":
        return np.log1p(np.exp(-y * f))
    return np.exp(-y * f)


@pytest.mark.parametrize("name", ["squared", "logistic", "exponential"])
def test_log_value_is_nan_where_a_prediction_is_nan_and_log_of_value_elsewhere(name):
    loss = _losses.loss_from_name(name)
    f = np.array([0.3, -1.2, 2.0])
    expected = np.log(np.mean(_direct_loss(name, f, Y)))
    np.testing.assert_allclose(float(loss.log_value(jnp.asarray(f), jnp.asarray(Y))), expected, rtol=1e-13)
    one_nan = jnp.asarray([0.3, jnp.nan, 2.0])
    all_nan = jnp.full(3, jnp.nan)
    for prediction in (one_nan, all_nan):
        assert np.isnan(float(loss.value(prediction, jnp.asarray(Y))))
        assert np.isnan(float(loss.log_value(prediction, jnp.asarray(Y))))


def test_squared_log_per_sample_keeps_nan_and_minus_inf_apart():
    loss = _losses.Squared()
    f = jnp.asarray([1.0, jnp.nan, 3.0])  # residuals 0, NaN, 2 against y = (1, 1, 1)
    log_terms = np.asarray(loss.log_per_sample(f, jnp.ones(3)))
    assert log_terms[0] == -np.inf and np.isnan(log_terms[1])
    np.testing.assert_allclose(log_terms[2], np.log(0.5 * 4.0), rtol=1e-15)
    # Vector outputs: one NaN component makes that sample's log ℓ_i NaN.
    vector = loss.log_per_sample(jnp.asarray([[0.0, jnp.nan], [1.0, 1.0]]), jnp.zeros((2, 2)))
    assert np.isnan(float(vector[0])) and np.isclose(float(vector[1]), np.log(0.5 * 2.0))


def test_cross_entropy_log_value_is_nan_for_a_nan_logit():
    loss = _losses.SoftmaxCrossEntropy()
    logits = jnp.asarray([[1.0, jnp.nan], [0.0, 1.0]])
    assert np.isnan(float(loss.log_value(logits, jnp.eye(2))))


def test_a_custom_loss_that_hides_nan_still_gives_nan_log_value():
    class Hiding(_losses.Squared):
        def log_per_sample(self, prediction, target):
            return jnp.where(jnp.isnan(prediction), -jnp.inf, super().log_per_sample(prediction, target))

    assert np.isnan(float(Hiding().log_value(jnp.asarray([1.0, jnp.nan]), jnp.zeros(2))))


def test_trajectory_log_loss_is_nan_where_loss_is_nan():
    problem = fs.Problem(Root(jnp.array([1.0, 1.0])), X, np.ones(3))
    # θ = (1, 1): every xᵀw > 0; θ = (1, −2): xᵀw < 0 for the 2nd and 3rd samples; θ = NaN: every sample.
    models = Root(jnp.array([[1.0, 1.0], [1.0, -2.0], [jnp.nan, jnp.nan]]))
    loss, log_loss = saved_losses(problem, models)
    f = np.sqrt(X @ np.array([1.0, 1.0]))
    np.testing.assert_allclose(float(log_loss[0]), np.log(np.mean(0.5 * (f - 1.0) ** 2)), rtol=1e-13)
    assert np.all(np.isnan(np.asarray(loss[1:]))) and np.all(np.isnan(np.asarray(log_loss[1:])))


def test_diverged_gradient_descent_saves_nan_loss_and_nan_log_loss():
    problem = fs.Problem(Linear(jnp.array([0.5, -0.25])), X, Y)
    gd = fs.gradient_descent(problem, 50.0, steps=400, n_save=20)
    assert int(gd.status) == fs.Status.DIVERGED
    nan_saves = np.isnan(np.asarray(gd.loss))
    assert nan_saves.any()
    np.testing.assert_array_equal(np.isnan(np.asarray(gd.log_loss)), nan_saves)


# --- gradient_descent: traced classification labels --------------------------------------------------------

def test_gradient_descent_refuses_a_member_with_labels_not_pm1():
    problems = eqx.filter_vmap(lambda y: fs.Problem(MODEL, X, y, loss="logistic"))(
        jnp.stack([jnp.asarray(Y), jnp.asarray([1.0, 0.0, 1.0])]))
    batch = eqx.filter_vmap(lambda p: fs.gradient_descent(p, 0.1, steps=5))(problems)
    assert np.asarray(batch.status).tolist() == [fs.Status.HORIZON_REACHED, fs.Status.INVALID_INPUT]
    assert batch.message.startswith("member 1: refused before running") and "±1" in batch.message
    with pytest.raises(ValueError, match="logistic loss needs labels ±1"):
        fs.Problem(MODEL, X, [1.0, 0.0, 1.0], loss="logistic")  # concrete: refused at once


class Logits(eqx.Module):
    W: jax.Array

    def __call__(self, x):
        return self.W @ x


def test_gradient_descent_refuses_a_member_whose_cross_entropy_rows_are_not_probabilities():
    rows = jnp.stack([jnp.eye(2)[jnp.array([0, 1, 0])], jnp.asarray([[1.0, 0.0], [0.5, 0.6], [0.0, 1.0]])])
    problems = eqx.filter_vmap(lambda y: fs.Problem(Logits(jnp.zeros((2, 2))), X, y, loss="cross_entropy"))(rows)
    batch = eqx.filter_vmap(lambda p: fs.gradient_descent(p, 0.1, steps=5))(problems)
    assert np.asarray(batch.status).tolist() == [fs.Status.HORIZON_REACHED, fs.Status.INVALID_INPUT]
    assert "probability rows" in batch.message


# --- data generators ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: fs.data.separable(2.5, 3), TypeError, "n must be an integer ≥ 1, got 2.5"),
        (lambda: fs.data.separable(4, 3, gap="0.1"), TypeError, "gap must be a real number"),
        (lambda: fs.data.separable(4, 3, gap=float("nan")), ValueError, "gap must be a finite real number"),
        (lambda: fs.data.separable(4, 3, seed=-1), ValueError, "seed must be an integer ≥ 0"),
        (lambda: fs.data.separable(4, 3, symmetric="yes"), TypeError, "symmetric must be True or False"),
        (lambda: fs.data.underdetermined_regression(2, 5.0), TypeError, "d must be an integer"),
        (lambda: fs.data.underdetermined_regression(2, 5, sparsity=0), ValueError, "sparsity must be an integer ≥ 1"),
        (lambda: fs.data.relu_teacher_student(5, 3, seed=1.5), TypeError, "seed must be an integer ≥ 0"),
        (lambda: fs.data.circular_even(np.ones((2, 3)) + 1j), TypeError, "X must be a real numeric array"),
    ],
)
def test_data_generators_refuse_bad_arguments_naming_them(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- Status.LOSS_INCREASED for a solve (the flag simulate raises), in words ------------------------------

def test_loss_increased_message_for_a_solve_names_the_losses_and_the_tolerances():
    log_loss = jnp.asarray([-2.0, -1.0, 0.5])
    traj = fs.Trajectory(
        log_t=jnp.asarray([-jnp.inf, 0.0, 3.0]), params=None, final=None, loss=jnp.exp(log_loss), log_loss=log_loss,
        stats={"num_steps": jnp.asarray(7), "num_rejected_steps": jnp.asarray(0)},
        status=jnp.asarray(fs.Status.LOSS_INCREASED, dtype=jnp.int32), log_t_reached=jnp.asarray(3.0),
        metadata=(("solver", "tsit5"),), settings={"log_t1": jnp.asarray(3.0)},
    )
    assert not bool(traj.ok)
    assert "log L = -2 at the first save, 0.5 at the last" in traj.message and "Tighten rtol/atol" in traj.message
