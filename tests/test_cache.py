"""`fs.cache`: a stored solve is replayed bitwise, a call that differs in one array element, one option or the
version is not; damaged entries are refused (never unpickled) and recomputed; `flowsim run` resumes every
scenario — one written only with the iterator `fs.sweep` and default options, SIGKILLed mid-solve, reruns
reusing every finished solve and ends bitwise equal to an uninterrupted run.

The reference for "replayed = computed" and "resumed = uninterrupted" is always a computation of its own (a
fresh solve, a separate uninterrupted process), never stored output.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs
from flowsim import _cache
from flowsim.harness import _store, main
from flowsim.networks import Smoothed

# The problem and options of the scenario below (a shorter horizon, a traced value): the tests share its
# compiled solves.
X, Y = fs.data.separable(20, 4, seed=0, gap=0.2)
OPTIONS = dict(log_t1=4.0)


def _problem(X=X, scale=0.5):
    return fs.Problem(fs.networks.Linear(scale * np.ones(4)), X, Y, loss="logistic")


def _assert_same(a, b):
    """The same pytree (structure, static fields included) with bitwise-equal leaves of the same types."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert type(x) is type(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def _assert_same_numbers(a, b):
    """What was computed is bitwise the same (a recomputed solve: its wall and compile times differ)."""
    _assert_same((a.log_t, a.params, a.final, a.loss, a.log_loss, a.status, a.settings),
                 (b.log_t, b.params, b.final, b.loss, b.log_loss, b.status, b.settings))


def _entries(folder):
    return sorted(p.name for p in folder.glob("*.json"))


def test_a_stored_solve_is_replayed_bitwise_and_other_inputs_are_not(tmp_path, monkeypatch):
    with fs.cache(tmp_path) as store:
        first = fs.simulate(_problem(), **OPTIONS)
    assert (store.computed, store.reused) == (1, 0) and len(_entries(tmp_path)) == 1
    assert not list(tmp_path.glob("*.checkpoint"))  # the automatic checkpoint goes once the entry is stored
    with fs.cache(tmp_path) as store:
        again = fs.simulate(_problem(), progress=False, **OPTIONS)  # progress is not part of the key
    assert (store.computed, store.reused) == (0, 1)
    _assert_same(again, first)
    assert again.info == first.info and again.message == first.message

    nudged = X.copy()
    nudged[3, 1] = np.nextafter(nudged[3, 1], np.inf)  # one element, one ulp
    with fs.cache(tmp_path) as store:
        other_data = fs.simulate(_problem(nudged), **OPTIONS)
        other_option = fs.simulate(_problem(), **dict(OPTIONS, rtol=2e-8))
        monkeypatch.setattr(_cache, "_environment", lambda: ("0.0.0-another-version", "source", ()))
        other_version = fs.simulate(_problem(), **OPTIONS)
    assert (store.computed, store.reused) == (3, 0) and len(_entries(tmp_path)) == 4
    assert other_data.log_loss.tobytes() != first.log_loss.tobytes()
    assert other_option.info["rtol"] == 2e-8
    _assert_same_numbers(other_version, first)  # recomputed: the same numbers, but not taken from the old entry

    monkeypatch.undo()
    count = len(list(tmp_path.iterdir()))
    outside = fs.simulate(_problem(), **OPTIONS)  # outside the with: no cache
    assert len(list(tmp_path.iterdir())) == count and outside.info["resumed_from_log_t"] is None


