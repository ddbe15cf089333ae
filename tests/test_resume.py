"""Resuming `flowsim run`, and nothing lost or faked: a run killed with SIGKILL mid-sweep and rerun ends with
the arrays of an uninterrupted run; two runs give bitwise-identical arrays; tampered files are refused without
unpickling anything; failed batch members are reported as failed.

The reference for "resumed = uninterrupted" is a separate uninterrupted run in its own process, never stored
output. Arrays that record how a run went rather than what it computed are left out of the comparisons:
`*/stats/wall_time_s` and `*/info` (compile time, where a solve resumed).
"""

import json
import os
import signal
import subprocess
import sys
import time

import matplotlib
import numpy as np
import pytest

import flowsim as fs
from flowsim.harness import Resume, StoreError, _plotting, _store, main
from flowsim.harness._work import value_key

matplotlib.use("Agg")

# A sweep of slow-ish solves (about a second each once compiled: ~20k Tsit5 steps in log time), each
# checkpointed after every segment, and a log line each time a member starts computing.
SWEEP = '''
import pathlib
import numpy as np
import flowsim as fs

LOG = pathlib.Path(__file__).with_suffix(".log")

def solve(scale, config, resume):
    with LOG.open("a") as f:
        f.write(f"{scale}\\n")
    X, y = fs.data.separable(20, 4, seed=config["seed"], gap=0.2)
    problem = fs.Problem(fs.networks.Linear(scale * np.ones(4)), X, y, loss="logistic")
    flow = fs.simulate(problem, log_t1=config["log_t1"], solver="tsit5", n_save=20, max_steps=10**6,
                       checkpoint=resume.checkpoint("flow", scale), checkpoint_every_s=0.0)
    return {"flow": flow, "final_log_loss": flow.log_loss[-1]}

def run(config, resume=None):
    members = fs.sweep(config["scales"], "scale", each=lambda s: solve(s, config, resume), cache=resume)
    return {"scale": {str(i): m for i, m in enumerate(members)}}

def claims(results, config):
    worst = max(results[f"scale/{i}/final_log_loss"] for i in range(len(config["scales"])))
    return [fs.Claim.at_most("trained", worst, -10.0, "every member's final log loss")]

scenario = fs.Scenario(name="sweep", title="a resumable sweep", reference="-",
                       config={"seed": 0, "log_t1": 3000.0, "scales": (0.5, 1.0, 2.0)}, run=run, claims=claims)
'''
MAIN = "import sys; from flowsim.harness import main; sys.exit(main(sys.argv[1:]))"
ENV = dict(os.environ, FLOWSIM_PROGRESS="0")


def _flowsim(folder, *argv):
    return subprocess.Popen([sys.executable, "-c", MAIN, *map(str, argv)], cwd=folder, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _arrays(run_dir):
    """The run's results as `flowsim plot` reads them (checksum verified), less the records of how it went."""
    results, _ = _store.load_run(run_dir)
    return {k: v for k, v in results.items() if not k.endswith(("/info", "/stats/wall_time_s"))}


def _assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), key  # bitwise, NaNs included


def _assert_complete(folder):
    """Every file is whole: temporaries of interrupted writes aside, each .npz/.checkpoint loads entirely
    (no pickle), each .json parses, and each sweep member matches the checksum in its record."""
    for path in folder.rglob("*"):
        if path.is_dir() or path.name.endswith((".part", ".tmp")):
            continue
        if path.suffix in (".npz", ".checkpoint"):
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    data[key]
        elif path.suffix == ".json":
            record = json.loads(path.read_text())
            if "sha256" in record and path.with_suffix(".npz").exists():
                assert _store.sha256(path.with_suffix(".npz")) == record["sha256"], path


@pytest.fixture(scope="module")
def sweep_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.py").write_text(SWEEP)
    proc = _flowsim(root, "run", "sweep.py", "--out", "uninterrupted", "--strict")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (root / "sweep.log").unlink()
    return root


