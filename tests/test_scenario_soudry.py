"""scenarios/soudry2018_logistic.py end to end (--quick), checked against an SVM solved here with cvxpy."""

import dataclasses
import json
import pathlib

import cvxpy as cp
import numpy as np
import pytest

from flowsim.harness import _runner, main

SCENARIO = pathlib.Path(__file__).resolve().parents[1] / "scenarios" / "soudry2018_logistic.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("soudry")
    code = main(["run", str(SCENARIO), "--quick", "--strict", "--out", str(root / "runs"),
                 "--figures", str(root / "figs")])
    run_dir = root / "runs" / "soudry2018_logistic-quick"
    return code, run_dir, root / "figs" / "soudry2018_logistic"


def svm_direction(X, y):
    """Hard-margin SVM through the origin, min ‖w‖² s.t. y_i⟨x_i, w⟩ ≥ 1, as a unit vector."""
    w = cp.Variable(X.shape[1])
    cp.Problem(cp.Minimize(cp.sum_squares(w)), [cp.multiply(y, X @ w) >= 1]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return w.value / np.linalg.norm(w.value)


def test_quick_run_holds_its_claims(quick_run):
    code, run_dir, fig_dir = quick_run
    assert code == 0  # --strict: every claim holds and every solve reached its horizon
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["all_claims_hold"] and summary["solver_ok"]
    assert summary["config"]["log_t1"] == 1e3 and summary["quick"] is True
    assert {"flow", "gd"} == set(summary["solver_stats"])
    assert summary["solver_stats"]["flow"]["num_steps"] > 0
    assert [c["name"] for c in summary["claims"]] == ["final_direction_error", "fitted_rate", "final_margin_gap"]
    for name in summary["figures"]["files"]:
        assert (fig_dir / name).stat().st_size > 1000
    assert {"direction_and_margin.png", "direction_and_margin.pdf"} == set(summary["figures"]["files"])


def test_claims_agree_with_an_independent_svm(quick_run):
    _, run_dir, _ = quick_run
    summary = json.loads((run_dir / "summary.json").read_text())
    claims = {c["name"]: c for c in summary["claims"]}
    with np.load(run_dir / "results.npz", allow_pickle=False) as r:
        X, y, log_t, W = r["X"], r["y"], r["flow/log_t"], r["flow/params/layers/0"]
        w_gd = r["gd/params/layers/0"][-1]
        assert bool(r["flow/ok"]) and log_t[-1] == pytest.approx(1e3)
    reference = svm_direction(X, y)
    with np.load(run_dir / "results.npz", allow_pickle=False) as r:
        np.testing.assert_allclose(r["max_margin_direction"], reference, atol=1e-6)
    w = W[-1]
    error = np.linalg.norm(w / np.linalg.norm(w) - reference)
    assert claims["final_direction_error"]["value"] == pytest.approx(error, rel=1e-3, abs=1e-7)
    assert error < 1e-3  # ‖w/‖w‖ − ŵ‖ ≈ C / log t with C of order one
    # The rate, refitted against the independent reference: 1/log t.
    late = log_t >= 30
    errors = np.linalg.norm(W[late] / np.linalg.norm(W[late], axis=1, keepdims=True) - reference, axis=1)
    slope = np.polyfit(np.log(log_t[late]), np.log(errors), 1)[0]
    assert claims["fitted_rate"]["value"] == pytest.approx(slope, abs=1e-3)
    assert slope == pytest.approx(-1.0, abs=0.05)
    # Normalised margin at the horizon against the SVM's.
    margin = np.min(y * (X @ w)) / np.linalg.norm(w)
    gamma = np.min(y * (X @ reference))
    assert claims["final_margin_gap"]["value"] == pytest.approx((gamma - margin) / gamma, rel=1e-3, abs=1e-7)
    # GD heads the same way, but reaches only a small log t in its budget.
    assert np.linalg.norm(w_gd / np.linalg.norm(w_gd) - reference) > error


def test_plot_redraws_without_calling_run(quick_run, monkeypatch, tmp_path, capsys):
    _, run_dir, _ = quick_run
    real_load = _runner.load_scenario

    def load_without_run(path):
        scenario, resolved = real_load(path)

        def run(config):
            raise AssertionError("flowsim plot called the scenario's run")

        return dataclasses.replace(scenario, run=run), resolved

    monkeypatch.setattr(_runner, "load_scenario", load_without_run)
    code = main(["plot", str(run_dir), "--figures", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for ext in ("png", "pdf"):
        assert (tmp_path / "soudry2018_logistic" / f"direction_and_margin.{ext}").stat().st_size > 1000
