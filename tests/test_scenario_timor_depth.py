"""scenarios/timor2023_rank_vs_depth.py: the teacher–student data, the rank measures against dense SVDs, the
min-norm bound's denominator against an explicit interpolating network, and the quick run end to end."""

import importlib.util
import pathlib

import numpy as np
import pytest

import flowsim as fs
from flowsim.harness import main

SCENARIO = pathlib.Path(__file__).resolve().parents[1] / "scenarios" / "timor2023_rank_vs_depth.py"


def load_scenario():
    spec = importlib.util.spec_from_file_location("timor_depth", SCENARIO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_student_data():
    X, y, U, a = fs.data.relu_teacher_student(30, 6, width=3, seed=4)
    assert X.shape == (30, 6) and y.shape == (30,) and U.shape == (3, 6) and a.shape == (3,)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(U @ U.T, np.eye(3), atol=1e-14)
    np.testing.assert_array_equal(a, [1.0, -1.0, 1.0])
    by_hand = [sum(a[j] * max(float(U[j] @ x), 0.0) for j in range(3)) for x in X]
    np.testing.assert_allclose(y, by_hand, rtol=1e-13, atol=1e-15)
    X2, y2, _, _ = fs.data.relu_teacher_student(30, 6, width=3, seed=4)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(n=10, d=3, width=4), ValueError, "width must be at most d = 3.*got 4"),
    (dict(n=0, d=3), ValueError, "n"),
    (dict(n=10, d=3, width=2.5), TypeError, "width must be an integer.*2.5"),
])
def test_teacher_student_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        fs.data.relu_teacher_student(**kwargs)


def test_layer_ratios_match_dense_svd():
    module = load_scenario()
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((3, 7, 8, 5)), rng.standard_normal((3, 7, 8, 8)), rng.standard_normal((3, 7, 8))]
    sr, ratio = module.layer_ratios(layers)
    assert sr.shape == ratio.shape == (3, 7, 3)
    for l, W in enumerate(layers[:2]):
        s = np.linalg.svd(W, compute_uv=False)
        np.testing.assert_allclose(sr[..., l], (s**2).sum(-1) / s[..., 0] ** 2, rtol=1e-12)
        np.testing.assert_allclose(ratio[..., l], s[..., 0] / np.linalg.norm(W, axis=(-2, -1)), rtol=1e-12)
    np.testing.assert_allclose(sr[..., 2], 1.0, rtol=1e-14)  # a vector layer has stable rank 1


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_bound_denominator_is_an_explicit_interpolant(depth):
    """The teacher padded with identity layers I₂ interpolates at depth L, and the product of its layers'
    Frobenius norms is P·2^((L−2)/2) with P = 2: the bound is (ρ / that)^(1/L)."""
    module = load_scenario()
    X, y, U, a = fs.data.relu_teacher_student(20, 5, width=2, seed=0)
    layers = [U] + [np.eye(2)] * (depth - 2) + [a]
    net = fs.networks.MLP(layers)
    np.testing.assert_allclose(fs.Problem(net, X, y).predictions(), y, atol=1e-14)
    product = np.prod([np.linalg.norm(W) for W in layers])
    np.testing.assert_allclose(product, 2.0 * 2.0 ** ((depth - 2) / 2), rtol=1e-14)
    rho = np.max(np.abs(y) / np.linalg.norm(X, axis=1))
    assert module.min_norm_bound(depth, rho) == pytest.approx((rho / product) ** (1 / depth), rel=1e-14)
    # A single-unit chain fitting y = relu(x₁) on x = e₁ is its own min-norm solution: every ratio is 1 = the bound.
    assert module.min_norm_bound(depth, 1.0, path_norm=1.0, teacher_width=1) == pytest.approx(1.0)


def test_quick_run_end_to_end(tmp_path):
    """--quick --strict exits 0; the saved stable ranks, recomputed here by dense SVD, give the claimed medians."""
    code = main(["run", str(SCENARIO), "--quick", "--strict", "--out", str(tmp_path / "runs"),
                 "--figures", str(tmp_path / "figs")])
    assert code == 0
    with np.load(tmp_path / "runs" / "timor2023_rank_vs_depth-quick" / "results.npz") as saved:
        r = dict(saved)
    module = load_scenario()
    config = {**module.scenario.config, **module.scenario.quick}
    for L in config["depths"]:
        g = f"scale0/depth{L}/flow"
        converged = r[f"{g}/status"] == int(fs.Status.TARGET_REACHED)
        assert np.all(r[f"{g}/log_loss"][converged, -1] <= np.log(config["target_loss"]) + 1e-12)
        hidden = []
        for l in range(L - 1):
            s = np.linalg.svd(r[f"{g}/params/layers/{l}"][:, -1], compute_uv=False)
            hidden.append((s**2).sum(-1) / s[:, 0] ** 2)
        expected = np.median(np.mean(hidden, 0)[converged])
        assert module.hidden_medians(r, config, 0)[L][0] == pytest.approx(expected, rel=1e-10)
    names = {p.name for p in (tmp_path / "figs" / "timor2023_rank_vs_depth").iterdir()}
    assert {"stable_rank_along_t.png", "stable_rank_vs_depth.png"} <= names
