"""The `flowsim` command: list, run and re-plot scenarios.

    flowsim list [--dir DIR]
    flowsim run FILE [--quick] [--fresh] [--set key=value ...] [--out DIR] [--figures DIR] [--strict]
    flowsim run --all [--dir DIR] [--quick] [--fresh] [--out DIR] [--figures DIR] [--strict]
    flowsim run --showcase [...]   (as --all, only the scenarios marked showcase=True)
    flowsim plot RUN_DIR [--figures DIR] [--scenario FILE]

A run goes to OUT/<name>/ (OUT/<name>-quick/ with --quick, OUT/<name>[-quick]-set-<hash>/ with --set),
its figures to OUT/<...>/figures/ unless --figures DIR is given (`--showcase` on the full configs draws
the committed figures/). Rerunning an interrupted run resumes it where its scenario allows (finished
sweep members and solve checkpoints); --fresh starts over. See docs/cli.md.

Exit codes: 0 done (failing claims and solves are reported by name); 1 under --strict, a claim failed or
a solve did not reach its horizon; 2 an error (bad file, bad --set, crash in a scenario, missing, edited
or incomplete run folder, a run folder already being written); 130 interrupted (Ctrl-C: within about two
seconds even inside a compiled solve, saved work kept); 141 stdout was closed early (`flowsim list | head`),
quietly. Failures are listed by name, solves as their figures name them; `--all` ends with a FAILED list. Errors print one message naming the file and line;
`--debug` or FLOWSIM_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import signal
import sys
import threading
import time
import traceback

EXIT_OK, EXIT_CLAIM_FAILED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
_MAX_FAILURES_SHOWN = 8


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowsim",
        description="Reproduce implicit-bias studies as exact gradient-flow simulations.",
        epilog="Ctrl-C stops a run and keeps its saved work; rerunning the same command resumes it (--fresh "
               "starts over). Exit codes: 0 done (failures are listed by name), 1 a claim failed or a solve did not "
               "converge, under --strict only, 2 error, 130 interrupted, 141 output pipe closed.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks (also FLOWSIM_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="{list,run,plot}")
    sub.required = True

    ls = sub.add_parser("list", help="list the scenarios in ./scenarios with titles and references")
    ls.add_argument("--dir", default="scenarios", help="scenario folder (default: ./scenarios)")

    run = sub.add_parser("run", help="run a scenario (or --all, --showcase): save results, check claims, draw figures")
    run.add_argument("file", nargs="?", help="scenario file or name, e.g. scenarios/soudry2018_logistic.py or "
                                             "soudry2018_logistic (./scenarios/<name>.py)")
    run.add_argument("--all", action="store_true", help="run every scenario in --dir (default ./scenarios)")
    run.add_argument("--showcase", action="store_true",
                     help="run the scenarios in --dir marked showcase=True (the README's main command; "
                          "`flowsim list` marks the others); on the full configs their figures go to figures/")
    run.add_argument("--dir", default="scenarios", help="scenario folder for --all and --showcase (default: ./scenarios)")
    run.add_argument("--quick", action="store_true",
                     help="apply the scenario's quick overrides (smaller sizes and horizons: a check that the "
                          "pipeline works, not the paper's numbers); the run goes to OUT/<name>-quick/")
    run.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                     help="override a config value, parsed by the type of its default; the run goes to its own "
                          "folder OUT/<name>-set-<hash>/ and never replaces the full run")
    run.add_argument("--fresh", action="store_true",
                     help="discard the saved work of an interrupted run instead of resuming it")
    run.add_argument("--out", default="runs",
                     help="results folder; the run goes to OUT/<name>/, OUT/<name>-quick/ with --quick, "
                          "OUT/<name>[-quick]-set-<hash>/ with --set (default: runs)")
    run.add_argument("--figures", default=None,
                     help="figure folder; figures go to FIGURES/<name>/ (default: the run folder's figures/; "
                          "figures/ for --showcase without --quick). `--figures figures` redraws the committed "
                          "figures")
    run.add_argument("--strict", action="store_true",
                     help="exit 1 when a claim fails or a solve does not reach its horizon or target (without "
                          "--strict these are listed under FAILED and the exit code is 0)")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    plot = sub.add_parser("plot", help="redraw a run's figures from its saved results (no recomputation)")
    plot.add_argument("run_dir", help="a run folder, e.g. runs/soudry2018_logistic")
    plot.add_argument("--figures", default=None,
                      help="figure folder; figures go to FIGURES/<name>/ (default: RUN_DIR/figures/)")
    plot.add_argument("--scenario", default=None,
                      help="the scenario file whose plot() draws the figures (default: the known scenario of the "
                           "recorded name, ./scenarios/<name>.py; code is never taken from the run folder)")
    plot.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `flowsim` console script; returns the exit code.

    Called without `argv` (the console script), the process ends itself on Ctrl-C with `os._exit(130)`
    after printing what was kept and flushing: a normal interpreter exit would tear down while XLA's
    threads may still run a computation or a compile, which can crash (SIGSEGV, 139) instead of exiting
    130. Python sees Ctrl-C only between bytecodes, and a compiled solve can run for minutes inside one
    call, so a watcher thread (`_watch_interrupts`) ends the process if the main thread has not done so
    `INTERRUPT_GRACE_S` seconds after the signal. Saved work is safe either way: every file a run keeps
    is written to a temporary name and renamed. Called with `argv` (from Python), it returns 130."""
    process = argv is None
    if process:
        _watch_interrupts()
    try:
        code = _main(argv)
        if process:
            sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is caught below
        return code
    except BrokenPipeError:  # `flowsim list | head`: the reader has gone; say nothing more
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if not process:
            print(_INTERRUPTED, file=sys.stderr)
            return EXIT_INTERRUPTED
        _exit_interrupted()


