"""The gradient-flow engine against independent references: closed forms, an LP, loops."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

import flowsim as fs


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return x @ self.w


class MultiLinear(eqx.Module):
    W: jax.Array  # (d, k)

    def __call__(self, x):
        return x @ self.W


class Diagonal2(eqx.Module):
    u: jax.Array
    v: jax.Array

    def __call__(self, x):
        return jnp.dot(x, self.u * self.v)


class Frozen(eqx.Module):
    w: tuple = eqx.field(static=True)

    def __call__(self, x):
        return x @ jnp.asarray(self.w)


# --- a quadratic loss: L(θ) = (1/2n)‖Xθ − y‖², H = XᵀX/n, θ* = X⁻¹y -------------------------

@pytest.fixture(scope="module")
def quadratic():
    rng = np.random.default_rng(1)
    n = d = 5
    X = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w0 = rng.standard_normal(d)
    H = X.T @ X / n
    theta_star = np.linalg.solve(X, y)
    return fs.Problem(Linear(jnp.asarray(w0)), X, y, loss="squared"), H, theta_star, w0


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5"])
def test_gradient_flow_matches_matrix_exponential(quadratic, solver):
    problem, H, theta_star, w0 = quadratic
    traj = fs.simulate(problem, t1=10.0, solver=solver, rtol=1e-11, atol=1e-13, n_save=30)
    assert bool(traj.ok), traj.message
    times = np.exp(np.asarray(traj.log_t))
    exact = np.stack([theta_star + scipy.linalg.expm(-t * H) @ (w0 - theta_star) for t in times])
    error = np.linalg.norm(np.asarray(traj.params.w) - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert error.max() <= 1e-8
    assert traj.log_t[0] == -np.inf and math.isclose(float(traj.log_t[-1]), math.log(10.0))
    np.testing.assert_allclose(traj.final.w, traj.params.w[-1])


def test_gradient_descent_matches_matrix_power(quadratic):
    problem, H, theta_star, w0 = quadratic
    lr, steps = 0.1, 500
    gd = fs.gradient_descent(problem, lr=lr, steps=steps, n_save=40)
    assert bool(gd.ok)
    ks = np.rint(np.exp(np.asarray(gd.log_t)) / lr).astype(int)
    assert ks[0] == 0 and ks[-1] == steps and np.all(np.diff(ks) > 0)
    exact = np.stack([theta_star + np.linalg.matrix_power(np.eye(len(w0)) - lr * H, k) @ (w0 - theta_star) for k in ks])
    np.testing.assert_allclose(gd.params.w, exact, rtol=0, atol=1e-13)
    residual = np.asarray(problem.X) @ exact.T - np.asarray(problem.y)[:, None]
    np.testing.assert_allclose(gd.loss, 0.5 * np.mean(residual**2, axis=0), rtol=1e-12)


@pytest.mark.parametrize("steps, n_save", [(1, 2), (1, 50), (7, 2), (7, 8), (7, 100), (10_000, 2), (10_000, 300)])
def test_gradient_descent_save_steps_cover_the_run(steps, n_save):
    from flowsim._gd import gd_save_steps

    ks = gd_save_steps(steps, n_save)
    assert ks[0] == 0 and ks[-1] == steps and len(ks) == min(n_save, steps + 1)
    assert np.all(np.diff(ks) > 0)


def test_gradient_descent_divergence_is_reported_not_returned(quadratic):
    problem, H, _, _ = quadratic
    lr = 4.0 / np.linalg.eigvalsh(H).max()  # twice the stability limit 2/λ_max
    gd = fs.gradient_descent(problem, lr=float(lr), steps=5000, n_save=50)
    assert not bool(gd.ok)
    assert "diverged" in gd.message and "smaller lr" in gd.message
    assert np.isnan(np.asarray(gd.loss[-1])) and np.all(np.isnan(np.asarray(gd.final.w)))
    finite = np.isfinite(np.asarray(gd.loss))
    assert finite[0] and not finite[-1]
    assert float(gd.log_t_reached) < float(gd.log_t[-1])


def test_target_log_loss_stops_at_the_crossing(quadratic):
    problem, H, theta_star, w0 = quadratic
    X, y = np.asarray(problem.X), np.asarray(problem.y)

    def log_loss(t):
        theta = theta_star + scipy.linalg.expm(-t * H) @ (w0 - theta_star)
        return math.log(0.5 * np.mean((X @ theta - y) ** 2))

    target = log_loss(0.0) - 6.0
    crossing = scipy.optimize.brentq(lambda t: log_loss(t) - target, 0.0, 1e3, xtol=1e-14)
    traj = fs.simulate(problem, t1=1e3, target_log_loss=target, rtol=1e-10, atol=1e-12)
    assert bool(traj.ok) and "target" in traj.message
    assert math.isclose(math.exp(float(traj.log_t_reached)), crossing, rel_tol=1e-7)
    assert abs(float(traj.log_loss[-1]) - target) < 1e-7
    # save points after the stop hold the stopped state at its own time, never later times
    assert float(np.max(np.asarray(traj.log_t))) == pytest.approx(float(traj.log_t_reached))


def test_target_log_loss_in_log_time_where_the_loss_falls_steeply():
    """Regression in log time, where log L falls ~60 per unit of log t near the target and is
    noisy at round-off: a Newton root find on |log L − target| < atol used to fail there. The
    crossing time is checked with a tight linear-time Tsit5 solve (0.5 in log L ≈ 0.01 in log t)."""
    X, y = fs.data.underdetermined_regression(5, 12, seed=0)
    problem = fs.Problem(fs.networks.Diagonal.init(12, depth=2, scale=0.1, shape="last_zero"), X, y)
    for target, rtol in [(-50.0, 1e-8), (-40.0, 1e-10)]:
        traj = fs.simulate(problem, log_t1=100.0, target_log_loss=target, rtol=rtol, atol=rtol * 1e-2)
        assert bool(traj.ok) and traj.status == fs.Status.TARGET_REACHED, traj.message
        assert abs(float(traj.log_loss[-1]) - target) < 1e-4
    check = fs.simulate(problem, t1=math.exp(float(traj.log_t_reached)), solver="tsit5", rtol=1e-12, atol=1e-14,
                        max_steps=1_000_000)
    assert abs(float(check.log_loss[-1]) + 40.0) < 0.5


def test_multi_output_regression_matches_matrix_exponential():
    rng = np.random.default_rng(3)
    n = d = 4
    X, Y, W0 = rng.standard_normal((n, d)), rng.standard_normal((n, 2)), rng.standard_normal((d, 2))
    traj = fs.simulate(fs.Problem(MultiLinear(jnp.asarray(W0)), X, Y), t1=3.0, rtol=1e-11, atol=1e-13)
    H, W_star = X.T @ X / n, np.linalg.solve(X, Y)
    np.testing.assert_allclose(traj.final.W, W_star + scipy.linalg.expm(-3.0 * H) @ (W0 - W_star), rtol=1e-8)


# --- closed forms for one parameter: exact in log time, even at t = e^(10^6) ---------------

def test_exponential_loss_closed_form_at_astronomical_horizon():
    # f(x) = w x, one sample x = y = 1, ℓ = e^{-w}: w' = e^{-w}, so w(t) = log(e^{w0} + t).
    w0 = 0.3
    problem = fs.Problem(Linear(jnp.asarray([w0])), np.ones((1, 1)), np.ones(1), loss="exponential")
    traj = fs.simulate(problem, log_t1=1e6, n_save=40)
    assert bool(traj.ok), traj.message
    log_t = np.asarray(traj.log_t)
    exact = np.logaddexp(w0, log_t)
    np.testing.assert_allclose(np.asarray(traj.params.w[:, 0]), exact, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(traj.log_loss), -exact, rtol=1e-8)
    assert float(traj.loss[-1]) == 0.0 and np.all(np.isfinite(np.asarray(traj.log_loss)))


def test_logistic_loss_closed_form_in_log_time():
    # ℓ = log(1 + e^{-w}): w' = 1/(1 + e^w), so w + e^w = w0 + e^{w0} + t.
    w0 = -0.5
    problem = fs.Problem(Linear(jnp.asarray([w0])), np.ones((1, 1)), np.ones(1), loss="logistic")
    traj = fs.simulate(problem, log_t1=300.0, n_save=30)
    assert bool(traj.ok)
    constant = w0 + math.exp(w0)
    for log_t, w in zip(np.asarray(traj.log_t)[1:], np.asarray(traj.params.w[1:, 0])):
        t = math.exp(log_t)
        upper = math.log(constant + t + 100.0) + 1.0
        exact = scipy.optimize.brentq(lambda v: v + math.exp(v) - constant - t, -100.0, upper, xtol=1e-14, rtol=1e-15)
        assert abs(w - exact) <= 1e-7 * max(1.0, abs(exact))


def test_log_time_and_linear_time_agree():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((10, 20)), np.sign(rng.standard_normal(10))
    problem = fs.Problem(Diagonal2(0.3 * jnp.ones(20), 0.2 * jnp.ones(20)), X, y, loss="logistic")
    grid = np.linspace(-2.0, 6.0, 9)
    linear = fs.simulate(problem, t1=math.exp(6.0), save_log_t=grid, solver="tsit5", rtol=1e-10, atol=1e-12)
    log = fs.simulate(problem, log_t1=6.0, save_log_t=grid, solver="kvaerno5", rtol=1e-10, atol=1e-12)
    assert bool(linear.ok) and bool(log.ok)
    np.testing.assert_allclose(linear.log_t, log.log_t, rtol=1e-12)
    # Newton stops at 100× the step tolerances (see _solvers.py), so Kvaerno5 carries ~1e-7 here at rtol 1e-10.
    np.testing.assert_allclose(linear.params.u, log.params.u, rtol=3e-7, atol=1e-9)
    np.testing.assert_allclose(linear.log_loss, log.log_loss, rtol=1e-7)


# --- the long horizon of science.md §2 -------------------------------------------------------

def test_diagonal_network_reaches_sign_constrained_l1_max_margin():
    """Depth-2 diagonal net, balanced init: β = u ⊙ v stays ≥ 0, so the limit is the
    sign-constrained ℓ1 max-margin direction (science.md §2). Directional convergence is
    logarithmically slow and its speed depends on the instance; on this 10×20 instance the
    flow is within 4e-5 at log t = 10^6 (1.1e-4 at 2·10^5)."""
    rng = np.random.default_rng(2)
    n, d = 10, 20
    X, y = rng.standard_normal((n, d)), np.sign(rng.standard_normal(n))
    problem = fs.Problem(Diagonal2(0.1 * jnp.ones(d), 0.1 * jnp.ones(d)), X, y, loss="logistic")
    traj = fs.simulate(problem, log_t1=1e6, n_save=20, solver="kvaerno5")
    assert bool(traj.ok), traj.message
    assert np.all(np.isfinite(np.asarray(traj.log_loss))) and float(traj.log_loss[-1]) < -1e5
    lp = scipy.optimize.linprog(np.ones(d), A_ub=-(y[:, None] * X), b_ub=-np.ones(n),
                                bounds=[(0, None)] * d, method="highs")
    assert lp.status == 0
    reference = lp.x / np.linalg.norm(lp.x)
    beta = np.asarray(traj.final.u * traj.final.v)
    assert 1.0 - beta @ reference / np.linalg.norm(beta) <= 2e-4
    assert int(traj.stats["num_steps"]) < 10_000


def test_tight_tolerances_do_not_stall_linear_logistic_regression_at_long_horizons():
    """Linear logistic regression to log t = 10^6 at rtol = 1e-10 (Soudry et al. 2018: w/‖w‖
    tends to the ℓ2 max-margin direction). An absolute Newton residual test once stalled this
    solve at log t ≈ 2·10^5; the direction is compared with an SVM solved here by SLSQP."""
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal(5)
    X = rng.standard_normal((200, 5))
    X = X[np.abs(X @ teacher) >= 0.2 * np.linalg.norm(teacher)][:40]
    y = np.sign(X @ teacher)
    problem = fs.Problem(Linear(jnp.zeros(5)), X, y, loss="logistic")
    traj = fs.simulate(problem, log_t1=1e6, rtol=1e-10, atol=1e-12, n_save=5)
    assert bool(traj.ok), traj.message
    assert int(traj.stats["num_steps"]) < 5_000
    svm = scipy.optimize.minimize(lambda w: w @ w, teacher, jac=lambda w: 2 * w, method="SLSQP",
                                  constraints=[{"type": "ineq", "fun": lambda w: y * (X @ w) - 1,
                                                "jac": lambda w: y[:, None] * X}], options={"ftol": 1e-15})
    reference = svm.x / np.linalg.norm(svm.x)
    w = np.asarray(traj.final.w)
    assert np.linalg.norm(w / np.linalg.norm(w) - reference) < 1e-5


# --- jit, vmap, progress, failures -----------------------------------------------------------

@pytest.fixture(scope="module")
def diagonal_problem_maker():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((10, 20)), np.sign(rng.standard_normal(10))

    def make(scale):
        return fs.Problem(Diagonal2(scale * jnp.ones(20), scale * jnp.ones(20)), X, y, loss="logistic")

    return make


def test_vmapped_batch_equals_loop_with_own_steps_and_ok(diagonal_problem_maker):
    scales = jnp.array([0.05, 0.5])
    # The solver is named: under vmap "auto" cannot measure and uses a fixed rule, eagerly it measures.
    batch = eqx.filter_vmap(lambda a: fs.simulate(diagonal_problem_maker(a), log_t1=300.0, n_save=10,
                                                  solver="kvaerno5"))(scales)
    assert batch.log_t.shape == (2, 10) and batch.final.u.shape == (2, 20)
    singles = [fs.simulate(diagonal_problem_maker(float(a)), log_t1=300.0, n_save=10, solver="kvaerno5")
               for a in scales]
    for i, single in enumerate(singles):
        np.testing.assert_allclose(batch.params.u[i], single.params.u, rtol=1e-10, atol=1e-12)
        assert int(batch.stats["num_steps"][i]) == int(single.stats["num_steps"])
    assert int(singles[0].stats["num_steps"]) != int(singles[1].stats["num_steps"])
    assert np.all(np.asarray(batch.ok))
    # each member keeps its own ok: a step budget between the two members' needs fails one
    budget = (int(singles[0].stats["num_steps"]) + int(singles[1].stats["num_steps"])) // 2
    capped = eqx.filter_vmap(
        lambda a: fs.simulate(diagonal_problem_maker(a), log_t1=300.0, n_save=10, max_steps=budget, solver="kvaerno5")
    )(scales)
    needs = [int(s.stats["num_steps"]) for s in singles]
    np.testing.assert_array_equal(np.asarray(capped.ok), [n <= budget for n in needs])
    assert "max_steps" in capped.message and "member" in capped.message


def test_vmap_over_stacked_problems_with_different_datasets_equals_loop():
    """design.md: a Problem is a pytree, so stacked problems (here: different datasets) vmap."""
    rng = np.random.default_rng(5)
    problems = [fs.Problem(Linear(jnp.zeros(3)), rng.standard_normal((6, 3)), np.sign(rng.standard_normal(6)),
                           loss="logistic") for _ in range(3)]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *problems)
    batch = eqx.filter_vmap(lambda p: fs.simulate(p, log_t1=8.0, n_save=6, solver="kvaerno5"))(stacked)
    for i, problem in enumerate(problems):
        single = fs.simulate(problem, log_t1=8.0, n_save=6, solver="kvaerno5")
        np.testing.assert_allclose(batch.params.w[i], single.params.w, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batch.log_loss[i], single.log_loss, rtol=1e-10)


def test_jit_equals_eager_and_progress_shows_log_t(diagonal_problem_maker, capsys):
    problem = diagonal_problem_maker(0.1)
    eager = fs.simulate(problem, log_t1=50.0, n_save=8, solver="kvaerno5")
    jitted = jax.jit(lambda p: fs.simulate(p, log_t1=50.0, n_save=8, solver="kvaerno5", progress=True).log_loss)(problem)
    np.testing.assert_allclose(jitted, eager.log_loss, rtol=1e-12)
    assert "%" in capsys.readouterr().err  # under jit: Diffrax's bar, in per cent of the solver's time s
    fs.simulate(problem, log_t1=50.0, n_save=8, progress=True)
    assert "log t =" in capsys.readouterr().err  # eagerly: a bar in log t, drawn between segments
    assert math.isnan(float(jax.jit(lambda p: fs.simulate(p, log_t1=5.0).stats["wall_time_s"])(problem)))
    assert float(eager.stats["wall_time_s"]) > 0


def test_max_steps_failure_is_reported_with_where_it_stopped(diagonal_problem_maker):
    traj = fs.simulate(diagonal_problem_maker(0.1), log_t1=1e4, max_steps=5)
    assert not bool(traj.ok)
    assert "max_steps = 5" in traj.message and "log t =" in traj.message
    assert float(traj.log_t_reached) < 1e4
    assert float(np.max(np.asarray(traj.log_t))) == pytest.approx(float(traj.log_t_reached))


def test_krylov_newton_matches_dense_newton(diagonal_problem_maker):
    problem = diagonal_problem_maker(0.2)
    dense = fs.simulate(problem, log_t1=20.0, linear_solver="dense", rtol=1e-10, atol=1e-12, n_save=5)
    krylov = fs.simulate(problem, log_t1=20.0, linear_solver="krylov", rtol=1e-10, atol=1e-12, n_save=5)
    assert bool(dense.ok) and bool(krylov.ok)
    assert dense.info["linear_solver"] == "dense" and krylov.info["linear_solver"] == "krylov"
    np.testing.assert_allclose(krylov.params.u, dense.params.u, rtol=1e-7)


# --- losses ----------------------------------------------------------------------------------

def test_logistic_log_loss_is_finite_and_accurate_where_the_loss_underflows():
    margins = np.array([-50.0, -1.0, 0.0, 1.0, 29.9, 30.1, 100.0, 800.0, 1e6])
    log_loss = np.asarray(fs.Logistic().log_loss_of_margin(jnp.asarray(margins)))
    assert np.all(np.isfinite(log_loss))
    moderate = margins < 700
    np.testing.assert_allclose(log_loss[moderate], np.log(np.log1p(np.exp(-margins[moderate]))), rtol=1e-13)
    np.testing.assert_allclose(log_loss[~moderate], -margins[~moderate], rtol=1e-15)
    assert float(fs.Logistic().loss_of_margin(jnp.asarray(800.0))) == 0.0


# --- bad input is refused before anything compiles ------------------------------------------

@pytest.fixture(scope="module")
def good():
    return Linear(jnp.ones(3)), np.eye(3), np.array([1.0, -1.0, 1.0])


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda m, X, y: (m, X.at[0, 0].set(jnp.nan) if isinstance(X, jax.Array) else np.where(X == 1, np.nan, X), y),
         ValueError, "X contains .* non-finite"),
        (lambda m, X, y: (m, X, np.array([1.0, np.inf, 1.0])), ValueError, "y contains"),
        (lambda m, X, y: (m, X[:2], y), ValueError, "X has 2 samples but y has 3"),
        (lambda m, X, y: (m, X[0], y), ValueError, r"X must have shape \(n, d\)"),
        (lambda m, X, y: (m, X, np.array([1.0, 0.0, 1.0])), ValueError, "labels ±1"),
        (lambda m, X, y: (Frozen((1.0, 1.0, 1.0)), X, y), ValueError, "no trainable arrays"),
        (lambda m, X, y: (Linear(jnp.ones(4)), X, y), ValueError, "cannot be applied"),
        (lambda m, X, y: (m, X, np.ones((3, 2))), ValueError, "output for one input has shape"),
        (lambda m, X, y: ("not a model", X, y), TypeError, "equinox.Module"),
    ],
)
def test_problem_refuses_bad_input(good, change, error, match):
    model, X, y = change(*good)
    with pytest.raises(error, match=match):
        fs.Problem(model, X, y, loss="logistic")


def test_problem_promotes_single_precision_parameters_to_float64():
    problem = fs.Problem(Linear(jnp.ones(3, dtype=jnp.float32)), np.eye(3, dtype=np.float32), np.ones(3))
    assert problem.model.w.dtype == jnp.float64 and problem.X.dtype == jnp.float64


def test_problem_refuses_unknown_loss(good):
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*'exponential', 'logistic', 'squared'"):
        fs.Problem(*good, loss="hinge")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(), ValueError, "exactly one horizon"),
        (dict(t1=1.0, log_t1=1.0), ValueError, "exactly one horizon"),
        (dict(t1=0.0), ValueError, "t1 must be positive"),
        (dict(t1=-3.0), ValueError, "t1 must be positive"),
        (dict(t1=float("inf")), ValueError, "t1 must be positive and finite"),
        (dict(log_t1=float("nan")), ValueError, "log_t1 must be a finite"),
        (dict(t1=1.0, solver="euler"), ValueError, "unknown solver 'euler'.*kvaerno5"),
        (dict(t1=1.0, rtol=0.0), ValueError, "rtol must be positive"),
        (dict(t1=1.0, atol=-1e-9), ValueError, "atol must be positive"),
        (dict(t1=1.0, n_save=1), ValueError, "n_save must be an integer ≥ 2"),
        (dict(t1=1.0, max_steps=0), ValueError, "max_steps must be an integer ≥ 1"),
        (dict(t1=1.0, time="physical"), ValueError, "time must be"),
        (dict(log_t1=1e6, time="linear"), ValueError, "beyond what linear time can represent"),
        (dict(t1=1.0, target_log_loss=float("nan")), ValueError, "target_log_loss"),
        (dict(t1=1.0, linear_solver="lu"), ValueError, "unknown linear_solver"),
        (dict(t1=1.0, save_log_t=[0.0, -1.0]), ValueError, "strictly increasing"),
        (dict(t1=1.0, save_log_t=[0.0, 1.0]), ValueError, "beyond the horizon"),
        (dict(t1="10"), TypeError, "t1 must be a real number"),
    ],
)
def test_simulate_refuses_bad_options(good, kwargs, error, match):
    problem = fs.Problem(*good, loss="logistic")
    with pytest.raises(error, match=match):
        fs.simulate(problem, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0, steps=10), "lr must be positive"),
        (dict(lr=float("nan"), steps=10), "lr must be positive"),
        (dict(lr=0.1, steps=0), "steps must be an integer ≥ 1"),
        (dict(lr=0.1, steps=10, n_save=1), "n_save must be an integer ≥ 2"),
    ],
)
def test_gradient_descent_refuses_bad_options(good, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fs.gradient_descent(fs.Problem(*good, loss="logistic"), **kwargs)


def test_simulate_refuses_a_non_problem():
    with pytest.raises(TypeError, match="flowsim.Problem"):
        fs.simulate(Linear(jnp.ones(2)), t1=1.0)
