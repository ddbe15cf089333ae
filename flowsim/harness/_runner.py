"""Running a scenario: run → save → reload → claims and figures from the reloaded results → summary.

`flowsim run` and `flowsim plot` both go through here, and both hand `plot` the results as read back
from disk, so a figure drawn right after a run and one redrawn later from the run folder are the same.
Every scenario's `run` runs inside `fs.cache(OUT/.cache/<name>/)`: its solves are stored as they finish and
replayed by a rerun (the interrupted one continues from its checkpoint). A `run(config, resume)` that takes a
second argument also gets the run's `Resume` (its `work/` folder): rerunning an interrupted run picks up its
finished sweep members and solve checkpoints.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import pathlib
import re
import sys
import time
from collections.abc import Callable, Mapping

from .._cache import cache as solve_cache
from ._plotting import DESCRIBE_ATTRIBUTE, display_name, note_failures, save_figures, style
from ._scenario import Claim, Scenario, ScenarioError, describe_error, load_scenario, scenario_by_name
from ._store import (
    FORMAT,
    RESULTS_FILE,
    SUMMARY_FILE,
    StoreError,
    failed_members,
    flatten_results,
    load_arrays,
    load_run,
    locked,
    save_arrays,
    sha256,
    start_run,
    to_jsonable,
    versions,
    write_summary,
)
from ._work import Resume, close_work, open_work

_MAX_MESSAGE_LINES = 12
CACHE_DIR = ".cache"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


OVERRIDDEN_CLAIMS = ("judged at the changed settings (--set) with the thresholds the scenario sets for them; "
                     "not the paper's claim at its own settings")


def run_folder(out: str | pathlib.Path, name: str, quick: bool, overrides: Mapping | None = None) -> pathlib.Path:
    """`OUT/<name>/`; `OUT/<name>-quick/` for `--quick`; `OUT/<name>[-quick]-set-<hash>/` with `--set`.

    A quick or overridden run never overwrites the full run: `<hash>` is the first 8 hex digits of the
    SHA-256 of the parsed overrides (canonical JSON), so the same `--set` values reuse (and resume) one folder."""
    folder = f"{name}-quick" if quick else name
    if overrides:
        text = json.dumps(to_jsonable(dict(overrides)), sort_keys=True, separators=(",", ":"))
        folder += "-set-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return pathlib.Path(out) / folder


def cache_folder(run_dir: pathlib.Path, name: str) -> pathlib.Path:
    """`OUT/.cache/<name>/`: the solve cache (`fs.cache`) that every run of scenario `name` into `OUT` shares.

    Its entries are keyed by the content of each solve's inputs, so the full run, `--quick` and every `--set`
    variant reuse the solves they have in common, a rerun after a kill replays every finished solve and
    continues the interrupted one from its checkpoint, and a changed input recomputes only the solves it
    feeds. It outlives a finished run (a rerun replays it); `--fresh` recomputes every solve and rewrites
    its entry."""
    return pathlib.Path(run_dir).parent / CACHE_DIR / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def resuming_message(solves) -> str:
    """`resuming: N finished solves reused, M continued from log t = …` for a run's `SolveCache`."""
    text = f"resuming: {solves.reused} finished solves reused, {len(solves.continued)} continued"
    if solves.continued:
        text += " from log t = " + ", ".join(f"{value:.6g}" for value in solves.continued)
    return text


def takes_resume(run: Callable) -> bool:
    """Whether `run` accepts a second positional argument (the `Resume`)."""
    try:
        signature = inspect.signature(run)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind({}, Resume())
    except TypeError:
        return False
    return True


def run_scenario(
    scenario: Scenario,
    path: pathlib.Path,
    *,
    quick: bool = False,
    overrides: Mapping[str, str] | None = None,
    out: str | pathlib.Path = "runs",
    figures: str | pathlib.Path | None = None,
    fresh: bool = False,
    log: Callable[[str], None] = _stderr,
) -> dict:
    """Run `scenario` and write its run folder and figures; return the summary (as written).

    An interrupted earlier run of the same scenario, file and config is resumed (`fresh` starts over)."""
    overrides = dict(overrides or {})
    config = scenario.make_config(quick=quick, overrides=overrides)
    run_dir = run_folder(out, scenario.name, quick, {k: config[k] for k in overrides})
    fig_dir = pathlib.Path(figures) / scenario.name if figures is not None else run_dir / "figures"
    with locked(run_dir):
        return _run_locked(scenario, path, quick, overrides, config, run_dir, fig_dir, fresh, log)


