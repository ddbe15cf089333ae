"""The kink band is decided once, by the plan, from the model and the solver's tolerances
(`flowsim._nonsmooth.kink_band_of`), and the field, the end-of-solve statistics and
`fs.analysis.kink_statistics` all use that one band.

Oracle: a two-layer net built by hand with one (unit, sample) pair at a known distance from its
kink, between the band of a tight and of a loose solve; the band half-width written out here from
its definition, (kink_atol + kink_rtol‖w_u‖)‖x_i‖, and the plain gradient of the loss (jax.grad, no
kinks in band) against which the field must or must not differ.
"""

import inspect

import equinox as eqx
import jax
import numpy as np
import pytest

import flowsim as fs
from flowsim._nonsmooth import BAND_FACTOR, DEFAULT_ATOL, DEFAULT_RTOL, KinkBand, kink_band_of, kink_statistics
from flowsim._plan import plan

TIGHT, LOOSE = (1e-8, 1e-10), (1e-4, 1e-6)


def one_pair_near_its_kink(**band):
    """Unit 0 at sample 0 sits at |z| = 1e-6·‖w_0‖‖x_0‖: outside the band of rtol 1e-8 (10·1e-8
    relative) and inside that of rtol 1e-4 (10·1e-4); every other pair is far from its kink."""
    rng = np.random.default_rng(3)
    n, d, m, leak = 5, 4, 3, 0.2
    X = rng.standard_normal((n, d))
    y = np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    W = rng.standard_normal((m, d))
    x0 = X[0] / np.linalg.norm(X[0])
    W[0] -= (W[0] @ x0) * x0  # on the kink of sample 0 ...
    W[0] += 1e-6 * np.linalg.norm(W[0]) * x0  # ... then moved off it by 1e-6 relative
    net = fs.networks.TwoLayer(W, np.array([1.0, -1.0, 1.0]) / np.sqrt(m), leak, **band)
    z = X @ W.T
    assert np.sum(np.abs(z) < 1e-2 * np.linalg.norm(W, axis=1) * np.linalg.norm(X, axis=1)[:, None]) == 1
    return fs.Problem(net, X, y, "logistic"), net, X


def field_at_start(the_plan):
    return np.asarray(the_plan.field(0.0, the_plan.theta0))


def test_default_band_is_band_factor_times_the_solvers_tolerances():
    problem, net, X = one_pair_near_its_kink()
    for rtol, atol in (TIGHT, LOOSE):
        band = plan(problem, t1=1.0, rtol=rtol, atol=atol).band
        assert isinstance(band, KinkBand)
        assert float(band.rtol) == BAND_FACTOR * rtol and float(band.atol) == BAND_FACTOR * atol
    # No tolerances: the band of the solve's defaults, which are fs.simulate's and plan's defaults.
    for function in (fs.simulate, plan):
        parameters = inspect.signature(function).parameters
        assert (parameters["rtol"].default, parameters["atol"].default) == (DEFAULT_RTOL, DEFAULT_ATOL)
    default = kink_band_of(net)
    assert (float(default.rtol), float(default.atol)) == (BAND_FACTOR * DEFAULT_RTOL, BAND_FACTOR * DEFAULT_ATOL)
    # The half-width of the pair, from its definition.
    w0, x0 = np.asarray(net.W[0]), X[0]
    expected = (BAND_FACTOR * LOOSE[1] + BAND_FACTOR * LOOSE[0] * np.linalg.norm(w0)) * np.linalg.norm(x0)
    loose = plan(problem, t1=1.0, rtol=LOOSE[0], atol=LOOSE[1]).band
    np.testing.assert_allclose(float(net.kink_widths(x0, loose.rtol, loose.atol)[0]), expected, rtol=1e-14)


def test_the_solvers_tolerances_move_the_band_unless_the_model_fixes_it():
    problem, net, X = one_pair_near_its_kink()
    plain = np.asarray(jax.grad(lambda W: problem.loss_value(eqx.tree_at(lambda t: t.W, net, W)))(net.W)).ravel()
    tight, loose = (plan(problem, t1=1.0, rtol=r, atol=a) for r, a in (TIGHT, LOOSE))
    # Tight: no pair in band, the field is the gradient; loose: the pair is free and the field differs.
    assert int(kink_statistics(net, X, tight.band)["pairs_at_kink"]) == 0
    assert int(kink_statistics(net, X, loose.band)["pairs_at_kink"]) == 1
    np.testing.assert_allclose(-field_at_start(tight)[: plain.size], plain, rtol=1e-12)
    assert np.max(np.abs(field_at_start(loose) - field_at_start(tight))) > 1e-6
    stats = fs.analysis.kink_statistics(problem, rtol=LOOSE[0], atol=LOOSE[1])
    assert int(stats["pairs_at_kink"]) == 1

    # A model that fixes its band (wide enough to hold the pair) ignores the solver's tolerances.
    fixed_problem, fixed_net, _ = one_pair_near_its_kink(kink_rtol=1e-3, kink_atol=1e-8)
    tight, loose = (plan(fixed_problem, t1=1.0, rtol=r, atol=a) for r, a in (TIGHT, LOOSE))
    assert (float(tight.band.rtol), float(tight.band.atol)) == (1e-3, 1e-8)
    np.testing.assert_array_equal(field_at_start(tight), field_at_start(loose))
    assert np.max(np.abs(field_at_start(tight)[: plain.size] + plain)) > 1e-6  # the pair is free in both
    for rtol, atol in (TIGHT, LOOSE):
        assert int(fs.analysis.kink_statistics(fixed_problem, rtol=rtol, atol=atol)["pairs_at_kink"]) == 1


def test_a_traced_band_does_not_recompile_and_vmaps():
    problem, net, X = one_pair_near_its_kink()
    traces = []

    @eqx.filter_jit
    def pairs(rtol):
        traces.append(None)
        return kink_statistics(net, X, plan(problem, t1=1.0, rtol=rtol, atol=1e-10).band)["pairs_at_kink"]

    assert [int(pairs(np.float64(r))) for r in (1e-8, 1e-4)] == [0, 1] and len(traces) == 1
    got = eqx.filter_vmap(lambda r: plan(problem, t1=1.0, rtol=r, atol=1e-10).band.rtol)(np.array([1e-8, 1e-4]))
    np.testing.assert_array_equal(np.asarray(got), BAND_FACTOR * np.array([1e-8, 1e-4]))


def test_make_field_takes_a_band_or_tolerances_not_both():
    from flowsim._flow import make_field

    problem, net, _ = one_pair_near_its_kink()
    band = kink_band_of(net, *LOOSE)
    theta, field = make_field(problem, False, band=band)
    np.testing.assert_array_equal(
        np.asarray(field(0.0, theta)), np.asarray(make_field(problem, False, *LOOSE)[1](0.0, theta))
    )
    with pytest.raises(TypeError, match="not both"):
        make_field(problem, False, 1e-4, band=band)
    with pytest.raises(TypeError, match="got tuple"):
        make_field(problem, False, band=(1e-3, 1e-5))
