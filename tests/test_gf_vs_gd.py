"""GD against gradient flow and the modified flow (Elkabetz & Cohen 2021; Barrett & Dherin 2021), sharpness,
and GD's traced step: all checked against closed forms (matrix powers, expm, eigvalsh)."""

import importlib.util
import json
import pathlib

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.special

import flowsim as fs
from flowsim import _gd


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return x @ self.w


class TwoLayer(eqx.Module):
    """f(x) = aᵀ tanh(W x): a non-convex loss with an indefinite Hessian."""

    W: jax.Array
    a: jax.Array

    def __call__(self, x):
        return self.a @ jnp.tanh(self.W @ x)


# L(θ) = (1/2n)‖Xθ − y‖²: H = XᵀX/n, θ* = X⁻¹y. GF: θ* + e^{−tH}(θ₀ − θ*); GD: θ* + (I − ηH)^k(θ₀ − θ*);
# the modified flow is linear too: θ' = −(H + (η/2)H²)(θ − θ*).
@pytest.fixture(scope="module")
def quadratic():
    rng = np.random.default_rng(1)
    n = d = 5
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w0 = rng.standard_normal(d)
    H = X.T @ X / n
    return fs.Problem(Linear(jnp.asarray(w0)), X, y, loss="squared"), H, np.linalg.solve(X, y), w0


def gd_exact(H, theta_star, w0, lr, ks):
    step = np.eye(len(w0)) - lr * H
    return np.stack([theta_star + np.linalg.matrix_power(step, int(k)) @ (w0 - theta_star) for k in ks])


def flow_exact(M, theta_star, w0, times):
    return np.stack([theta_star + scipy.linalg.expm(-t * M) @ (w0 - theta_star) for t in times])


# --- gradient_descent: explicit save steps, traced lr ------------------------------------------------------

def test_gradient_descent_saves_exactly_the_given_steps(quadratic):
    problem, H, theta_star, w0 = quadratic
    ks = [3, 4, 10, 57]  # need not start at 0; no de-duplication, no appended state
    gd = fs.gradient_descent(problem, lr=0.2, save_steps=ks)
    assert bool(gd.ok) and gd.params.w.shape == (4, 5)
    np.testing.assert_allclose(gd.params.w, gd_exact(H, theta_star, w0, 0.2, ks), rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.exp(gd.log_t), 0.2 * np.asarray(ks), rtol=1e-15)
    assert gd.info["steps"] == 57 and int(gd.stats["num_steps"]) == 57


def test_gradient_descent_lr_is_traced_no_recompile_and_vmaps(quadratic, monkeypatch):
    problem, H, theta_star, w0 = quadratic
    # Every new lr (and every new grid of the same length) must reuse the one compiled loop.
    monkeypatch.setattr(_gd, "_run", eqx.filter_jit(eqx.debug.assert_max_traces(_gd._gd_loop, max_traces=1)))
    for lr, ks in [(0.1, [0, 5, 20]), (0.05, [0, 6, 40]), (0.3, [1, 2, 3])]:
        gd = fs.gradient_descent(problem, lr=lr, save_steps=ks)
        np.testing.assert_allclose(gd.params.w, gd_exact(H, theta_star, w0, lr, ks), atol=1e-13)
        assert gd.info["lr"] == lr
    lrs = jnp.asarray([0.1, 0.05, 0.02])
    batch = eqx.filter_vmap(lambda lr: fs.gradient_descent(problem, lr, save_steps=[0, 5, 20]))(lrs)
    assert batch.params.w.shape == (3, 3, 5) and np.all(np.asarray(batch.ok))
    np.testing.assert_allclose(batch.info["lr"], lrs)  # the step of each member, as a value
    np.testing.assert_allclose(batch.info["t1"], 20 * lrs)
    for i, lr in enumerate(np.asarray(lrs)):
        np.testing.assert_allclose(batch.params.w[i], gd_exact(H, theta_star, w0, lr, [0, 5, 20]), atol=1e-13)


