"""scenarios/frei2023_leaky_relu_rank.py end to end (--quick --strict), its ranks against dense NumPy SVDs, its
first GD step against a gradient written out by hand, and its config checks."""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

import flowsim as fs
from flowsim.harness import main

SCENARIO = pathlib.Path(__file__).resolve().parents[1] / "scenarios" / "frei2023_leaky_relu_rank.py"
NAME = "frei2023_leaky_relu_rank"


def load_module():
    spec = importlib.util.spec_from_file_location("frei_scenario_under_test", SCENARIO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("frei")
    code = main(["run", str(SCENARIO), "--quick", "--strict", "--out", str(root / "runs"),
                 "--figures", str(root / "figs")])
    run_dir = root / "runs" / f"{NAME}-quick"
    summary = json.loads((run_dir / "summary.json").read_text())
    with np.load(run_dir / "results.npz", allow_pickle=False) as saved:
        results = dict(saved)
    return code, summary, results, root / "figs" / NAME


def stable_rank(W):
    s = np.linalg.svd(W, compute_uv=False)
    return np.sum(s**2, -1) / s[..., 0] ** 2


def test_quick_run_holds_its_claims(quick_run):
    code, summary, _, fig_dir = quick_run
    assert code == 0  # --strict: every claim holds and the flow reached its horizon
    assert summary["all_claims_hold"] and summary["solver_ok"] and summary["quick"] is True
    assert [c["name"] for c in summary["claims"]] == [
        "gf_stable_rank_at_most_2", "gf_kkt_residual_falls", "boundary_agrees_with_l2_max_margin_linear",
        "gd_small_init_collapses_after_one_step", "gd_large_init_keeps_rank_high",
        "gd_collapse_slower_with_larger_init", "gd_collapse_faster_with_larger_d"]
    stats = summary["solver_stats"]["flow"]
    note = summary["claims"][0]["note"]
    assert f"{stats['num_steps']} steps ({stats['num_rejected_steps']} rejected)" in note
    assert f"{stats['kink_crossings']} kink crossings" in note
    assert {"rank_kkt_gd.png", "rank_kkt_gd.pdf"} == set(summary["figures"]["files"])
    for name in summary["figures"]["files"]:
        assert (fig_dir / name).stat().st_size > 1000


def test_gradient_flow_ranks_match_dense_svd(quick_run):
    _, _, r, _ = quick_run
    W = r["flow/params/W"]
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(r["stable_rank"], np.sum(s**2, 1) / s[:, 0] ** 2, rtol=1e-10)
    np.testing.assert_allclose(r["sv_ratios"], s / s[:, :1], rtol=1e-8, atol=1e-14)
    assert r["stable_rank"][-1] <= 2.05 < r["init_stable_rank"]


def test_first_gd_step_matches_a_hand_written_gradient(quick_run):
    """Step 1 of every init scale at the smallest d: W₁ = W₀ − η∇L with ∇_{w_j} L = −(1/n) Σ_i y_i σ(−y_i f_i)
    a_j φ'(⟨w_j, x_i⟩) x_i (σ the logistic function), in NumPy, against the saved stable ranks."""
    _, summary, r, _ = quick_run
    config = summary["config"]
    module = load_module()
    n, m, d, lr = config["n"], config["m"], config["gd_ds"][0], config["gd_lr"]
    X, y = module.mixture(config["seed"], n, d, config["mu_power"])
    base = fs.networks.TwoLayer.init(jax.random.key(config["seed"]), d, m, scale=np.sqrt(2 / (d + m)),
                                     leak=config["leak"], balanced=True)
    a = np.asarray(base.a)
    assert np.allclose(np.abs(a), 1 / np.sqrt(m)) and a.sum() == pytest.approx(0.0)
    for k, scale in enumerate(config["gd_scales"]):
        W0 = scale * np.asarray(base.W)
        Z = W0 @ X.T  # (m, n) pre-activations
        f = a @ np.where(Z > 0, Z, config["leak"] * Z)
        coef = -y / (1 + np.exp(y * f)) / n  # dL/df_i
        grad = (a[:, None] * np.where(Z > 0, 1.0, config["leak"]) * coef[None, :]) @ X
        W1 = W0 - lr * grad
        np.testing.assert_allclose(r["gd/d0/stable_rank"][k, :2], [stable_rank(W0), stable_rank(W1)], rtol=1e-9)
    assert r["gd_steps"][:2].tolist() == [0, 1]


def test_collapse_steps_recounted_from_saved_ranks(quick_run):
    """The claims' trends, recounted with a plain loop over the saved stable ranks."""
    _, summary, r, _ = quick_run
    config = summary["config"]
    tau, K = config["rank_threshold"], int(r["gd_steps"][-1])
    table = np.full((len(config["gd_ds"]), len(config["gd_scales"])), K + 1)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            for step, value in zip(r["gd_steps"], r[f"gd/d{i}/stable_rank"][j], strict=True):
                if value <= tau:
                    table[i, j] = step
                    break
    assert np.all(table[:, 0] == 1) and np.all(table[:, -1] == K + 1)
    assert np.all(np.diff(table, axis=1) >= 0)  # smaller init, faster collapse
    trend = np.asarray(config["gd_scales"]) <= config["gd_trend_max_scale"]
    assert np.all(np.diff(table[:, trend], axis=0) <= 0)  # larger d, faster collapse (up to the paper's init)
    claims = {c["name"]: c for c in summary["claims"]}
    assert claims["gd_collapse_slower_with_larger_init"]["holds"] and claims["gd_collapse_faster_with_larger_d"]["holds"]


def test_full_config_data_is_nearly_orthogonal():
    """min_i ‖x_i‖² / (n·max_{i≠k} |⟨x_i, x_k⟩|) > 1 for the full config's data (the paper's assumption), pair by pair."""
    module = load_module()
    config = module.scenario.config
    X, y = module.mixture(config["seed"], config["n"], config["d"], config["mu_power"])
    n = len(X)
    worst = max(abs(float(X[i] @ X[k])) for i in range(n) for k in range(n) if i != k)
    ratio = min(float(x @ x) for x in X) / (n * worst)
    assert ratio > 2
    assert module.orthogonality(X) == pytest.approx(ratio, rel=1e-12)
    assert config["m"] * config["d"] == 100_000 and sorted(set(y)) == [-1.0, 1.0]


@pytest.mark.parametrize("key, value, match", [
    ("gd_scales", [1e-2, 1e-3], "gd_scales"),
    ("gd_scales", [1e-3], "gd_scales"),
    ("gd_ds", [400, 400], "gd_ds"),
    ("gd_ds", [0, 100], "gd_ds"),
    ("rank_threshold", 0.5, "rank_threshold.*0.5"),
    ("gd_trend_max_scale", 10.0, "gd_trend_max_scale.*10"),
])
def test_bad_config_is_refused_before_any_solve(key, value, match):
    scenario = load_module().scenario
    config = {**scenario.config, **scenario.quick, key: value}
    with pytest.raises(ValueError, match=match):
        scenario.run(config)