INTERRUPT_GRACE_S = 2.0
_FLUSH_TIMEOUT_S = 2.0
_INTERRUPTED = ("\nflowsim: interrupted; an unfinished run folder has no summary.json and is never taken for a "
                "finished one. Run the same command again to resume it (scenarios whose run takes `resume` continue "
                "where they stopped; --fresh starts over).")
_exiting = threading.Lock()


def _exit_interrupted(detail: str = "") -> None:
    """Say what was kept, flush, and end the process with 130 at once (no interpreter teardown).

    Whichever of the main thread and the watcher gets here first does it; the other waits for the end."""
    _exiting.acquire()  # never released: the holder ends the process
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit

    def say_and_flush() -> None:
        for stream, text in ((sys.stderr, _INTERRUPTED + detail + "\n"), (sys.stdout, None)):
            try:
                if text:
                    stream.write(text)
                stream.flush()
            except (OSError, ValueError):
                pass

    # In a thread with a time limit: a stream whose reader has stopped reading (a paused pager) would block
    # the flush, and the process must end anyway.
    flusher = threading.Thread(target=say_and_flush, name="flowsim-flush", daemon=True)
    flusher.start()
    flusher.join(_FLUSH_TIMEOUT_S)
    os._exit(EXIT_INTERRUPTED)