def test_gradient_descent_traced_bad_lr_refuses_only_that_member(quadratic):
    problem, H, theta_star, w0 = quadratic
    batch = eqx.filter_vmap(lambda lr: fs.gradient_descent(problem, lr, save_steps=[0, 3]))(
        jnp.asarray([0.1, -1.0, jnp.nan]))
    assert np.asarray(batch.status).tolist() == [fs.Status.HORIZON_REACHED, fs.Status.INVALID_INPUT,
                                                 fs.Status.INVALID_INPUT]
    np.testing.assert_allclose(batch.params.w[0], gd_exact(H, theta_star, w0, 0.1, [0, 3]), atol=1e-13)
    assert np.all(np.isnan(np.asarray(batch.params.w[1:]))) and np.all(np.isnan(np.asarray(batch.loss[1:])))
    assert np.asarray(batch.stats["num_steps"]).tolist() == [3, 0, 0]
    lines = batch.message.splitlines()
    assert len(lines) == 2 and lines[0].startswith("member 1:") and "lr must be positive and finite (got -1.0)" in lines[0]
    # Under jit (a traced scalar, no batch) the same status, not an exception.
    single = jax.jit(lambda lr: fs.gradient_descent(problem, lr, steps=3))(-1.0)
    assert int(single.status) == fs.Status.INVALID_INPUT and not bool(single.ok)


def test_gradient_descent_past_the_stability_bound_is_not_ok(quadratic):
    problem, H, theta_star, w0 = quadratic
    lam = np.linalg.eigvalsh(H).max()
    # η·λ_max = 2.5: the top mode's error grows by |1 − ηλ_max| = 1.5 a step, and L by 2.25, finite for 40 steps.
    lr = 2.5 / lam
    gd = fs.gradient_descent(problem, lr, save_steps=[0, 40])
    exact = gd_exact(H, theta_star, w0, lr, [0, 40])
    np.testing.assert_allclose(gd.params.w, exact, rtol=1e-9)  # the iterates are kept as computed
    assert np.isfinite(float(gd.loss[-1])) and float(gd.loss[-1]) > 1e4 * float(gd.loss[0])
    assert int(gd.status) == fs.Status.LOSS_INCREASED and not bool(gd.ok)
    assert "smaller lr" in gd.message and "2/λ_max" in gd.message
    # Below the bound (η·λ_max = 1.9) the same number of steps is a success, and so is a batch mixing both.
    assert bool(fs.gradient_descent(problem, 1.9 / lam, save_steps=[0, 40]).ok)
    batch = eqx.filter_vmap(lambda lr: fs.gradient_descent(problem, lr, save_steps=[0, 40]))(
        jnp.asarray([1.9 / lam, lr]))
    assert np.asarray(batch.ok).tolist() == [True, False]
    assert batch.message.startswith("member 1: gradient descent made the loss grow")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=0.1, save_steps=[0, 5, 5]), ValueError, "strictly increasing, got 5 then 5"),
        (dict(lr=0.1, save_steps=[-1, 5]), ValueError, "save_steps must be ≥ 0, got -1"),
        (dict(lr=0.1, save_steps=[0, 2.5]), TypeError, "integer step indices"),
        (dict(lr=0.1, save_steps=[[0, 1]]), ValueError, "1-d array"),
        (dict(lr=0.1, save_steps=[]), ValueError, "non-empty"),
        (dict(lr=0.1, save_steps=[0]), ValueError, "at least step 1"),
        (dict(lr=0.1, steps=10, save_steps=[0, 5]), ValueError, r"must end at steps = 10 \(the run.s last step\), got 5"),
        (dict(lr=0.1, n_save=5, save_steps=[0, 5]), ValueError, "n_save or save_steps"),
        (dict(lr=0.1), ValueError, "steps must be given"),
        (dict(lr="0.1", steps=3), TypeError, "lr must be a real number"),
        (dict(lr=float("inf"), steps=3), ValueError, "lr must be positive and finite, got inf"),
    ],
)
def test_gradient_descent_refuses_bad_save_steps(quadratic, kwargs, error, match):
    with pytest.raises(error, match=match):
        fs.gradient_descent(quadratic[0], **kwargs)


