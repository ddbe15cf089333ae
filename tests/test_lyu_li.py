"""Lyu & Li (ICLR 2020), Lemma 5.1 / Theorem A.7: along the gradient flow of an L-homogeneous network under the
exponential or logistic loss, once the data are fit (sum loss ℒ < 1, resp. < log 2) the smoothed normalised
margin γ̃ = g(log 1/ℒ)/‖θ‖^L never decreases — for ReLU networks too, along the Clarke subgradient flow.

A theorem, so it is an oracle for the non-smooth field: a chattering field, or one that is not the minimum-norm
subgradient, shows as a drop of γ̃ between saves. Checked at every save after the fit, allowing only float
round-off, on fs.networks.TwoLayer (L = 2, both layers trained) and an MLP with two hidden layers (L = 3), which
slide along kinks on the way (pairs at kinks at the end, kink crossings between saves)."""

import jax
import numpy as np
import pytest

import flowsim as fs
from flowsim._nonsmooth import kink_crossings

nets = fs.networks


def separable_data(n=8, d=3):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, d))
    return X, np.sign(X @ np.array([1.0, 0.5, -0.3]))


@pytest.mark.parametrize("name, loss", [("two_layer", "exponential"), ("mlp", "logistic")])
def test_smoothed_margin_never_decreases_once_the_data_are_fit(name, loss):
    X, y = separable_data()
    if name == "two_layer":
        net = nets.TwoLayer.init(jax.random.key(0), X.shape[1], 6, scale=0.5)
    else:
        net = nets.MLP.init(jax.random.key(1), X.shape[1], [4, 4], "scalar", scale=0.7)
    problem = fs.Problem(net, X, y, loss)
    degree = fs.analysis.homogeneity_degree(problem)
    assert degree == (2 if name == "two_layer" else 3)
    traj = fs.simulate(problem, log_t1=15.0, solver="tsit5", rtol=1e-9, atol=1e-11,
                       save_log_t=np.linspace(0.0, 15.0, 31))
    assert bool(traj.ok), traj.message
    margin = np.asarray(fs.analysis.smoothed_margin(problem, traj.params, degree=degree))
    sum_loss = X.shape[0] * np.asarray(traj.loss)
    fit = sum_loss < (1.0 if loss == "exponential" else np.log(2.0))
    assert fit[-1] and np.all(fit[np.argmax(fit):]) and np.sum(fit) >= 8, sum_loss  # fit for good, ≥ 8 saves
    late = margin[fit]
    assert late[0] > 0  # the fit state has a positive smoothed margin
    drops = np.diff(late)
    assert np.all(drops >= -1e-12 * np.abs(late[1:])), drops
    assert late[-1] > late[0]  # and it does grow (a constant γ̃ would pass trivially)
    assert int(kink_crossings(traj.params, X)) > 0  # the flow went through kinks on the way
