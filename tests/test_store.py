"""The results store, the Claim/Scenario records and `--set` parsing.

Reloaded arrays are compared with what was written (read back with plain `numpy.load`,
allow_pickle=False), not with earlier output of the store.
"""

import dataclasses
import json
import math
import os
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsim as fs
from flowsim.harness import _store
from flowsim.harness._scenario import ScenarioError, parse_override, parse_set_args
from flowsim.harness._store import StoreError


def _write_run(run_dir, arrays):
    """A finished run folder holding `arrays`, as the runner writes it."""
    _store.start_run(run_dir)
    digest = _store.save_arrays(run_dir / _store.RESULTS_FILE, arrays)
    _store.write_summary(run_dir / _store.SUMMARY_FILE, {"format": _store.FORMAT, "results": {
        "file": _store.RESULTS_FILE, "sha256": digest}})


def test_arrays_round_trip_without_pickle(tmp_path):
    written = {
        "x": np.linspace(0.0, 1.0, 7),
        "ints": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "scalar": np.float64(math.pi),
        "label": np.asarray("gradient flow"),
        "nested/deep/w": np.eye(3),
    }
    arrays, stats = _store.flatten_results({
        "x": written["x"], "ints": written["ints"], "mask": written["mask"].tolist(), "scalar": math.pi,
        "label": "gradient flow", "nested": {"deep": {"w": jnp.eye(3)}},
    })
    assert stats == {}
    path = tmp_path / "results.npz"
    _store.save_arrays(path, arrays)
    with np.load(path, allow_pickle=False) as data:  # plain numpy, pickle refused
        assert sorted(data.files) == sorted(written)
        for key, value in written.items():
            np.testing.assert_array_equal(data[key], value)
            assert data[key].dtype.kind == np.asarray(value).dtype.kind
    loaded = _store.load_arrays(path)
    assert loaded["scalar"] == math.pi and np.ndim(loaded["scalar"]) == 0
    assert str(loaded["label"]) == "gradient flow"


def test_trajectory_is_flattened_with_stats(tmp_path):
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = np.array([1.0, -1.0, 1.0])
    problem = fs.Problem(fs.networks.Linear(jnp.zeros(2)), X, y, loss="logistic")
    gd = fs.gradient_descent(problem, lr=0.5, steps=50, n_save=10)
    arrays, stats = _store.flatten_results({"run": {"gd": gd}})
    for field in ("log_t", "loss", "log_loss", "ok"):
        np.testing.assert_array_equal(arrays[f"run/gd/{field}"], np.asarray(getattr(gd, field)))
    np.testing.assert_array_equal(arrays["run/gd/params/layers/0"], np.asarray(gd.params.layers[0]))
    assert arrays["run/gd/params/layers/0"].shape == (len(gd.log_t), 2)
    assert set(stats) == {"run/gd"}
    for key in ("num_steps", "num_rejected_steps", "wall_time_s"):
        assert stats["run/gd"][key] == pytest.approx(float(gd.stats[key]))
        assert f"run/gd/stats/{key}" in arrays
    assert stats["run/gd"]["ok"] is True
    assert str(arrays["run/gd/message"]) == "" and int(arrays["run/gd/status"]) == int(fs.Status.HORIZON_REACHED)
    assert json.loads(str(arrays["run/gd/info"]))["lr"] == 0.5 == stats["run/gd"]["metadata"]["lr"]
    json.dumps(_store.to_jsonable(stats), allow_nan=False)  # summary-ready


class _Scaled(eqx.Module):
    """A model with a function and a float among its fields: neither is data, neither is stored."""

    w: jax.Array
    activation: object
    scale: float

    def __call__(self, x):
        return self.scale * self.activation(x @ self.w)


def test_a_models_functions_and_python_numbers_are_not_stored():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    problem = fs.Problem(_Scaled(jnp.full(2, 0.1), jnp.tanh, 2.0), X, np.array([1.0, -1.0, 1.0]), loss="logistic")
    gd = fs.gradient_descent(problem, lr=0.1, steps=20, n_save=5)
    arrays, _ = _store.flatten_results({"gd": gd})
    assert [k for k in arrays if "/params" in k] == ["gd/params/w"]
    np.testing.assert_array_equal(arrays["gd/params/w"], np.asarray(gd.params.w))