# --- GD against GF and the modified flow, lined up ---------------------------------------------------------

def test_gf_vs_gd_matches_closed_forms_and_orders(quadratic):
    problem, H, theta_star, w0 = quadratic
    lam = np.linalg.eigvalsh(H).max()
    lrs = (1.0 / lam) / np.array([1, 2, 4, 8, 16])
    comparison = fs.analysis.gf_vs_gd(problem, lrs, t1=2.0, n_save=12)
    assert bool(comparison.flow_ok)
    times = np.exp(np.asarray(comparison.log_t))
    # Lined up: the same times for every η (η_0/η_i integers), t = k·η exactly, t = 0 first.
    np.testing.assert_allclose(times, np.asarray(comparison.steps) * lrs[:, None], rtol=1e-15)
    np.testing.assert_allclose(times, times[:1].repeat(5, axis=0), rtol=1e-14)
    assert times[0, 0] == 0.0 and times[0, -1] == pytest.approx(2.0, rel=0.3)
    for i, lr in enumerate(lrs):
        np.testing.assert_allclose(comparison.theta_gd[i], gd_exact(H, theta_star, w0, lr, comparison.steps[i]),
                                   atol=1e-12)
        np.testing.assert_allclose(comparison.theta_flow[i], flow_exact(H, theta_star, w0, times[i]), atol=1e-9)
        np.testing.assert_allclose(comparison.theta_modified[i],
                                   flow_exact(H + 0.5 * lr * H @ H, theta_star, w0, times[i]), atol=1e-9)
    exact_gf = [np.linalg.norm(gd_exact(H, theta_star, w0, lr, comparison.steps[i][-1:])[0]
                               - flow_exact(H, theta_star, w0, times[i][-1:])[0]) for i, lr in enumerate(lrs)]
    np.testing.assert_allclose(comparison.distance_to_flow[:, -1], exact_gf, rtol=1e-7)
    assert 0.9 <= comparison.order("flow") <= 1.1
    assert 1.8 <= comparison.order("modified") <= 2.2
    assert comparison.order("flow") == pytest.approx(fs.analysis.fitted_order(lrs, exact_gf), abs=1e-6)


def test_gf_vs_gd_with_incommensurate_steps_compares_at_each_runs_own_times(quadratic):
    problem, H, theta_star, w0 = quadratic
    lrs = np.array([0.3, 0.17, 0.07])
    comparison = fs.analysis.gf_vs_gd(problem, lrs, t1=3.0, n_save=8, modified=False)
    assert comparison.theta_modified is None and comparison.distance_to_modified is None
    steps = np.asarray(comparison.steps)
    assert np.all(np.diff(steps, axis=1) > 0)
    for i, lr in enumerate(lrs):
        times = steps[i] * lr
        np.testing.assert_allclose(comparison.theta_flow[i], flow_exact(H, theta_star, w0, times), atol=1e-9)
        exact = np.linalg.norm(gd_exact(H, theta_star, w0, lr, steps[i]) - flow_exact(H, theta_star, w0, times), axis=1)
        np.testing.assert_allclose(comparison.distance_to_flow[i], exact, atol=1e-9)
    with pytest.raises(ValueError, match="modified=False"):
        comparison.order("modified")


