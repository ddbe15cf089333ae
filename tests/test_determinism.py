"""`solver="auto"` decides on counted work, not the clock: the same call gives bitwise the same result.

Before (issue 19), auto compared measured wall times, so the load of the machine changed where it
switched solvers, and with it the result's bits. The second solve here runs while a busy-loop process
competes for the CPU; the solver path and every saved array must be identical."""

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs


class Linear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.dot(x, self.w)


def stiff_quadratic():
    """Squared loss of a linear model with Hessian eigenvalues from 1 to 10^4: auto starts explicit and
    switches to the implicit solver once the fast modes have decayed."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    X = np.sqrt(6.0) * np.diag(np.sqrt(np.logspace(0, 4, 6))) @ Q.T
    return fs.Problem(Linear(jnp.zeros(6)), X, X @ rng.normal(size=6), "squared")


def arrays(traj):
    stats = {key: value for key, value in traj.stats.items() if key != "wall_time_s"}
    return jax.tree_util.tree_leaves((traj.log_t, traj.params, traj.loss, traj.log_loss, stats, traj.status))


@pytest.fixture(scope="module")
def uninterrupted():
    return fs.simulate(stiff_quadratic(), t1=5.0)  # default options: solver="auto"


def test_auto_gives_bitwise_the_same_result_and_path_under_load(uninterrupted):
    problem = stiff_quadratic()
    first = uninterrupted
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        second = fs.simulate(problem, t1=5.0)
    finally:
        busy.kill()
        busy.wait()
    assert bool(first.ok), first.message
    path = first.info["auto"]
    assert [entry[1] for entry in path][:2] == ["tsit5", "kvaerno5"], path  # auto did switch
    assert second.info["auto"] == path
    for a, b in zip(arrays(first), arrays(second), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_resumed_auto_solve_continues_its_policy_and_ends_bitwise_equal(uninterrupted, tmp_path):
    # Stopped by max_steps just after auto started its implicit trial, then resumed from the checkpoint: the
    # policy's state (the trial in progress, the explicit rate) comes back with the carry, so the resumed solve
    # takes the uninterrupted one's path and bits.
    path = tmp_path / "solve.npz"
    stopped = fs.simulate(stiff_quadratic(), t1=5.0, max_steps=512, checkpoint=path)  # one explicit segment
    assert stopped.status == fs.Status.MAX_STEPS and "kvaerno5" in [e[1] for e in stopped.info["auto"]]
    resumed = fs.simulate(stiff_quadratic(), t1=5.0, checkpoint=path)
    assert resumed.info["resumed_from_log_t"] is not None and bool(resumed.ok), resumed.message
    # The resumed record starts where it resumed, with the solver it resumed with; the switches after agree.
    assert resumed.info["auto"][1:] == tuple(e for e in uninterrupted.info["auto"] if e[0] > resumed.info["auto"][0][0])
    for a, b in zip(arrays(uninterrupted), arrays(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SCENARIO = '''
import numpy as np
import flowsim as fs
from test_determinism import stiff_quadratic


def run(config):
    traj = fs.simulate(stiff_quadratic(), t1=config["t1"])  # default options: solver="auto"
    return {"log_t": traj.log_t, "loss": traj.loss, "w": traj.params.w}


scenario = fs.Scenario(name="stiff", title="auto on a stiff quadratic", reference="-", config={"t1": 5.0},
                       quick={"t1": 4.0}, run=run)
'''


def test_a_scenario_run_twice_gives_bitwise_the_same_results_npz(tmp_path, monkeypatch):
    from flowsim.harness import _store, main

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    (tmp_path / "stiff.py").write_text(SCENARIO)
    assert main(["run", str(tmp_path / "stiff.py"), "--quick", "--out", str(tmp_path / "first")]) == 0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert main(["run", str(tmp_path / "stiff.py"), "--quick", "--out", str(tmp_path / "second")]) == 0
    finally:
        busy.kill()
        busy.wait()
    first, _ = _store.load_run(next((tmp_path / "first").glob("stiff*")))
    second, _ = _store.load_run(next((tmp_path / "second").glob("stiff*")))
    assert sorted(first) == sorted(second) and first
    for key in first:
        a, b = np.asarray(first[key]), np.asarray(second[key])
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key