def test_gradient_descent_is_cached_and_traced_calls_run_uncached(tmp_path):
    with fs.cache(tmp_path) as store:
        gd = fs.gradient_descent(_problem(), lr=0.1, steps=20, n_save=3)
        lrs = jnp.array([0.1, 0.2])
        batched = jax.vmap(lambda lr: fs.gradient_descent(_problem(), lr, 20, 3).log_loss)(lrs)
    assert store.computed == 1 and store.uncached == 1 and len(_entries(tmp_path)) == 1

    class Tagged(eqx.Module):  # a static field known only by its address: the call cannot be keyed
        w: jax.Array
        tag: object = eqx.field(static=True, default_factory=object)

        def __call__(self, x):
            return x @ self.w

    messages = []
    with fs.cache(tmp_path, log=messages.append) as store:
        fs.gradient_descent(fs.Problem(Tagged(np.ones(4)), X, Y, loss="logistic"), lr=0.1, steps=2, n_save=2)
    assert store.uncached == 1 and len(_entries(tmp_path)) == 1
    assert messages == ["flowsim cache: a call of gradient_descent is not cached (its arguments hold a value of type object with no "
                        "stable content (only its address)); it runs as without the cache, and a rerun computes it again"]
    with fs.cache(tmp_path) as store:
        _assert_same(fs.gradient_descent(_problem(), lr=0.1, steps=20, n_save=3), gd)
    assert store.reused == 1
    np.testing.assert_allclose(batched[0], gd.log_loss, rtol=1e-12)  # vmapped: the same run, to rounding


def test_keys_are_content_not_identity():
    key = _cache.call_key("simulate", {"problem": _problem(), "rtol": 1e-8})
    assert key == _cache.call_key("simulate", {"problem": _problem(), "rtol": 1e-8})
    assert key != _cache.call_key("simulate", {"problem": _problem(), "rtol": 1e-8 * (1 + 2**-52)})
    assert key != _cache.call_key("simulate", {"problem": _problem(scale=0.25), "rtol": 1e-8})
    assert key != _cache.call_key("gradient_descent", {"problem": _problem(), "rtol": 1e-8})
    relu = fs.Problem(fs.networks.TwoLayer(np.ones((2, 4)), np.ones(2)), X, Y, loss="logistic")
    leaky = fs.Problem(fs.networks.TwoLayer(np.ones((2, 4)), np.ones(2), leak=0.1), X, Y, loss="logistic")
    assert _cache.call_key("s", {"p": relu}) != _cache.call_key("s", {"p": leaky})  # a static field
    assert _cache.call_key("s", {"f": jax.nn.relu}) != _cache.call_key("s", {"f": jax.nn.gelu})
    assert _cache.call_key("s", {"f": relu.model.apply}) != _cache.call_key("s", {"f": leaky.model.apply})
    assert _cache.call_key("s", {"f": lambda z: 2 * z}) != _cache.call_key("s", {"f": lambda z: 3 * z})
    with pytest.raises(_cache._Uncacheable):
        _cache.call_key("s", {"x": object()})  # only an address in memory: never keyed


def test_batched_trajectories_and_smoothed_limits_are_rebuilt_from_arrays(tmp_path):
    with fs.cache(tmp_path):
        traj = fs.simulate(_problem(), **OPTIONS)
    batch = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), traj, traj)
    arrays = {}
    structure = _cache._encode(batch, arrays, [_problem().model])
    _assert_same(_cache._decode(json.loads(json.dumps(structure)), arrays, [_problem().model]), batch)

    net = fs.networks.TwoLayer(np.ones((2, 4)), np.ones(2))
    smoothed = dataclasses.replace(traj, params=Smoothed(net, 1e-3), final=Smoothed(net, 1e-3))
    limit = fs.SmoothedLimit(log_t=traj.log_t, params=net, final=net, log_loss=traj.log_loss,
                             log_t_reached=traj.log_t_reached, error=np.asarray(1e-9), spread=np.asarray(1e-6),
                             trajectories=(smoothed,), widths=(1e-3,), ok=np.asarray(True), message="all fine")
    templates = _cache._templates("smoothed_limit", {"problem": fs.Problem(net, X, Y, loss="logistic"),
                                                     "widths": (1e-3,)})
    arrays = {}
    structure = _cache._encode(limit, arrays, templates)
    _assert_same(_cache._decode(json.loads(json.dumps(structure)), arrays, templates), limit)