def test_gf_vs_gd_modified_mask_solves_the_modified_flow_for_the_chosen_steps_only(quadratic):
    problem, H, theta_star, w0 = quadratic
    lrs = np.array([0.4, 0.2, 0.1])
    comparison = fs.analysis.gf_vs_gd(problem, lrs, t1=2.0, n_save=6, modified=[False, True, False])
    times = np.asarray(comparison.steps) * lrs[:, None]
    theta_mf = np.asarray(comparison.theta_modified)
    assert np.all(np.isnan(theta_mf[[0, 2]])) and np.all(np.isnan(np.asarray(comparison.distance_to_modified)[[0, 2]]))
    np.testing.assert_allclose(theta_mf[1], flow_exact(H + 0.5 * 0.2 * H @ H, theta_star, w0, times[1]), atol=1e-9)
    np.testing.assert_allclose(comparison.theta_flow[2], flow_exact(H, theta_star, w0, times[2]), atol=1e-9)


@pytest.mark.parametrize("modified", [[True, False, True], [1, 0], "yes", np.array([True])])
def test_gf_vs_gd_refuses_a_bad_modified_mask(quadratic, modified):
    with pytest.raises((ValueError, TypeError), match="modified must be"):
        fs.analysis.gf_vs_gd(quadratic[0], [0.2, 0.1], t1=1.0, modified=modified)


def test_gf_vs_gd_past_the_stability_limit_reports_nan_not_numbers(quadratic):
    problem, H, _, _ = quadratic
    lam = np.linalg.eigvalsh(H).max()
    comparison = fs.analysis.gf_vs_gd(problem, [3.0 / lam, 0.5 / lam], t1=2000 / lam, n_save=10, modified=False)
    ok = np.asarray(comparison.gd.ok)
    assert not ok[0] and ok[1]  # η·λ_max = 3 > 2 diverges; 0.5 does not
    assert np.isnan(np.asarray(comparison.distance_to_flow[0, -1]))
    assert np.all(np.isfinite(np.asarray(comparison.distance_to_flow[1])))


@pytest.mark.parametrize(
    "lrs, t1, match",
    [
        ([0.1, -0.1], 1.0, "lrs must be positive and finite"),
        ([0.1, 0.1], 1.0, "lrs must be distinct"),
        ([], 1.0, "non-empty 1-d"),
        ([0.5, 0.1], 0.2, "shorter than one step of the largest lr = 0.5"),
        ([0.1], -1.0, "t1 must be positive"),
    ],
)
def test_gf_vs_gd_refuses_bad_input(quadratic, lrs, t1, match):
    with pytest.raises(ValueError, match=match):
        fs.analysis.gf_vs_gd(quadratic[0], lrs, t1=t1)


@pytest.mark.parametrize(
    "lrs, errors, match",
    [([0.1], [1.0], "at least two distinct"), ([0.1, 0.2], [1.0, np.nan], "errors must be positive"),
     ([0.1, 0.2], [1.0], "same length"), ([0.0, 0.2], [1.0, 2.0], "lrs must be positive")],
)
def test_fitted_order_refuses_bad_input(lrs, errors, match):
    with pytest.raises(ValueError, match=match):
        fs.analysis.fitted_order(lrs, errors)


# --- sharpness ---------------------------------------------------------------------------------------------