def _run_locked(scenario, path, quick, overrides, config, run_dir, fig_dir, fresh, log) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start_run(run_dir)
    wall = {}
    args = [dict(config)]
    resumed = None
    if takes_resume(scenario.run):
        resume, is_resumed = open_work(
            run_dir, {"scenario": scenario.name, "config": config, "file_sha256": sha256(path)}, fresh=fresh)
        args.append(resume)
        if is_resumed:
            resumed = {"work": str(resume.folder), **resume.saved()}
            log(f"[{scenario.name}] resuming the interrupted run in {resume.folder}: "
                f"{resumed['sweep_members']} finished sweep member(s) and {resumed['checkpoints']} solve "
                "checkpoint(s) are picked up, not recomputed (--fresh starts over)")
    else:
        resume = Resume()

    kind = ("quick" if quick else "full") + (" config with --set overrides" if overrides else " config")
    log(f"[{scenario.name}] running ({kind}) into {run_dir}/ …")
    t_start = t0 = time.perf_counter()
    with solve_cache(cache_folder(run_dir, scenario.name), replay=not fresh, log=log) as solves:
        raw = _call(scenario.run, path, "run", *args)
    if solves.reused or solves.continued:
        log(f"[{scenario.name}] {resuming_message(solves)}")
    arrays, solver_stats = _call(flatten_results, path, "run", raw)
    wall["run"] = time.perf_counter() - t0
    del raw
    log(f"[{scenario.name}] computed in {wall['run']:.1f} s; saving {len(arrays)} arrays, checking claims, "
        "drawing figures …")

    digest = save_arrays(run_dir / RESULTS_FILE, arrays)
    results = load_arrays(run_dir / RESULTS_FILE)
    failures = [dict(result=name, **f) for name in solver_stats for f in failed_members(results, name)]

    t0 = time.perf_counter()
    claims = evaluate_claims(scenario, path, results, config)
    wall["claims"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figure_paths = draw_figures(scenario, path, results, config, fig_dir, failures)
    wall["plot"] = time.perf_counter() - t0
    wall["total"] = time.perf_counter() - t_start  # including saving and reloading

    summary = {
        "format": FORMAT,
        "scenario": {"name": scenario.name, "title": scenario.title, "reference": scenario.reference,
                     "file": str(path)},
        "quick": quick,
        "overrides": {k: config[k] for k in overrides},
        "config": config,
        "started_utc": started,
        "resumed": resumed,
        "solves": {"reused": solves.reused, "computed": solves.computed, "uncached": solves.uncached,
                   "continued_from_log_t": solves.continued, "refused": solves.refused},
        "versions": versions(),
        "wall_time_s": wall,
        "solver_stats": solver_stats,
        "failed": failures,
        "results": {
            "file": RESULTS_FILE,
            "sha256": digest,
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        },
        # a path inside the run folder, relative to it; null when drawn elsewhere (--figures, --showcase)
        "figures": {"dir": _relative_inside(fig_dir, run_dir), "files": [p.name for p in figure_paths]},
        "claims": [c.to_json() for c in claims],
        "claims_judged": OVERRIDDEN_CLAIMS if overrides else "at the scenario's settings"
                         + (" (--quick)" if quick else ""),
        "all_claims_hold": all(c.holds for c in claims),
        "solver_ok": not failures,
    }
    write_summary(run_dir / SUMMARY_FILE, summary)  # last: its presence marks the run complete
    close_work(resume)  # a finished run is never resumed
    summary["run_dir"] = str(run_dir)
    summary["figures_path"] = str(fig_dir)  # in memory only, for the screen
    return summary


def _relative_inside(path: pathlib.Path, run_dir: pathlib.Path) -> str | None:
    try:
        return pathlib.Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return None


def replot(
    run_dir: str | pathlib.Path,
    *,
    figures: str | pathlib.Path | None = None,
    scenario_file: str | pathlib.Path | None = None,
) -> tuple[dict, list[pathlib.Path], pathlib.Path]:
    """Redraw the figures of a finished run from its saved results; `run` is never called.

    Nothing the run folder says is executed: the `plot` function comes from `scenario_file` (the user's
    choice) or from the known scenario of the recorded name (`scenario_by_name`), never from a path read
    from the folder. Figures go to `FIGURES/<name>/` with `figures`, else to `RUN_DIR/figures/` (so a
    copied run folder draws into the copy). Returns (summary, figure paths, figure folder)."""
    run_dir = pathlib.Path(run_dir)
    results, summary = load_run(run_dir)
    recorded = summary["scenario"]["name"]
    if scenario_file is not None:
        scenario, path = load_scenario(scenario_file)
    else:
        scenario, path = scenario_by_name(recorded, summary["scenario"].get("file"))
    if scenario.name != recorded:
        raise ScenarioError(f"{path} defines scenario {scenario.name!r}, but {run_dir} holds a run of {recorded!r}.")
    config = _restore_config(scenario, summary["config"])
    fig_dir = pathlib.Path(figures) / scenario.name if figures is not None else run_dir / "figures"
    return summary, draw_figures(scenario, path, results, config, fig_dir, summary.get("failed") or []), fig_dir


def evaluate_claims(scenario: Scenario, path: pathlib.Path, results: dict, config: dict) -> list[Claim]:
    if scenario.claims is None:
        return []
    claims = _call(scenario.claims, path, "claims", results, dict(config))
    if claims is None:
        return []
    claims = list(claims) if not isinstance(claims, Claim) else [claims]
    for c in claims:
        if not isinstance(c, Claim):
            raise ScenarioError(f"{path.name}: claims() must return a list of fs.Claim, got a {type(c).__name__}.")
    names = [c.name for c in claims]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScenarioError(f"{path.name}: claims() returned the names {dupes} more than once.")
    return claims


def draw_figures(scenario: Scenario, path: pathlib.Path, results: dict, config: dict, fig_dir,
                 failures: list[dict] = ()) -> list[pathlib.Path]:
    """Call `plot` under the shared style and save its figures; each figure of a run with failed
    solves says so on its face (`note_failures`), so nothing is shown as if it had converged.

    Each failure record gets `shown_as`, the name its figures give that solve (`describe_solves`; else
    a readable form of its result name), so the summary names it as the figures do."""
    for f in failures:
        f.setdefault("shown_as", display_name(None, f["result"], f.get("member")))
    if scenario.plot is None:
        return []
    with style():
        figs = _call(scenario.plot, path, "plot", results, dict(config))
        if figs is None:
            return []
        if failures and isinstance(figs, Mapping):
            described = [getattr(fig, DESCRIBE_ATTRIBUTE, None) for fig in figs.values()]
            describe = next((d for d in described if d is not None), None)
            for f in failures:
                f["shown_as"] = display_name(describe, f["result"], f.get("member"))
            for fig in figs.values():
                note_failures(fig, failures)
        try:
            return save_figures(figs, fig_dir)
        except StoreError as e:
            raise ScenarioError(f"{path.name}: {e}") from None


def _call(fn, path: pathlib.Path, what: str, *args):
    """Call a scenario function; an exception becomes a ScenarioError naming the file and line."""
    try:
        return fn(*args)
    except (ScenarioError, KeyboardInterrupt, SystemExit):
        raise
    except StoreError as e:
        raise ScenarioError(f"{path.name}: {e}") from e
    except Exception as e:  # noqa: BLE001 - reported in words with file and line
        message = describe_error(e, path, f"in {what}()")
        lines = message.splitlines()
        if len(lines) > _MAX_MESSAGE_LINES:
            message = "\n".join(lines[:_MAX_MESSAGE_LINES] + ["    … (rerun with --debug for the full traceback)"])
        raise ScenarioError(message) from e


def _restore_config(scenario: Scenario, saved: Mapping) -> dict:
    """Undo what JSON did to the config: tuples came back as lists, non-finite floats as strings."""
    config = dict(saved)
    for key, value in config.items():
        default = scenario.config.get(key)
        if isinstance(default, tuple) and isinstance(value, list):
            config[key] = tuple(value)
        elif isinstance(default, float) and isinstance(value, str):
            config[key] = float(value)
        elif isinstance(value, str) and value in ("nan", "inf", "-inf") and not isinstance(default, str):
            config[key] = float(value)
    return config