class _Payload:
    """Unpickling this would create a marker file: the proof that a load executed code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_damaged_entries_are_refused_and_recomputed_never_unpickled(tmp_path):
    folder, messages = tmp_path / "cache", []

    def run():
        with fs.cache(folder, log=messages.append) as store:
            result = fs.gradient_descent(_problem(), lr=0.1, steps=20, n_save=3)
        return store, result

    _, reference = run()
    (npz,) = folder.glob("*.npz")
    record = npz.with_suffix(".json")
    marker = tmp_path / "executed"

    def bomb():
        np.savez(npz, a0=np.array([_Payload(str(marker))], dtype=object))
        fields = json.loads(record.read_text())
        record.write_text(json.dumps(dict(fields, sha256=_cache.file_sha256(npz))))

    damages = {
        "truncated": lambda: npz.write_bytes(npz.read_bytes()[:-20]),
        "altered": lambda: npz.write_bytes(npz.read_bytes()[:100] + bytes([npz.read_bytes()[100] ^ 1])
                                           + npz.read_bytes()[101:]),
        "pickle bomb with a matching checksum": bomb,
        "record missing": lambda: record.unlink(),
        "record of other inputs": lambda: record.write_text(record.read_text().replace('"key":"', '"key":"0')),
        "record naming another class": lambda: record.write_text(
            record.read_text().replace('"result":"Trajectory"', '"result":"Popen"')),
        "record not JSON": lambda: record.write_text("{"),
    }
    for what, damage in damages.items():
        damage()
        messages.clear()
        store, result = run()
        assert (store.reused, store.computed, store.refused) == (0, 1, [npz.name]), what
        assert len(messages) == 1 and "refused" in messages[0] and "recomputing" in messages[0], what
        _assert_same_numbers(result, reference)
        store, _ = run()  # the recomputed entry replaces the damaged one
        assert (store.reused, store.computed) == (1, 0), what
    assert not marker.exists()


def test_a_write_cut_short_leaves_no_entry_and_no_partial_file(tmp_path, monkeypatch):
    def crash(file, **arrays):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # as a kill in the middle of writing the arrays

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt), fs.cache(tmp_path):
        fs.gradient_descent(_problem(), lr=0.1, steps=20, n_save=3)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / f".simulate-x.npz.{2**22 + 1}.abc.part").write_bytes(b"a dead process's")  # no such pid
    with fs.cache(tmp_path) as store:
        fs.gradient_descent(_problem(), lr=0.1, steps=20, n_save=3)
    assert (store.computed, store.refused) == (1, []) and len(_entries(tmp_path)) == 1
    assert not list(tmp_path.glob("*.part"))


def test_a_killed_checkpoint_write_is_cleaned_up_and_a_live_one_kept(tmp_path):
    dead = tmp_path / f"simulate-x.checkpoint.{2**22 + 1}.abc.tmp"  # a pid no process has
    live = tmp_path / f"simulate-y.checkpoint.{os.getpid()}.def.tmp"  # a write in flight
    dead.write_bytes(b"cut short")
    live.write_bytes(b"in flight")
    with fs.cache(tmp_path):
        pass
    assert not dead.exists() and live.exists()


def test_a_cache_applies_only_inside_its_block(tmp_path):
    with fs.cache(tmp_path / "outer") as outer:
        with fs.cache(tmp_path / "inner") as inner:
            assert _cache.active_cache() is inner
        assert _cache.active_cache() is outer
    assert _cache.active_cache() is None
    with pytest.raises(ValueError, match="not a folder"):
        (tmp_path / "file").write_text("")
        with fs.cache(tmp_path / "file"):
            pass


# --------------------------------------------------------------------------------------------
# flowsim run: every scenario resumes, with nothing opted in.

PLAIN = '''
import os
import numpy as np
import flowsim as fs

def run(config):
    X, y = fs.data.separable(20, 4, seed=0, gap=0.2)
    flows = {}
    for i, scale in enumerate(fs.sweep((*config["scales"], config["last"]), desc="scale")):
        if i == int(os.environ.get("STOP_AT", "-1")):
            raise KeyboardInterrupt
        problem = fs.Problem(fs.networks.Linear(scale * np.ones(4)), X, y, loss="logistic")
        flows[str(i)] = fs.simulate(problem, log_t1=config["log_t1"])
    return flows

scenario = fs.Scenario(name="plain", title="a sweep written without any resume", reference="-",
                       config={"scales": (0.5, 1.0), "last": 2.0, "log_t1": 3000.0}, run=run)
'''
MAIN = "import sys; from flowsim.harness import main; sys.exit(main(sys.argv[1:]))"


def _results(run_dir):
    """The run's results (checksum verified), less the records of how it went (wall and compile time)."""
    results, _ = _store.load_run(run_dir)
    return {k: v for k, v in results.items() if not k.endswith(("/info", "/stats/wall_time_s"))}