def dense_hessian_top(model, X, y):
    """λ_max of the Hessian of L = (1/2n)Σ(f(x_i) − y_i)², formed densely by jax.hessian, by numpy eigvalsh."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(th):
        m = eqx.combine(unravel(th), static)
        return 0.5 * jnp.mean((jax.vmap(m)(X) - y) ** 2)

    return np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(theta))).max()


def test_sharpness_of_a_quadratic_is_the_top_eigenvalue(quadratic):
    problem, H, _, _ = quadratic
    assert float(fs.analysis.sharpness(problem)) == pytest.approx(np.linalg.eigvalsh(H).max(), rel=1e-12)


def test_sharpness_along_a_trajectory_matches_dense_eigvalsh():
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((12, 4)), rng.standard_normal(12)
    model = TwoLayer(0.8 * jnp.asarray(rng.standard_normal((3, 4))), jnp.asarray(rng.standard_normal(3)))
    problem = fs.Problem(model, X, y, loss="squared")
    traj = fs.gradient_descent(problem, lr=0.05, steps=200, n_save=6)
    got = np.asarray(fs.analysis.sharpness(problem, traj.params))
    assert got.shape == (6,)
    models = [jax.tree_util.tree_map(lambda leaf: leaf[j], traj.params) for j in range(6)]
    want = np.array([dense_hessian_top(m, X, y) for m in models])
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # Two leading axes (e.g. a vmapped batch of trajectories) work too.
    stacked = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf, leaf]), traj.params)
    np.testing.assert_allclose(fs.analysis.sharpness(problem, stacked), np.stack([got, got]), rtol=1e-12)


def test_sharpness_negative_definite_and_rank_deficient_hessians():
    rng = np.random.default_rng(4)
    # Rank 2 Hessian in 6 dimensions: the Krylov space closes after 2 steps and Lanczos restarts.
    X, y = rng.standard_normal((2, 6)), rng.standard_normal(2)
    problem = fs.Problem(Linear(jnp.zeros(6)), X, y, loss="squared")
    top = np.linalg.eigvalsh(X.T @ X / 2).max()
    assert float(fs.analysis.sharpness(problem, num_iters=6)) == pytest.approx(top, rel=1e-12)
    # An indefinite Hessian at a saddle of the two-layer net: λ_max is the largest (algebraic) eigenvalue.
    X, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    model = TwoLayer(jnp.asarray(rng.standard_normal((2, 3))), jnp.asarray(rng.standard_normal(2)))
    problem = fs.Problem(model, X, y, loss="squared")
    assert float(fs.analysis.sharpness(problem, num_iters=8)) == pytest.approx(dense_hessian_top(model, X, y),
                                                                               rel=1e-10)


def test_sharpness_refuses_bad_input(quadratic):
    problem = quadratic[0]
    with pytest.raises(ValueError, match="neither those of problem.model"):
        fs.analysis.sharpness(problem, Linear(jnp.zeros(3)))
    with pytest.raises(ValueError, match="num_iters must be an integer ≥ 1, got 0"):
        fs.analysis.sharpness(problem, num_iters=0)
    with pytest.raises(TypeError, match="flowsim.Problem"):
        fs.analysis.sharpness(problem.model)


# --- softmax cross-entropy (the loss of the Elkabetz & Cohen scenario) ---------------------------------

def test_softmax_cross_entropy_against_direct_formulas():
    rng = np.random.default_rng(5)
    ce = fs._losses.loss_from_name("cross_entropy")
    assert isinstance(ce, fs._losses.SoftmaxCrossEntropy)
    logits = jnp.asarray(3 * rng.standard_normal((6, 4)))
    labels = rng.integers(0, 4, 6)
    onehot = jnp.asarray(np.eye(4)[labels])
    soft = jnp.asarray(rng.dirichlet(np.ones(4), 6))
    for target in (onehot, soft):
        direct = -np.sum(np.asarray(target) * np.asarray(jax.nn.log_softmax(logits)), axis=1)
        np.testing.assert_allclose(ce.per_sample(logits, target), direct, rtol=1e-13)
        np.testing.assert_allclose(ce.log_per_sample(logits, target), np.log(direct), rtol=1e-12)
        np.testing.assert_allclose(ce.scaled_gradient(logits, target, 0.0), jax.nn.softmax(logits) - target, atol=1e-15)
        np.testing.assert_allclose(ce.scaled_gradient(logits, target, 2.0),
                                   np.exp(2.0) * (jax.nn.softmax(logits) - target), rtol=1e-12, atol=1e-14)
    # The gradient's Jacobian (what implicit solvers use) is the softmax Jacobian.
    jac = jax.jacfwd(lambda f: ce.scaled_gradient(f, onehot, 0.0)[0])(logits)[:, 0]
    p = np.asarray(jax.nn.softmax(logits[0]))
    np.testing.assert_allclose(jac, np.diag(p) - np.outer(p, p), atol=1e-15)


def test_softmax_cross_entropy_is_logistic_for_two_classes_and_finite_where_it_underflows():
    margins = jnp.asarray([-3.0, 0.5, 40.0, 800.0, 1e5])
    logits = jnp.stack([margins, jnp.zeros_like(margins)], axis=1)  # class 0 is the true one
    onehot = jnp.asarray(np.tile([1.0, 0.0], (5, 1)))
    ce, logistic = fs._losses.SoftmaxCrossEntropy(), fs.Logistic()
    ones = jnp.ones(5)
    np.testing.assert_allclose(ce.per_sample(logits, onehot), logistic.per_sample(margins, ones), rtol=1e-14)
    np.testing.assert_allclose(ce.log_per_sample(logits, onehot), logistic.log_per_sample(margins, ones), rtol=1e-14)
    assert np.all(np.isfinite(np.asarray(ce.log_per_sample(logits, onehot))))
    assert float(ce.log_per_sample(logits, onehot)[-1]) == pytest.approx(-1e5, rel=1e-12)
    # log time: e^s·|ℓ'| with s = 1e5 + 3 and margin 1e5 is e^3 (neither factor formed on its own).
    grad = ce.scaled_gradient(logits, onehot, 1e5 + 3.0)
    np.testing.assert_allclose(grad[-1], [-np.exp(3.0), np.exp(3.0)], rtol=1e-10)


def test_cross_entropy_problem_gd_matches_a_hand_written_loop():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((10, 4))
    Y = np.eye(3)[rng.integers(0, 3, 10)]

    class Multi(eqx.Module):
        W: jax.Array

        def __call__(self, x):
            return x @ self.W

    W0 = rng.standard_normal((4, 3))
    problem = fs.Problem(Multi(jnp.asarray(W0)), X, Y, loss="cross_entropy")
    gd = fs.gradient_descent(problem, lr=0.3, save_steps=[0, 25])
    W = W0.copy()
    for _ in range(25):
        P = np.exp(X @ W - (X @ W).max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        W -= 0.3 * X.T @ (P - Y) / 10
    np.testing.assert_allclose(gd.final.W, W, atol=1e-12)
    logp = X @ W - scipy.special.logsumexp(X @ W, axis=1, keepdims=True)
    assert float(gd.loss[-1]) == pytest.approx(-np.mean(np.sum(Y * logp, axis=1)), rel=1e-12)


# --- the two scenarios -------------------------------------------------------------------------------------

SCENARIOS = pathlib.Path(__file__).resolve().parents[1] / "scenarios"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCENARIOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_elkabetz_quick_run_holds_its_claims(tmp_path):
    from flowsim.harness._cli import main

    code = main(["run", str(SCENARIOS / "elkabetz2021_gf_vs_gd.py"), "--quick", "--strict", "--out",
                 str(tmp_path / "runs"), "--figures", str(tmp_path / "figs")])
    assert code == 0  # --strict: every claim holds and every flow reached its horizon
    run_dir = tmp_path / "runs" / "elkabetz2021_gf_vs_gd-quick"  # --quick runs never overwrite a full run
    summary = json.loads((run_dir / "summary.json").read_text())
    claims = {c["name"]: c for c in summary["claims"]}
    with np.load(run_dir / "results.npz", allow_pickle=False) as r:
        lrs, d_gf, d_mf = r["linear/lrs"], r["linear/distance_to_flow"], r["linear/distance_to_modified"]
        assert bool(r["linear/flow_ok"]) and np.all(r["linear/gd_ok"])
        # η_0 = 0.5/λ*, λ* the largest sharpness along the saved flow; the steps halve.
        assert lrs[0] * r["linear/max_sharpness"] == pytest.approx(0.5)
        np.testing.assert_allclose(lrs[:-1] / lrs[1:], 2.0)
    # The orders, refitted here by least squares on the saved distances at t1.
    assert claims["linear_order_gd_to_gf"]["value"] == pytest.approx(np.polyfit(np.log(lrs), np.log(d_gf[:, -1]), 1)[0])
    assert claims["linear_order_gd_to_modified_flow"]["value"] == pytest.approx(
        np.polyfit(np.log(lrs), np.log(d_mf[:, -1]), 1)[0])
    for name in summary["figures"]["files"]:
        assert (tmp_path / "figs" / "elkabetz2021_gf_vs_gd" / name).stat().st_size > 1000


def test_elkabetz_relu_net_is_a_bias_free_one_hidden_layer_relu_net():
    module = load("elkabetz2021_gf_vs_gd")
    config = module.scenario.make_config(quick=True) | {"n": 12, "width": 5}
    relu, linear = module.problem(config, "relu"), module.problem(config, "linear")
    assert isinstance(relu.model, fs.networks.MLP) and relu.model.depth == 2 and relu.model.leak == 0.0
    W1, W2 = (np.asarray(W) for W in relu.model.layers)
    X = np.asarray(relu.X)
    assert X.shape == (12, 64) and W1.shape == (5, 64) and W2.shape == (10, 5)
    np.testing.assert_allclose(jax.vmap(relu.model)(relu.X), np.maximum(X @ W1.T, 0.0) @ W2.T, atol=1e-13)
    product = np.linalg.multi_dot([np.asarray(W) for W in linear.model.layers[::-1]])
    np.testing.assert_allclose(jax.vmap(linear.model)(linear.X), X @ product.T, atol=1e-12)


@pytest.mark.parametrize("name", ["stiff_quadratic", "diagonal_regression", "log_time_logistic"])
def test_solver_accuracy_references_agree_with_a_tight_scipy_solve(name):
    """Each closed-form reference (expm, the mirror-map limit, the logistic closed form) against DOP853 at
    rtol 1e-13 on the scenario's field — two independent routes to the same number."""
    module = load("solver_accuracy")
    config = module.scenario.make_config()
    model, X, y, loss, horizon, exact, rhs = module.PROBLEMS[name](config)
    t_end = horizon["t1"] if "t1" in horizon else float(np.logaddexp(0.0, horizon["log_t1"]))
    fun = jax.jit(rhs)
    sol = scipy.integrate.solve_ivp(lambda t, w: np.asarray(fun(t, w)), (0.0, t_end), module.flat(model),
                                    method="DOP853", rtol=1e-13, atol=1e-15)
    assert sol.success
    np.testing.assert_allclose(sol.y[:, -1], exact, rtol=1e-9, atol=1e-11)
    # The field the scenario hands SciPy is flowsim's: −∇L (in log time, −e^s ∇L).
    problem = fs.Problem(model, X, y, loss=loss)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    grad = jax.grad(lambda th: problem.loss_value(eqx.combine(unravel(th), static)))
    scale = 1.0 if "t1" in horizon else np.exp(0.7)
    np.testing.assert_allclose(rhs(np.log(scale), theta), -scale * grad(theta), rtol=1e-12)


def test_solver_accuracy_counts_every_field_evaluation():
    module = load("solver_accuracy")
    config = module.scenario.make_config(quick=True)
    model, X, y, loss, horizon, _, _ = module.PROBLEMS["stiff_quadratic"](config)
    tally = module.Tally()
    traj = fs.simulate(fs.Problem(module.Counted(model, tally), X, y, loss=loss), solver="tsit5", rtol=1e-5,
                       atol=1e-8, n_save=2, **horizon)
    # Tsit5 is FSAL: 6 new stages per attempted step, plus a few (first stage, step-size guess, saved losses).
    assert 0 <= tally.count - 6 * int(traj.stats["num_steps"]) <= 16