def _watch_interrupts() -> None:
    """End the process `INTERRUPT_GRACE_S` after Ctrl-C even while the main thread sits in compiled code.

    Python's C-level signal handler writes the signal number to the wakeup fd at once, whatever the main
    thread is doing (`signal.set_wakeup_fd`); a daemon thread reads it. The default handler still raises
    KeyboardInterrupt in the main thread, which normally exits first (its `finally` blocks run)."""
    try:
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except (OSError, ValueError):  # not the main thread, or no pipes: keep Python's behaviour
        return

    def watch() -> None:
        while signal.SIGINT not in os.read(read, 64):
            pass
        time.sleep(INTERRUPT_GRACE_S)
        _exit_interrupted(" (stopped inside a compiled computation; its work since the last saved step is lost)")

    threading.Thread(target=watch, name="flowsim-interrupt", daemon=True).start()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("FLOWSIM_DEBUG", "") not in ("", "0")

    import matplotlib

    matplotlib.use("Agg")
    from ._scenario import ScenarioError
    from ._store import StoreError

    try:
        if args.command == "list":
            return _list(args)
        if args.command == "run":
            return _run(args, debug)
        return _plot(args)
    except (ScenarioError, StoreError) as e:
        _error(str(e), e if debug else None)
        return EXIT_ERROR
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as e:  # noqa: BLE001 - a bug in flowsim itself: still one message unless --debug
        _error(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", e if debug else None)
        return EXIT_ERROR


def _error(message: str, exc: BaseException | None) -> None:
    if exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"flowsim: error: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------


def _list(args) -> int:
    from ._scenario import ScenarioError, find_scenarios, load_scenario

    files = find_scenarios(args.dir)
    if not files:
        print(f"no scenarios in {args.dir}/")
        return EXIT_OK
    status = EXIT_OK
    for f in files:
        try:
            s, _ = load_scenario(f)
        except ScenarioError as e:
            print(f"{f}\n    cannot be loaded: {e}\n")
            status = EXIT_ERROR
            continue
        mark = "" if s.showcase else "  [not in --showcase]"
        print(f"{s.name}  ({f}){mark}\n    {s.title}\n    {s.reference}\n")
    return status


def _run(args, debug: bool) -> int:
    from ._runner import run_scenario
    from ._scenario import ScenarioError, find_scenarios, load_scenario, parse_set_args

    if args.all and args.showcase:
        raise ScenarioError("give --all (every scenario) or --showcase (the showcase subset), not both.")
    every = args.all or args.showcase
    if every == bool(args.file):
        raise ScenarioError("give either a scenario FILE, --all or --showcase (e.g. `flowsim run scenarios/x.py`).")
    if every and args.sets:
        raise ScenarioError("--set applies to one scenario; use it with FILE, not with --all/--showcase.")
    overrides = parse_set_args(args.sets)
    figures = args.figures
    if figures is None and args.showcase and not args.quick:
        figures = "figures"  # the main command draws the committed figures of the full configs
    kwargs = dict(quick=args.quick, out=args.out, figures=figures, fresh=args.fresh)

    if not every:
        scenario, path = load_scenario(args.file)
        scenario.make_config(quick=args.quick, overrides=overrides)  # refuse bad --set before any work
        summary = run_scenario(scenario, path, overrides=overrides, **kwargs)
        print(format_summary(summary))
        if not _passed(summary):
            print(_failure_hint(args.strict), file=sys.stderr)
        return EXIT_CLAIM_FAILED if args.strict and not _passed(summary) else EXIT_OK

    files = find_scenarios(args.dir)
    if not files:
        raise ScenarioError(f"no scenario files in {args.dir}/.")
    rows = []
    failures = []  # (scenario name, line) for the closing list
    t_all = time.perf_counter()
    for i, f in enumerate(files, 1):
        print(f"[{i}/{len(files)}] {f}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            scenario, path = load_scenario(f)
            if args.showcase and not scenario.showcase:
                print("    skipped: not a showcase scenario (`flowsim run --all` runs it)", file=sys.stderr)
                continue
            summary = run_scenario(scenario, path, **kwargs)
        except ScenarioError as e:
            _error(str(e), e if debug else None)
            rows.append((f.stem, "ERROR", time.perf_counter() - t0))
            failures.append((f.stem, "error: " + (str(e).strip().splitlines() or ["(no message)"])[0]))
            continue
        print(format_summary(summary) + "\n")
        lines = failure_lines(summary)
        failures += [(scenario.name, line) for line in lines]
        n_claims = sum(not c["holds"] for c in summary["claims"])
        n_solves = len(summary.get("failed") or [])
        status = ", ".join(p for p in (f"{n_claims} claim(s) FAIL" if n_claims else "",
                                       f"{n_solves} solve(s) did not converge" if n_solves else "") if p) or "all claims hold"
        rows.append((scenario.name, status, time.perf_counter() - t0))
    if not rows:
        raise ScenarioError(f"no showcase scenarios in {args.dir}/ (mark one with showcase=True).")
    width = max(len(r[0]) for r in rows)
    print(f"flowsim run {'--showcase' if args.showcase else '--all'}{' --quick' if args.quick else ''}: "
          f"{len(rows)} scenario(s), "
          f"{time.perf_counter() - t_all:.1f} s")
    for name, status, wall in rows:
        print(f"  {name:<{width}}  {status:<46} {wall:8.1f} s")
    if failures:
        print(f"FAILED ({len(failures)}):")
        for name, line in failures:
            print(f"  {name}: {line}")
        print(_failure_hint(args.strict), file=sys.stderr)
    elif not any(r[1] == "ERROR" for r in rows):
        print("nothing failed: every claim holds and every solve reached its horizon or target")
    if any(r[1] == "ERROR" for r in rows):
        return EXIT_ERROR
    if args.strict and failures:
        return EXIT_CLAIM_FAILED
    return EXIT_OK


def failure_lines(summary: dict) -> list[str]:
    """One line per failed claim (value, threshold, what it measures) and per failed solve (named as the
    figures name it, its status in words, the first line of its message)."""
    lines = []
    for c in summary["claims"]:
        if not c["holds"]:
            note = f" — {c['note']}" if c.get("note") else ""
            lines.append(f"claim {c['name']} FAILS: value {_num(c['value'])}, threshold {_num(c['threshold'])}{note}")
    for f in summary.get("failed") or []:
        message = (f["message"] or "").strip().splitlines()
        lines.append(f"{_solve(f)} did not converge ({_status(f)}): {message[0] if message else '(no message)'}")
    return lines


def _solve(failure: dict) -> str:
    """A failed solve by the name its figures give it (`shown_as`), else by its stored name and member."""
    if failure.get("shown_as"):
        return str(failure["shown_as"])
    return failure["result"] + ("" if failure["member"] is None else f", run {failure['member']}")


def _status(failure: dict) -> str:
    return str(failure["status"]).replace("_", " ").lower()


def _failure_hint(strict: bool) -> str:
    if strict:
        return "flowsim: failures above; --strict: exit code 1."
    return "flowsim: failures above (exit code 0 without --strict; --strict exits 1 on them)."


def _passed(summary: dict) -> bool:
    """Every claim holds and every trajectory reached its horizon."""
    return summary["all_claims_hold"] and summary["solver_ok"]


def _plot(args) -> int:
    from ._runner import replot

    summary, paths, fig_dir = replot(args.run_dir, figures=args.figures, scenario_file=args.scenario)
    name = summary["scenario"]["name"]
    if not paths:
        print(f"{name}: the scenario draws no figures.")
        return EXIT_OK
    print(f"{name}: redrew {len(paths)} file(s) in {_rel(fig_dir)}/ from {pathlib.Path(args.run_dir) / 'results.npz'}:")
    for p in paths:
        print(f"  {_rel(p)}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# The one-screen summary


def format_summary(summary: dict) -> str:
    """Claims (value, threshold, holds), solver statistics, wall time, and where things were written."""
    s = summary["scenario"]
    lines = [f"{s['name']} — {s['title']}" + ("  [quick]" if summary["quick"] else ""), f"  {s['reference']}"]
    if summary["overrides"]:
        lines.append("  overrides  " + ", ".join(f"{k}={v!r}" for k, v in summary["overrides"].items())
                     + " — in their own folder, the full run is untouched")
    claims = summary["claims"]
    if claims:
        w = max(len(c["name"]) for c in claims)
        lines.append("  claims")
        for c in claims:
            mark = "holds" if c["holds"] else "FAILS"
            lines.append(f"    {mark}  {c['name']:<{w}}  value {_num(c['value']):>11}   "
                         f"threshold {_num(c['threshold']):>11}")
            if c.get("note"):
                lines.append(f"    {'':5}  {c['note']}")
        if summary["overrides"]:
            lines.append(f"    (claims {summary.get('claims_judged', 'judged at the changed settings')})")
    else:
        lines.append("  claims     (none)")
    stats = summary.get("solver_stats") or {}
    for i, (name, st) in enumerate(stats.items()):
        lines.append(("  solver     " if i == 0 else "             ") + f"{name}: {_stats(st)}")
    wall = summary["wall_time_s"]
    lines.append("  wall time  " + " · ".join(f"{k} {v:.1f} s" for k, v in wall.items()))
    lines.append(f"  results    {_rel(summary['run_dir'])}/ (results.npz, summary.json)")
    files = summary["figures"]["files"]
    if files:
        where = summary.get("figures_path") or pathlib.Path(summary["run_dir"]) / (summary["figures"]["dir"] or "")
        lines.append(f"  figures    {_rel(where)}/ ({', '.join(files)})")
    n_fail = sum(not c["holds"] for c in claims)
    if n_fail:
        lines.append(f"  {n_fail} of {len(claims)} claim(s) FAIL")
    failed = summary.get("failed") or []
    for f in failed[:_MAX_FAILURES_SHOWN]:
        lines.append(f"  FAILED     {_solve(f)} did not converge ({_status(f)}): {f['message']}")
    if len(failed) > _MAX_FAILURES_SHOWN:
        lines.append(f"             … and {len(failed) - _MAX_FAILURES_SHOWN} more (summary.json, \"failed\")")
    if failed:
        lines.append(f"  {len(failed)} solve(s) did NOT reach their horizon or target; their numbers are not the "
                     "flow's limit")
    if summary.get("resumed"):
        r = summary["resumed"]
        lines.append(f"  resumed    an interrupted run: {r['sweep_members']} sweep member(s), {r['checkpoints']} "
                     "checkpoint(s) picked up")
    return "\n".join(lines)


def _num(x) -> str:
    if isinstance(x, str):
        return x
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"


def _stats(st: dict) -> str:
    def total(v) -> float:
        # Batched (vmapped) trajectories store lists; non-finite values arrive as the strings "nan"/"inf".
        return float(sum(float(x) for x in (v if isinstance(v, list) else [v])))

    def count(v) -> str:
        value = total(v)
        return f"{int(value):,}" if math.isfinite(value) else "?"

    runs = next((len(v) for v in st.values() if isinstance(v, list)), None)
    parts = []
    if "num_steps" in st:
        parts.append(f"{count(st['num_steps'])} steps")
    if "num_rejected_steps" in st:
        parts.append(f"{count(st['num_rejected_steps'])} rejected")
    if "wall_time_s" in st:
        seconds = total(st["wall_time_s"])
        # a solve inside jit/vmap cannot time itself: say so rather than print nan
        parts.append(f"{seconds:.2f} s" if math.isfinite(seconds) else "time not measured (jit/vmap)")
    ok = st.get("ok")
    if ok is not None:
        n_bad = sum(not o for o in ok) if isinstance(ok, list) else int(not ok)
        parts.append("ok" if n_bad == 0 else f"NOT OK ({n_bad} of {len(ok) if isinstance(ok, list) else 1})")
    return ", ".join(parts) + (f" (over {runs} runs)" if runs else "")


def _rel(p) -> str:
    p = pathlib.Path(p)
    try:
        return str(p.resolve().relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(p)


if __name__ == "__main__":
    sys.exit(main())