def test_killed_mid_sweep_resumes_to_the_uninterrupted_arrays(sweep_project):
    root = sweep_project
    work = root / "killed" / "sweep" / "work"
    proc = _flowsim(root, "run", "sweep.py", "--out", "killed")
    deadline = time.monotonic() + 240
    # Kill once a member has finished and a later member's solve has written a checkpoint.
    while time.monotonic() < deadline and proc.poll() is None:
        members = list(work.glob("scale-*.json")) if work.is_dir() else []
        if members and len(list(work.glob("flow-*.checkpoint"))) > len(members):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed mid-sweep"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = len(list(work.glob("scale-*.json")))
    assert 1 <= finished < 3
    assert not (root / "killed" / "sweep" / "summary.json").exists()
    _assert_complete(root / "killed")
    started_before = (root / "sweep.log").read_text().split()

    proc = _flowsim(root, "run", "sweep.py", "--out", "killed", "--strict")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"resuming the interrupted run in {os.path.join('killed', 'sweep', 'work')}: {finished} finished sweep " \
           "member(s)" in err
    started_after = (root / "sweep.log").read_text().split()[len(started_before):]
    scales = ["0.5", "1.0", "2.0"]
    assert started_after == scales[finished:]  # finished members are loaded, not recomputed
    results, summary = _store.load_run(root / "killed" / "sweep")
    interrupted = json.loads(str(results[f"scale/{finished}/flow/info"]))
    assert interrupted["resumed_from_log_t"] is not None and interrupted["resumed_from_log_t"] > 0
    assert summary["resumed"]["sweep_members"] == finished
    assert not work.exists()  # a finished run keeps no work to resume

    _assert_bitwise_equal(_arrays(root / "killed" / "sweep"), _arrays(root / "uninterrupted" / "sweep"))
    leftovers = [p for p in (root / "killed").rglob("*") if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []
    _assert_complete(root / "killed")


def test_the_same_scenario_and_seed_give_bitwise_identical_arrays(sweep_project):
    proc = _flowsim(sweep_project, "run", "sweep.py", "--out", "again")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _assert_bitwise_equal(_arrays(sweep_project / "again" / "sweep"),
                          _arrays(sweep_project / "uninterrupted" / "sweep"))


# --------------------------------------------------------------------------------------------
# Resuming in-process: a numpy-only sweep interrupted by KeyboardInterrupt at a chosen member.

COUNTING = '''
import os
import pathlib
import numpy as np
import flowsim as fs

LOG = pathlib.Path(__file__).with_suffix(".log")

def member(k, config):
    if k == int(os.environ.get("STOP_AT", "-1")):
        raise KeyboardInterrupt
    with LOG.open("a") as f:
        f.write(f"{k}\\n")
    return {"square": np.asarray(k * k * config["factor"]), "label": f"member {k}"}

def run(config, resume=None):
    members = fs.sweep(range(config["n"]), "k", each=lambda k: member(k, config), cache=resume)
    return {"k": {str(i): m for i, m in enumerate(members)}}

scenario = fs.Scenario(name="counting", title="t", reference="r", config={"n": 5, "factor": 1.0}, quick={"n": 2},
                       run=run)
'''


@pytest.fixture
def counting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counting.py").write_text(COUNTING)
    return tmp_path


def _started(folder):
    return [int(k) for k in (folder / "counting.log").read_text().split()]


def test_a_rerun_resumes_and_fresh_starts_over(counting, monkeypatch, capsys):
    monkeypatch.setenv("STOP_AT", "3")
    assert main(["run", "counting.py"]) == 130
    assert "Run the same command again to resume it" in capsys.readouterr().err
    monkeypatch.delenv("STOP_AT")
    assert main(["run", "counting.py"]) == 0
    assert "3 finished sweep member(s)" in capsys.readouterr().err
    assert _started(counting) == [0, 1, 2, 3, 4]
    results, summary = _store.load_run(counting / "runs" / "counting")
    assert [float(results[f"k/{i}/square"]) for i in range(5)] == [0.0, 1.0, 4.0, 9.0, 16.0]
    assert str(results["k/2/label"]) == "member 2" and summary["resumed"]["sweep_members"] == 3

    assert main(["run", "counting.py"]) == 0  # a finished run is recomputed, not resumed
    assert "resuming" not in capsys.readouterr().err and _started(counting)[5:] == [0, 1, 2, 3, 4]

    monkeypatch.setenv("STOP_AT", "2")
    assert main(["run", "counting.py"]) == 130
    monkeypatch.delenv("STOP_AT")
    assert main(["run", "counting.py", "--fresh"]) == 0
    assert "resuming" not in capsys.readouterr().err and _started(counting)[10:] == [0, 1, 0, 1, 2, 3, 4]


def test_partial_work_from_another_config_or_file_is_refused(counting, monkeypatch, capsys):
    monkeypatch.setenv("STOP_AT", "3")
    assert main(["run", "counting.py"]) == 130
    monkeypatch.delenv("STOP_AT")
    capsys.readouterr()
    # --set runs in its own folder, so it neither refuses nor touches the interrupted full run ...
    assert main(["run", "counting.py", "--set", "factor=2"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert (counting / "runs" / "counting" / "work").is_dir()
    (counting / "counting.py").write_text(COUNTING.replace('"factor": 1.0', '"factor": 1.5'))
    assert main(["run", "counting.py"]) == 2
    assert "an earlier version of the scenario file" in capsys.readouterr().err
    assert main(["run", "counting.py", "--fresh"]) == 0


def test_quick_runs_have_their_own_folder(counting, capsys):
    assert main(["run", "counting.py"]) == 0
    assert main(["run", "counting.py", "--quick"]) == 0
    full, _ = _store.load_run(counting / "runs" / "counting")
    quick, summary = _store.load_run(counting / "runs" / "counting-quick")
    assert len([k for k in full if k.endswith("/square")]) == 5 and summary["quick"] is True
    assert len([k for k in quick if k.endswith("/square")]) == 2


def test_sweep_without_a_folder_returns_what_a_stored_sweep_returns(tmp_path):
    def each(k):
        return {"x": np.arange(3.0) * k, "n": k}

    plain = fs.sweep([1, 2], "k", each=each)
    stored = fs.sweep([1, 2], "k", each=each, cache=Resume(tmp_path))
    loaded = fs.sweep([1, 2], "k", each=lambda k: pytest.fail("recomputed"), cache=Resume(tmp_path))
    for a, b, c in zip(plain, stored, loaded, strict=True):
        assert a.keys() == b.keys() == c.keys() == {"x", "n"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
            assert type(a[key]) is type(c[key])
    assert [float(m["n"]) for m in plain] == [1.0, 2.0]
    assert list(fs.sweep([3, 4])) == [3, 4]  # the plain iterator is unchanged


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(cache=Resume()), ValueError, "needs each="),
        (dict(each=3), TypeError, "each must be a function"),
        (dict(each=lambda v: {}, cache="runs/x"), TypeError, "cache must be the `resume`"),
        (dict(each=lambda v: {}, cache="DIR", desc=None), ValueError, "needs desc="),
        (dict(each=lambda v: [v]), StoreError, "must return a dict"),
    ],
)
def test_bad_sweep_arguments_are_refused(tmp_path, kwargs, error, words):
    if kwargs.get("cache") == "DIR":
        kwargs["cache"] = Resume(tmp_path)
    kwargs.setdefault("desc", "v")
    with pytest.raises(error, match=words):
        fs.sweep([1.0], **kwargs)


def test_value_keys_are_stable_and_refuse_what_has_no_stable_value():
    keys = [value_key(v) for v in (1, 1.0, 0.1, "0.1", (0.1,), [0.1], np.asarray([0.1]), np.asarray([0.1, 0.2]),
                                   {"a": 1}, None, True)]
    assert len(set(keys)) == len(keys)
    model = fs.networks.Linear(np.ones(3))
    assert value_key(model) == value_key(fs.networks.Linear(np.ones(3))) != value_key(fs.networks.Linear(np.zeros(3)))
    with pytest.raises(StoreError, match=r"object.*has no stable key"):
        value_key(object())


# --------------------------------------------------------------------------------------------
# Loading never unpickles or executes anything.


class _Payload:
    """Unpickling this would create a marker file: the proof that a load executed code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_npz(path, marker):
    np.savez(path, x=np.array([_Payload(str(marker))], dtype=object))


def test_tampered_results_and_sweep_members_are_refused_without_unpickling(counting, capsys):
    marker = counting / "executed"
    assert main(["run", "counting.py"]) == 0
    run = counting / "runs" / "counting"
    # results.npz replaced by a pickle bomb, with its checksum updated to match: numpy refuses the pickle.
    _evil_npz(run / "results.npz", marker)
    summary = json.loads((run / "summary.json").read_text())
    summary["results"]["sha256"] = _store.sha256(run / "results.npz")
    _store.write_summary(run / "summary.json", summary)  # re-sealed: anyone can recompute the seal
    with pytest.raises(StoreError, match=r"cannot be read.*allow_pickle=False"):
        _store.load_run(run)
    # ... and altered bytes without the checksum updated.
    assert main(["run", "counting.py"]) == 0
    data = bytearray((run / "results.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "results.npz").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["plot", str(run)]) == 2
    assert "does not match its checksum" in capsys.readouterr().err

    # A cached sweep member: altered (checksum refused), or a pickle bomb with a matching record (numpy refuses).
    resume = Resume(counting / "cache")
    fs.sweep([1, 2], "k", each=lambda k: {"x": np.arange(4.0) * k}, cache=resume)
    member = resume._member("k", 1)
    member.write_bytes(member.read_bytes()[:-10])
    with pytest.raises(StoreError, match="does not match its checksum"):
        fs.sweep([1, 2], "k", each=lambda k: {}, cache=resume)
    _evil_npz(member, marker)
    record = json.loads(member.with_suffix(".json").read_text())
    member.with_suffix(".json").write_text(json.dumps(dict(record, sha256=_store.sha256(member))))
    with pytest.raises(StoreError, match="cannot be read"):
        fs.sweep([1, 2], "k", each=lambda k: {}, cache=resume)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Failed batch members are marked failed, with their messages, in results, summary, screen and figures.

FAILING = '''
import equinox as eqx
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import flowsim as fs

def run(config):
    X = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([1.0, -1.0])
    problem = fs.Problem(fs.networks.Linear(jnp.full(2, 0.1)), X, y, loss="logistic")
    solve = lambda rtol: fs.simulate(problem, log_t1=3.0, n_save=5, rtol=rtol, solver="tsit5")
    return {"batch": eqx.filter_vmap(solve)(jnp.array([1e-8, -1.0, 1e-6]))}

def plot(results, config):
    fig, ax = plt.subplots()
    fs.harness.plot_members(ax, results["batch/log_t"], results["batch/log_loss"], results["batch/ok"], color="C0")
    return {"losses": fig}

scenario = fs.Scenario(name="failing", title="t", reference="r", config={}, run=run, plot=plot)
'''


def test_a_failed_batch_member_is_reported_as_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "failing.py").write_text(FAILING)
    assert main(["run", "failing.py", "--strict"]) == 1  # a failed solve fails --strict
    out = capsys.readouterr().out
    assert "FAILED     batch, run 1 did not converge (invalid input): refused before solving" in out
    assert "1 solve(s) did NOT reach their horizon" in out and "NOT OK (1 of 3)" in out
    results, summary = _store.load_run(tmp_path / "runs" / "failing")
    assert results["batch/ok"].tolist() == [True, False, True]
    assert results["batch/message"].shape == (3,) and results["batch/message"][0] == ""
    assert "rtol/atol must be positive" in results["batch/message"][1]
    assert summary["solver_ok"] is False
    assert [(f["result"], f["member"], f["status"]) for f in summary["failed"]] == [("batch", 1, "INVALID_INPUT")]
    assert summary["failed"][0]["message"] == results["batch/message"][1]
    assert summary["solver_stats"]["batch"]["ok"] == [True, False, True]


def test_figure_helpers_show_failed_members_distinctly():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    x = np.linspace(0, 1, 5)
    n_failed = _plotting.plot_members(ax, x, np.stack([x, 2 * x, 3 * x]), [True, False, True], color="C0",
                                      label="converged")
    assert n_failed == 1
    lines = ax.get_lines()
    assert [line.get_linestyle() for line in lines] == ["-", "-", ":"]
    np.testing.assert_array_equal(lines[2].get_ydata(), 2 * x)  # the failed member, drawn dotted grey
    assert lines[2].get_label() == "did not converge" and lines[0].get_label() == "converged"
    _plotting.note_failures(fig, [{"result": "batch", "member": 1, "status": "MAX_STEPS", "message": "…"}])
    assert any("NOT CONVERGED: batch, run 1 (max steps)" in t.get_text() for t in fig.texts)
    plt.close(fig)


def test_a_fresh_process_keeps_matplotlib_settings_and_computes_the_same_keys():
    """Importing flowsim (or drawing in its style) leaves matplotlib's global settings alone; sweep keys are the
    same in another process (Python's hash() is salted per process, these are not)."""
    code = "\n".join([
        "import matplotlib as mpl",
        "before = dict(mpl.rcParams)",
        "import flowsim",
        "from flowsim.harness import _plotting",
        "from flowsim.harness._work import value_key",
        "assert dict(mpl.rcParams) == before, 'changed by import'",
        "with _plotting.style():",
        "    assert mpl.rcParams['figure.constrained_layout.use']",
        "assert dict(mpl.rcParams) == before, 'changed by drawing'",
        "print(value_key(0.1, 'α', (1, 2)))",
    ])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == value_key(0.1, "α", (1, 2))
