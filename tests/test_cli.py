"""The `flowsim` CLI end to end on small numpy-only scenarios written into a temporary folder."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flowsim.harness import main
from flowsim.harness._cli import _num, failure_lines

# A scenario as someone who only read design.md would write it. `run` counts its calls in a file.
DECAY = '''
import pathlib
import numpy as np
import matplotlib.pyplot as plt
import flowsim as fs

CALLS = pathlib.Path(__file__).with_suffix(".calls")

def run(config):
    CALLS.write_text(str(int(CALLS.read_text()) + 1 if CALLS.exists() else 1))
    t = np.linspace(0.0, config["t1"], config["n"])
    return {"t": t, "y": np.exp(-config["rate"] * t), "info": {"rate": config["rate"]}}

def claims(results, config):
    return [fs.Claim.at_most("final", results["y"][-1], config["threshold"], "y(t1) = exp(-rate t1)"),
            fs.Claim("rate_read_back", results["info/rate"], config["rate"], True)]

def plot(results, config):
    fig, ax = plt.subplots()
    ax.semilogy(results["t"], results["y"])
    return {"decay": fig}

scenario = fs.Scenario(name="NAME", title="Exponential decay", reference="calculus",
                       config={"n": 200, "t1": 5.0, "rate": 1.0, "threshold": 0.01, "tags": ("a", "b")},
                       quick={"n": 20}, run=run, claims=claims, plot=plot)
'''


def write_scenario(folder, name="decay", body=DECAY):
    path = folder / f"{name}.py"
    path.write_text(body.replace("NAME", name))
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scenarios").mkdir()
    return tmp_path


def test_run_then_plot_without_recomputing(project, capsys):
    path = write_scenario(project / "scenarios")
    code, out, err = run_cli(capsys, "run", path, "--quick", "--set", "rate=2", "--out", project / "runs",
                             "--figures", project / "figs")
    assert code == 0, err
    assert "holds  final" in out and "wall time" in out and "Traceback" not in out + err
    (run,) = (project / "runs").glob("decay-quick-set-*")  # an overridden run has its own folder
    assert "the full run is untouched" in out and not (project / "runs/decay-quick").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scenario"]["name"] == "decay" and summary["quick"] is True
    assert summary["config"] == {"n": 20, "t1": 5.0, "rate": 2.0, "threshold": 0.01, "tags": ["a", "b"]}
    assert summary["overrides"] == {"rate": 2.0}
    assert {"python", "flowsim", "jax", "numpy"} <= set(summary["versions"])
    assert summary["wall_time_s"]["total"] >= 0
    final = summary["claims"][0]
    assert final["name"] == "final" and final["threshold"] == 0.01
    assert final["value"] == pytest.approx(np.exp(-2.0 * 5.0), rel=1e-12) and final["holds"] is True
    with np.load(run / "results.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["t"], np.linspace(0.0, 5.0, 20))
        assert float(data["info/rate"]) == 2.0
    png, pdf = project / "figs/decay/decay.png", project / "figs/decay/decay.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert summary["figures"]["files"] == ["decay.png", "decay.pdf"]

    png.unlink()
    pdf.unlink()
    code, out, err = run_cli(capsys, "plot", run, "--figures", project / "figs")
    assert code == 0, err
    assert png.exists() and pdf.exists()
    assert run_cli(capsys, "plot", run)[0] == 0  # by default into the run folder itself
    assert (run / "figures/decay.png").exists()
    assert (project / "scenarios/decay.calls").read_text() == "1"  # plot never called run


def test_only_the_showcase_or_an_explicit_figures_folder_writes_figures(project, capsys):
    """The committed figures/ are those of the full showcase runs: `--quick`, `--all` and single runs
    draw into their run folder, and only `--showcase` (full) or `--figures figures` writes figures/."""
    path = write_scenario(project / "scenarios")
    assert run_cli(capsys, "run", path, "--quick")[0] == 0
    assert (project / "runs/decay-quick/figures/decay.png").exists()
    assert run_cli(capsys, "run", path)[0] == 0
    assert run_cli(capsys, "run", "--all")[0] == 0
    assert run_cli(capsys, "run", "--showcase", "--quick")[0] == 0
    assert (project / "runs/decay/figures/decay.png").exists() and not (project / "figures").exists()
    assert run_cli(capsys, "run", "--showcase")[0] == 0  # the main command draws the committed figures
    assert (project / "figures/decay/decay.png").exists()
    (project / "figures/decay/decay.png").unlink()
    assert run_cli(capsys, "plot", project / "runs/decay", "--figures", "figures")[0] == 0
    assert (project / "figures/decay/decay.png").exists()


def test_set_runs_go_to_their_own_folder_and_say_how_claims_are_judged(project, capsys):
    path = write_scenario(project / "scenarios")
    assert run_cli(capsys, "run", path)[0] == 0
    full = (project / "runs/decay/summary.json").read_bytes()
    code, out, _ = run_cli(capsys, "run", path, "--set", "t1=1", "rate=0.5")
    assert code == 0
    assert (project / "runs/decay/summary.json").read_bytes() == full  # the full run is untouched
    (run,) = (project / "runs").glob("decay-set-*")
    assert str(run.relative_to(project)) in out and "judged at the changed settings" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["overrides"] == {"t1": 1.0, "rate": 0.5} and "not the paper's claim" in summary["claims_judged"]
    assert run_cli(capsys, "run", path, "--set", "rate=0.5", "t1=1.0")[0] == 0  # same values: same folder
    assert len(list((project / "runs").glob("decay-set-*"))) == 1


def test_scenario_by_name_and_moved_scenario_files(project, capsys):
    write_scenario(project / "scenarios")
    assert run_cli(capsys, "run", "decay", "--quick")[0] == 0  # resolves ./scenarios/decay.py
    moved = project / "elsewhere.py"
    (project / "scenarios/decay.py").rename(moved)
    code, _, err = run_cli(capsys, "plot", project / "runs/decay-quick")
    assert code == 2 and "--scenario FILE" in err and "no known scenario named 'decay'" in err
    assert run_cli(capsys, "plot", project / "runs/decay-quick", "--scenario", moved)[0] == 0


def test_strict_turns_a_failing_claim_into_exit_1(project, capsys):
    path = write_scenario(project / "scenarios")
    code, out, _ = run_cli(capsys, "run", path, "--quick", "--set", "threshold=1e-6")
    assert code == 0 and "FAILS  final" in out and "1 of 2 claim(s) FAIL" in out
    code, out, _ = run_cli(capsys, "run", path, "--quick", "--set", "threshold=1e-6", "--strict")
    assert code == 1


def test_run_all_and_list(project, capsys):
    write_scenario(project / "scenarios", "alpha")
    write_scenario(project / "scenarios", "beta")
    (project / "scenarios" / "_helpers.py").write_text("raise RuntimeError('not a scenario')\n")
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "alpha" in out and "beta" in out and "Exponential decay" in out and "_helpers" not in out
    code, out, _ = run_cli(capsys, "run", "--all", "--quick")
    assert code == 0 and "2 scenario(s)" in out
    assert (project / "runs/alpha-quick/summary.json").exists() and (project / "runs/beta-quick/summary.json").exists()

    (project / "scenarios" / "broken.py").write_text("import flowsim as fs\n\nx = 1 / 0\n")
    code, out, err = run_cli(capsys, "run", "--all", "--quick")
    assert code == 2 and "broken.py:3" in err and "ERROR" in out
    assert "Traceback" not in err


def test_run_all_names_each_failure_with_its_value_and_threshold(project, capsys):
    write_scenario(project / "scenarios", "alpha")
    write_scenario(project / "scenarios", "tight", DECAY.replace('"threshold": 0.01', '"threshold": 1e-9'))
    code, out, err = run_cli(capsys, "run", "--all", "--quick")
    assert code == 0 and "1 claim(s) FAIL" in out and "FAILED (1):" in out
    value = _num(np.exp(-5.0))
    assert f"  tight: claim final FAILS: value {value}, threshold 1.000e-09 — y(t1) = exp(-rate t1)" in out
    assert "--strict exits 1" in err
    code, out, err = run_cli(capsys, "run", "--all", "--quick", "--strict")
    assert code == 1 and "FAILED (1):" in out


def test_failed_solves_are_named_with_member_and_message():
    summary = {"claims": [], "failed": [{"result": "depth4/flow", "member": 3, "status": "MAX_STEPS_REACHED",
                                         "message": "ran out of steps at log t = 12\nraise max_steps"}]}
    assert failure_lines(summary) == ["depth4/flow, run 3 did not converge (max steps reached): ran out of steps at log t = 12"]
    summary["failed"][0]["shown_as"] = "depth 4, seed 3"  # the name the figures give it (the runner sets it)
    assert failure_lines(summary) == ["depth 4, seed 3 did not converge (max steps reached): ran out of steps at log t = 12"]


def test_showcase_runs_only_the_marked_scenarios(project, capsys):
    write_scenario(project / "scenarios", "alpha")
    write_scenario(project / "scenarios", "slow", DECAY.replace("quick={\"n\": 20}", "quick={\"n\": 20}, showcase=False"))
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "slow  (" in out and "[not in --showcase]" in out
    code, out, _ = run_cli(capsys, "run", "--showcase", "--quick")
    assert code == 0 and "--showcase --quick: 1 scenario(s)" in out
    assert (project / "runs/alpha-quick/summary.json").exists() and not (project / "runs/slow-quick").exists()
    code, out, _ = run_cli(capsys, "run", "--all", "--quick")
    assert code == 0 and "2 scenario(s)" in out and (project / "runs/slow-quick/summary.json").exists()
    (project / "scenarios" / "alpha.py").unlink()
    code, _, err = run_cli(capsys, "run", "--showcase", "--quick")
    assert code == 2 and "no showcase scenarios" in err


# --------------------------------------------------------------------------------------------
# Errors: one message, exit code 2, no traceback wall.


CRASH = '''
import numpy as np
import flowsim as fs

def run(config):
    x = np.ones(3)
    return {"x": x @ np.ones(config["n"])}

scenario = fs.Scenario(name="crash", title="t", reference="r", config={"n": 4}, run=run)
'''


@pytest.mark.parametrize(
    "setup, argv, words",
    [
        (None, ["run", "nowhere.py"], "no scenario file 'nowhere.py'"),
        (DECAY, ["run", "scenarios/bda.py"], "no scenario file 'scenarios/bda.py'; did you mean scenarios/bad.py?"),
        (DECAY, ["run", "bda"], "did you mean scenarios/bad.py?"),
        (DECAY, ["run", "{file}", "--quick", "--set", "n=many"], "n expects an integer (quick value 20, full default "
                                                                  "200)"),
        ("import flowsim as fs\nx = 1\n", ["run", "{file}"], "defines no `scenario`"),
        ("scenario = 3\n", ["run", "{file}"], "`scenario` is a int, expected an fs.Scenario"),
        ("def run(:\n", ["run", "{file}"], "{name}:1: SyntaxError"),
        (CRASH, ["run", "{file}"], "{name}:7 in run(): ValueError"),
        (DECAY, ["run", "{file}", "--set", "rat=2"], "valid keys: n, rate, t1, tags, threshold"),
        (DECAY, ["run", "{file}", "--set", "n=many"], "n expects an integer (default 200); 'many' is not an integer"),
        (DECAY, ["run", "{file}", "--set", "n"], "expected key=value"),
        (None, ["run"], "give either a scenario FILE, --all or --showcase"),
        (None, ["run", "--all", "--showcase"], "give --all (every scenario) or --showcase"),
        ("import flowsim as fs\nscenario = fs.Scenario(name='s', title='t', reference='r', config={}, "
         "run=lambda c: {}, showcase='yes')\n", ["run", "{file}"], "showcase must be True or False, got 'yes'"),
        (None, ["plot", "runs/none"], "no run folder 'runs/none'"),
        (None, ["run", "--all", "--dir", "nope"], "no scenario folder 'nope'"),
    ],
)
def test_errors_are_one_message_with_exit_code_2(project, capsys, setup, argv, words):
    file = project / "scenarios" / "bad.py"
    if setup is not None:
        file.write_text(setup.replace("NAME", "bad"))
    argv = [a.format(file=file) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert words.format(name="scenarios/bad.py") in err
    assert "Traceback" not in err and err.count("\n") <= 4


def test_debug_shows_the_traceback(project, capsys):
    file = write_scenario(project / "scenarios", "crash", CRASH)
    code, _, err = run_cli(capsys, "--debug", "run", file)
    assert code == 2 and "Traceback" in err and "crash.py:7" in err


def test_incomplete_run_folders_are_refused(project, capsys):
    path = write_scenario(project / "scenarios")
    assert run_cli(capsys, "run", path, "--quick")[0] == 0
    run = project / "runs/decay-quick"
    data = (run / "results.npz").read_bytes()
    (run / "results.npz").write_bytes(data[:100])
    code, _, err = run_cli(capsys, "plot", run)
    assert code == 2 and "does not match its checksum" in err and "Traceback" not in err

    # A run interrupted after saving results (here: claims crash) leaves no summary.json behind.
    path.write_text(DECAY.replace("NAME", "decay").replace("def claims(results, config):",
                                                          "def claims(results, config):\n    raise KeyboardInterrupt"))
    code, _, err = run_cli(capsys, "run", path, "--quick")
    assert code == 130
    assert (run / "results.npz").exists() and not (run / "summary.json").exists()
    code, _, err = run_cli(capsys, "plot", run)
    assert code == 2 and "interrupted" in err


def test_console_script_reports_file_and_line(tmp_path):
    file = write_scenario(tmp_path, "crash", CRASH)
    exe = os.path.join(os.path.dirname(sys.executable), "flowsim")
    proc = subprocess.run([exe, "run", str(file), "--out", str(tmp_path / "runs")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "crash.py:7 in run(): ValueError" in proc.stderr and "Traceback" not in proc.stderr
    assert 'x @ np.ones(config["n"])' in proc.stderr  # the offending line, quoted


VMAPPED = '''
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import flowsim as fs

def run(config):
    X = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([1.0, -1.0])
    problems = eqx.filter_vmap(lambda a: fs.Problem(fs.networks.Linear(a * jnp.ones(2)), X, y, loss="logistic"))
    batch = eqx.filter_vmap(lambda p: fs.simulate(p, log_t1=5.0, n_save=4))(problems(jnp.array([0.1, 0.2])))
    return {"batch": batch}

def claims(results, config):
    return [fs.Claim.at_most("final_log_loss", results["batch/log_loss"][:, -1].max(), -1.0, "both members trained")]

scenario = fs.Scenario(name="NAME", title="a vmapped batch", reference="-", config={}, quick={},
                       run=run, claims=claims, plot=lambda results, config: {})
'''


def test_a_vmapped_batch_of_trajectories_is_stored_and_summarised(project, capsys):
    """Under vmap a solve cannot time itself (wall_time_s is NaN): the summary says so instead of crashing."""
    path = write_scenario(project / "scenarios", "batch", VMAPPED)
    code, out, err = run_cli(capsys, "run", path, "--strict")
    assert code == 0, err
    assert "over 2 runs" in out and "time not measured" in out
    summary = json.loads((project / "runs" / "batch" / "summary.json").read_text())
    assert summary["solver_ok"] is True
    assert np.load(project / "runs" / "batch" / "results.npz", allow_pickle=False)["batch/log_t"].shape == (2, 4)


def test_failed_solves_are_named_as_the_figures_name_them(tmp_path):
    import matplotlib.pyplot as plt

    import flowsim as fs
    from flowsim.harness import describe_solves
    from flowsim.harness._runner import draw_figures

    def plot(results, config):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0], label="depth 4")
        return {"f": describe_solves(fig, lambda result, member: f"depth 4, seed {member}")}

    failures = [{"result": "scale0/depth4/flow", "member": 3, "status": "MAX_STEPS", "message": "out of steps"}]
    scenario = fs.Scenario(name="s", title="t", reference="r", config={}, run=lambda c: {}, plot=plot)
    draw_figures(scenario, tmp_path / "s.py", {}, {}, tmp_path / "figs", failures)
    assert failures[0]["shown_as"] == "depth 4, seed 3"  # what the summary (and its FAILED lines) say
    summary = {"claims": [], "failed": failures}
    assert failure_lines(summary) == ["depth 4, seed 3 did not converge (max steps): out of steps"]
    no_plot = fs.Scenario(name="s", title="t", reference="r", config={}, run=lambda c: {})
    failures = [{"result": "scale0/depth4/flow", "member": 3, "status": "MAX_STEPS", "message": ""}]
    draw_figures(no_plot, tmp_path / "s.py", {}, {}, tmp_path / "figs", failures)
    assert failures[0]["shown_as"] == "scale0 depth4, run 3"  # no store ids with '/' or '[…]'