@pytest.mark.parametrize(
    "results, words",
    [
        ({"a": np.array([object()])}, "without pickle"),
        ({"a": [np.zeros(2), np.zeros(3)]}, "'a'"),
        ({"a": None}, "None"),
        ({"a/b": 1.0, "a": {"b": 2.0}}, "both stored as 'a/b'"),
        ({"": 1.0}, "non-empty"),
        ([1, 2], "dict"),
    ],
)
def test_unstorable_results_are_refused_in_words(results, words):
    with pytest.raises(StoreError, match=words.replace("(", r"\(")):
        _store.flatten_results(results)


def test_interrupted_write_leaves_previous_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "results.npz"
    _store.save_arrays(path, {"x": np.arange(3.0)})
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        _store.save_arrays(path, {"x": np.arange(1e6)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.npz"]


def test_load_run_refuses_incomplete_folders(tmp_path):
    with pytest.raises(StoreError, match="no run folder"):
        _store.load_run(tmp_path / "missing")

    run = tmp_path / "run"
    _write_run(run, {"x": np.arange(1000.0)})
    np.testing.assert_array_equal(_store.load_run(run)[0]["x"], np.arange(1000.0))

    data = (run / "results.npz").read_bytes()
    (run / "results.npz").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(StoreError, match="checksum"):
        _store.load_run(run)

    (run / "results.npz").write_bytes(data)
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[: len(text) // 2])  # truncated summary
    with pytest.raises(StoreError, match="not valid JSON"):
        _store.load_run(run)

    (run / "summary.json").unlink()  # results without summary: an interrupted run
    with pytest.raises(StoreError, match="interrupted"):
        _store.load_run(run)


def _reseal(run, edit):
    """Edit a run's summary.json and recompute its digest, as someone crafting a folder could."""
    summary = json.loads((run / "summary.json").read_text())
    edit(summary)
    _store.write_summary(run / "summary.json", summary)


def test_an_edited_summary_is_refused_naming_the_file(tmp_path):
    run = tmp_path / "run"
    _write_run(run, {"x": np.arange(3.0)})
    summary = json.loads((run / "summary.json").read_text())
    assert summary["summary_sha256"] == _store.summary_digest(summary)
    summary["results"]["extra"] = 1  # any change of content, here one the loader does not even read
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(StoreError, match=r"run/summary.json was edited after the run wrote it"):
        _store.load_run(run)
    del summary["summary_sha256"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(StoreError, match="carries no summary_sha256"):
        _store.load_run(run)
    # the digest covers the results' checksum, so replacing results.npz needs an edited summary too
    _write_run(run, {"x": np.arange(3.0)})
    _store.save_arrays(run / "results.npz", {"x": np.zeros(3)})
    with pytest.raises(StoreError, match="does not match its checksum"):
        _store.load_run(run)


@pytest.mark.parametrize("field, value", [
    ("results.file", "../../x/results.npz"),
    ("results.file", "/etc/passwd"),
    ("figures.dir", "/tmp/elsewhere"),
    ("figures.dir", "figures/../../../x"),
    ("results.file", ""),
])
def test_every_path_a_run_folder_names_stays_inside_it(tmp_path, field, value):
    outside = tmp_path / "x"
    outside.mkdir()
    _write_run(outside, {"x": np.zeros(2)})  # a real results.npz that ../../x/results.npz would reach
    run = tmp_path / "a" / "run"
    _write_run(run, {"x": np.arange(3.0)})
    section, key = field.split(".")

    def edit(summary):
        summary.setdefault(section, {})[key] = value
        if section == "results":
            summary["results"]["sha256"] = _store.sha256(outside / "results.npz")

    _reseal(run, edit)
    with pytest.raises(StoreError, match=rf"{field} .*(outside the run folder|must be a path inside)"):
        _store.load_run(run)


def test_a_link_out_of_the_run_folder_is_refused(tmp_path):
    outside = tmp_path / "x"
    _write_run(outside, {"x": np.zeros(2)})
    run = tmp_path / "run"
    _write_run(run, {"x": np.arange(3.0)})
    (run / "results.npz").unlink()
    (run / "results.npz").symlink_to(outside / "results.npz")
    _reseal(run, lambda s: s["results"].update(sha256=_store.sha256(outside / "results.npz")))
    with pytest.raises(StoreError, match="outside the run folder"):
        _store.load_run(run)


def test_a_second_writer_of_a_run_folder_is_refused_while_the_first_holds_it(tmp_path):
    """`flock` locks belong to an open file, so a second `locked` in this process is refused like another
    process would be (test_security runs two real `flowsim run`s); the lock is free again afterwards."""
    run = tmp_path / "run"
    with _store.locked(run):
        with pytest.raises(StoreError, match=re.escape(f"another flowsim run (process {os.getpid()}) is writing {run}")):
            with _store.locked(run):
                pass
    with _store.locked(run):  # released when the first writer finished
        pass


def test_starting_a_run_removes_the_old_summary_first(tmp_path):
    run = tmp_path / "run"
    _write_run(run, {"x": np.zeros(2)})
    _store.start_run(run)
    assert not (run / "summary.json").exists() and not (run / "results.npz").exists()


def test_json_is_strict_and_keeps_non_finite_values_as_words(tmp_path):
    obj = {"a": np.float64("nan"), "b": (1, np.int32(2)), "c": jnp.array([1.0, np.inf]), "d": -math.inf}
    _store.write_json(tmp_path / "s.json", obj)
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": "nan", "b": [1, 2], "c": [1.0, "inf"],
                                                             "d": "-inf"}


# --------------------------------------------------------------------------------------------
# Claim and Scenario


def test_claim_record():
    c = fs.Claim("err", jnp.asarray(0.25), np.float32(0.5), np.bool_(True), "note")
    assert type(c.value) is float and type(c.threshold) is float and c.holds is True
    assert fs.Claim.from_json(json.loads(json.dumps(c.to_json()))) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.value = 1.0
    assert fs.Claim.at_most("e", 0.1, 0.2).holds and not fs.Claim.at_most("e", 0.3, 0.2).holds
    assert fs.Claim.at_least("m", 0.3, 0.2).holds and not fs.Claim.at_least("m", 0.1, 0.2).holds
    assert not fs.Claim.at_most("e", float("nan"), 1.0).holds
    assert fs.Claim.at_most("e", float("nan"), 1.0).to_json()["value"] == "nan"
    with pytest.raises(ValueError, match="value must be a real number"):
        fs.Claim("e", "big", 1.0, True)


def _scenario(**kw):
    args = dict(name="demo", title="t", reference="r", run=lambda c: {},
                config={"steps": 100, "lr": 0.5, "flag": False, "solver": "auto", "alphas": (0.1, 1.0)})
    args.update(kw)
    return fs.Scenario(**args)


def test_scenario_validation():
    with pytest.raises(ValueError, match="name"):
        _scenario(name="a b")
    with pytest.raises(ValueError, match=r"quick overrides unknown config keys \['stepz'\]"):
        _scenario(quick={"stepz": 1})
    with pytest.raises(ValueError, match="run must be a function"):
        _scenario(run=None)
    s = _scenario(quick={"steps": 5})
    assert s.make_config(quick=True)["steps"] == 5 and s.make_config()["steps"] == 100
    with pytest.raises(TypeError):
        s.config["steps"] = 3  # read-only


def test_set_values_are_parsed_by_the_type_of_the_default():
    s = _scenario()
    assert parse_override(s, "steps", "1e4") == 10_000 and isinstance(parse_override(s, "steps", "7"), int)
    assert parse_override(s, "lr", "1e-3") == 1e-3
    assert parse_override(s, "flag", "true") is True and parse_override(s, "flag", "0") is False
    assert parse_override(s, "solver", "kvaerno5") == "kvaerno5"
    assert parse_override(s, "alphas", "0.5,2,8") == (0.5, 2.0, 8.0)
    assert parse_override(s, "alphas", "[1, 2]") == (1.0, 2.0)
    assert parse_set_args(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ScenarioError, match="valid keys: alphas, flag, lr, solver, steps"):
        parse_override(s, "step", "3")
    with pytest.raises(ScenarioError, match=r"steps expects an integer \(default 100\); '2.5' is not an integer"):
        parse_override(s, "steps", "2.5")
    with pytest.raises(ScenarioError, match="lr expects a number"):
        parse_override(s, "lr", "fast")
    with pytest.raises(ScenarioError, match="true/false"):
        parse_override(s, "flag", "maybe")
    with pytest.raises(ScenarioError, match="key=value"):
        parse_set_args(["steps"])