def _assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A folder with the scenario and its uninterrupted run (in this process: later runs here reuse its
    compiled solves)."""
    root = tmp_path_factory.mktemp("plain")
    (root / "plain.py").write_text(PLAIN)
    assert main(["run", str(root / "plain.py"), "--out", str(root / "uninterrupted")]) == 0
    return root


def test_a_plain_scenario_resumes_and_set_runs_reuse_unchanged_solves(plain, monkeypatch, capsys):
    out = plain / "stopped"
    run = ["run", str(plain / "plain.py"), "--out", str(out)]
    cache = out / ".cache" / "plain"
    monkeypatch.setenv("STOP_AT", "2")  # interrupted between the second and the third solve
    assert main(run) == 130
    assert len(_entries(cache)) == 2
    monkeypatch.delenv("STOP_AT")
    capsys.readouterr()
    assert main(run) == 0
    assert "resuming: 2 finished solves reused, 0 continued" in capsys.readouterr().err
    _assert_bitwise_equal(_results(out / "plain"), _results(plain / "uninterrupted" / "plain"))
    _, summary = _store.load_run(out / "plain")
    assert summary["solves"]["reused"] == 2 and summary["solves"]["computed"] == 1

    assert main([*run, "--set", "last=3.0"]) == 0  # a changed input: only the solve it feeds is new
    assert "resuming: 2 finished solves reused, 0 continued" in capsys.readouterr().err
    assert len(_entries(cache)) == 4
    assert main([*run, "--fresh"]) == 0  # --fresh recomputes every solve
    assert "resuming" not in capsys.readouterr().err
    _assert_bitwise_equal(_results(out / "plain"), _results(plain / "uninterrupted" / "plain"))


def test_a_plain_scenario_killed_mid_solve_resumes_to_the_uninterrupted_arrays(plain, monkeypatch, capsys):
    monkeypatch.setenv("FLOWSIM_CHECKPOINT_EVERY_S", "0")  # a checkpoint after every segment
    out = plain / "killed"
    cache = out / ".cache" / "plain"
    env = dict(os.environ, FLOWSIM_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-c", MAIN, "run", "plain.py", "--out", "killed"], cwd=plain, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # a finished solve, and the next one halfway
        if cache.is_dir() and _entries(cache) and list(cache.glob("*.checkpoint")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed mid-solve"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = len(_entries(cache))
    halfway = sum(not p.with_suffix(".json").exists() for p in cache.glob("*.checkpoint"))
    assert finished >= 1 and halfway <= 1
    assert not (out / "plain" / "summary.json").exists()

    # The rerun here keys calls as the killed process did (its flowsim source digest: on a machine where the
    # sources are edited meanwhile, a later import would rightly key them afresh).
    environment = json.loads(next(cache.glob("*.json")).read_text())["environment"]
    monkeypatch.setattr(_cache, "_environment", lambda: (environment["flowsim"], environment["source_sha256"],
                                                         tuple(environment["versions"].items())))
    capsys.readouterr()
    assert main(["run", str(plain / "plain.py"), "--out", str(out)]) == 0
    assert f"resuming: {finished} finished solves reused, {halfway} continued" in capsys.readouterr().err
    _, summary = _store.load_run(out / "plain")
    assert summary["solves"]["reused"] == finished and len(summary["solves"]["continued_from_log_t"]) == halfway
    assert all(t > 0 for t in summary["solves"]["continued_from_log_t"])
    _assert_bitwise_equal(_results(out / "plain"), _results(plain / "uninterrupted" / "plain"))
    assert [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))] == []
    assert not list(cache.glob("*.checkpoint"))
