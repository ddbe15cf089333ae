"""`fs.gradient_descent` checks what it shares with `fs.simulate` through the same functions of `flowsim._plan`
(issue 19): the problem, the number of saves, and a positive value (the horizon `t1` there, the step `lr` here),
so one bad value gets one message from both."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs


class Linear(eqx.Module):
    w: jnp.ndarray

    def __call__(self, x):
        return x @ self.w


X = np.random.default_rng(0).normal(size=(6, 2))
PROBLEM = fs.Problem(Linear(jnp.zeros(2)), X, X @ np.ones(2), "squared")


def _message(call):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return type(info.value), str(info.value)


BAD_PROBLEMS = [3, None, "problem", Linear(jnp.zeros(2)), (X, X[:, 0])]
BAD_SAVE_COUNTS = [1, 0, -5, 2.5, True, "10", np.float64(3.0)]  # (None is gradient_descent's default)
# The horizon t1 of fs.simulate and the step lr of fs.gradient_descent: a positive finite real number each.
BAD_POSITIVE = [0.0, -1.0, np.inf, np.nan, -np.inf, True, "0.1", 1j, np.asarray([0.1, 0.2]), None]


@pytest.mark.parametrize("bad", BAD_PROBLEMS, ids=repr)
def test_a_bad_problem_gets_one_message(bad):
    kind, text = _message(lambda: fs.simulate(bad, t1=1.0))
    assert (kind, text) == _message(lambda: fs.gradient_descent(bad, 0.1, steps=10))
    assert kind is TypeError and "flowsim.Problem" in text and type(bad).__name__ in text


@pytest.mark.parametrize("bad", BAD_SAVE_COUNTS, ids=repr)
def test_a_bad_save_count_gets_one_message(bad):
    kind, text = _message(lambda: fs.simulate(PROBLEM, t1=1.0, n_save=bad))
    assert (kind, text) == _message(lambda: fs.gradient_descent(PROBLEM, 0.1, steps=10, n_save=bad))
    assert text.startswith("n_save must be an integer ≥ 2") and (repr(bad) in text or str(bad) in text)


@pytest.mark.parametrize("bad", BAD_POSITIVE, ids=repr)
def test_a_bad_horizon_and_a_bad_step_get_one_message(bad):
    if bad is None:  # no horizon at all is its own error for simulate; lr=None is a bad value
        assert _message(lambda: fs.gradient_descent(PROBLEM, bad, steps=10)) == (
            TypeError,
            "lr must be a real number, got None",
        )
        return
    kind, text = _message(lambda: fs.simulate(PROBLEM, t1=bad))
    assert (kind, text.replace("t1", "lr", 1)) == _message(lambda: fs.gradient_descent(PROBLEM, bad, steps=10))
    assert text.startswith("t1 must be")


def test_gradient_descent_refuses_a_modified_flow_in_words():
    flow = fs.modified_flow(PROBLEM, 0.1)
    assert bool(fs.simulate(flow, t1=0.1, n_save=3).ok)  # a flow: fs.simulate takes it
    kind, text = _message(lambda: fs.gradient_descent(flow, 0.1, steps=10))
    assert kind is TypeError and "not fs.modified_flow" in text


def test_good_values_still_run_and_agree_with_the_closed_form():
    # Squared loss of a linear model: GD is θ_{k+1} = (I − ηH) θ_k + η b, checked against the matrix power.
    lr, steps = 0.05, 40
    gd = fs.gradient_descent(PROBLEM, np.float32(lr), steps=steps, n_save=np.int64(5))
    H, b = X.T @ X / 6, X.T @ np.asarray(PROBLEM.y) / 6
    theta = np.zeros(2)
    for _ in range(steps):
        theta = theta - np.float64(np.float32(lr)) * (H @ theta - b)
    assert bool(gd.ok) and gd.log_t.shape == (5,)
    np.testing.assert_allclose(np.asarray(gd.final.w), theta, rtol=1e-12)
