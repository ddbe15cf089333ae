"""Figures a newcomer trusts: every scenario's figures render from saved quick-run results, no legend repeats a
label or a look, no text shows raw TeX (`^`, `_` outside `$…$`), NOT CONVERGED notes use the names the figure
shows, and the style helpers (mathtext numbers, log ticks, series styles) do what they say.

The results under tests/data/figures/ are the arrays each scenario's `plot` reads from its quick run (nothing
else), so this module renders all figures without computing anything. After a scenario's `run` or `plot` changes
the keys it uses, regenerate them from fresh quick runs:

    flowsim run --all --quick --out /tmp/q && python tests/test_figures.py /tmp/q/*-quick
"""

import json
import pathlib
import sys

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flowsim.harness import _plotting, _style  # noqa: E402
from flowsim.harness._scenario import load_scenario  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "figures"
SCENARIOS = sorted(p.stem for p in (ROOT / "scenarios").glob("*.py"))


class _Recording(dict):
    """The results dict, noting which keys `plot` reads (so the stored fixture holds only those)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)

    def items(self):
        self.read.update(self.keys())
        return super().items()

    def values(self):
        self.read.update(self.keys())
        return super().values()


def _load(name):
    with np.load(DATA / f"{name}.npz", allow_pickle=False) as saved:
        results = {k: saved[k] for k in saved.files}
    return results, json.loads((DATA / f"{name}.json").read_text())


def _draw(name, results, config):
    scenario, _ = load_scenario(ROOT / "scenarios" / f"{name}.py")
    with _style.style():
        return scenario.plot(results, dict(config))


def test_every_scenario_has_figure_data():
    assert SCENARIOS and all((DATA / f"{n}.npz").is_file() and (DATA / f"{n}.json").is_file() for n in SCENARIOS), \
        f"regenerate tests/data/figures/ (module docstring) for: {[n for n in SCENARIOS if not (DATA / f'{n}.npz').is_file()]}"


@pytest.mark.parametrize("name", SCENARIOS)
def test_quick_figures_render_without_raw_tex_or_repeated_legend_entries(name):
    results, config = _load(name)
    figures = _draw(name, results, config)
    try:
        assert figures, f"{name} draws no figures"
        problems = [f"{fig_name}: {p}" for fig_name, fig in figures.items() for p in _style.figure_problems(fig)]
        assert not problems, "\n".join(problems)
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_work_precision_full_config_has_fourteen_distinct_readable_series():
    """The full config's 9 flowsim solvers and 5 SciPy methods (the quick run has 2 + 2), on made-up numbers."""
    scenario, _ = load_scenario(ROOT / "scenarios" / "solver_accuracy.py")
    config = dict(scenario.config, problems=scenario.config["problems"][:1])  # one row of panels is enough
    rtols = np.asarray(config["rtols"])
    rng = np.random.default_rng(0)
    results = {"rtols": rtols}
    for problem in config["problems"]:
        for lib, key in (("flowsim", "flowsim_solvers"), ("scipy", "scipy_methods")):
            for s in config[key]:
                evals = 10 ** (rng.uniform(1, 3) + np.arange(rtols.size) * 0.4)
                results.update({f"{problem}/{lib}/{s}/error": rtols * rng.uniform(0.5, 5),
                                f"{problem}/{lib}/{s}/evals": evals, f"{problem}/{lib}/{s}/wall_s": 1e-4 * evals,
                                f"{problem}/{lib}/{s}/ok": np.ones(rtols.size, bool)})
    (fig,) = _draw("solver_accuracy", results, config).values()
    try:
        assert _style.figure_problems(fig) == []
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len(labels) == len(config["flowsim_solvers"]) + len(config["scipy_methods"]) == 14
        assert "flowsim KenCarp5" in labels and "SciPy Radau" in labels
        assert not any("_" in ax.get_title() for ax in fig.axes)
    finally:
        plt.close(fig)


def test_not_converged_note_names_solves_as_the_figure_does():
    failures = [{"result": "scale0/depth4/flow", "member": 3, "status": "MAX_STEPS", "message": "…"},
                {"result": "diagonal_L2/flow/alpha_0", "member": None, "status": "NON_FINITE", "message": "…"}]
    with _style.style():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label="flow")
        ax.legend()
        _plotting.describe_solves(fig, lambda result, member: f"depth 4, seed {member}" if member is not None
                                  else "diagonal, α = 0.01")
        _plotting.note_failures(fig, failures)
        note = fig.texts[-1].get_text()
        assert note == "NOT CONVERGED: depth 4, seed 3 (max steps); diagonal, α = 0.01 (non finite) — see summary.json"
        assert _style.figure_problems(fig) == []
        plt.close(fig)
    # Without names from the figure: no store ids with '/', '_' or '[…]' either.
    text = _plotting.failure_text(failures)
    assert text == "NOT CONVERGED: scale0 depth4, run 3 (max steps); diagonal L2 alpha 0 (non finite) — see summary.json"
    assert _style.unrendered_tex(text) == []
    assert _plotting.failure_text(failures, {"scale0/depth4/flow": "scale 0.01, depth 4"}).startswith(
        "NOT CONVERGED: scale 0.01, depth 4, run 3 (max steps); diagonal L2 alpha 0")
    assert _plotting.failure_text([]) == ""


def test_figure_problems_finds_raw_tex_and_look_alike_legend_entries():
    with _style.style():
        fig, ax = plt.subplots()
        ax.plot([1, 2], [1, 2], color="C0", ls="--", label="L = 2")
        ax.plot([1, 2], [2, 3], color="C0", ls="--", label="L = 3")  # same look as L = 2
        ax.plot([1, 2], [3, 4], color="C1", label="L = 2")  # same label
        ax.set(title="ℓ_{2/D} and e^-4.24", xlabel=r"$\ell_{2/D}$ and $e^{-4.24}$", ylabel="‖W‖_F")
        ax.legend(handlelength=1.5)
        found = _style.figure_problems(fig)
        plt.close(fig)
    problems = "\n".join(found)
    assert "'L = 2' and 'L = 3' look the same" in problems
    assert "the label 'L = 2' 2 times" in problems
    assert "ℓ_{2/D}" in problems and "e^-4.24" in problems and "‖W‖_F" in problems
    assert "too short to show a dashed or dotted line" in problems
    assert len(found) == 5  # the mathtext x label passes, and so do the tick labels


def test_mathtext_helpers():
    assert _style.tex_power("e", -4.2351) == "$e^{-4.24}$"
    assert _style.tex_power(10, -3) == "$10^{-3}$"
    assert _style.tex_power(10, -1.5, 1) == "$10^{-1.5}$"
    assert _style.tex_number(0.05) == "$0.05$"
    assert _style.tex_number(1e-3 / 2) == "$5\\times10^{-4}$"
    assert _style.tex_number(1e4) == "$10^{4}$"
    assert _style.tex_number(3e4) == "$3\\times10^{4}$"
    assert _style.tex_number(9.999e5) == "$10^{6}$"
    assert _style.unrendered_tex(r"$\ell_{2/D}$ kernel, $10^{-3}$") == []
    assert _style.unrendered_tex("10^-3 and stiff_quadratic") == ["10^-3", "stiff_quadratic"]
    assert _style.unrendered_tex(r"cost \$5 a_b") == ["a_b"]


def test_series_styles_are_all_distinct():
    styles = _style.series_styles(15)
    assert len({tuple(sorted(s.items())) for s in styles}) == 15
    assert styles[0] == {"color": "C0", "ls": "-"} and styles[10] == {"color": "C0", "ls": "--"}
    marked = _style.series_styles(12, markers=True)
    assert len({tuple(sorted(s.items())) for s in marked}) == 12


@pytest.mark.parametrize("lo, hi, expect", [(0.18, 6.0, ["$0.2$", "$0.5$", "$1$", "$2$", "$5$"]),
                                            (1e-5, 1e3, None), (0.49, 0.93, ["$0.5$", "$0.6$", "$0.7$", "$0.8$", "$0.9$"])])
def test_log_ticks_label_without_collisions(lo, hi, expect):
    with _style.style():
        fig, ax = plt.subplots()
        ax.loglog([lo, hi], [lo, hi])
        ax.set_xlim(lo, hi)
        _style.log_ticks(ax)
        fig.canvas.draw()
        lo_, hi_ = ax.get_xlim()
        shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo_ <= t.get_position()[0] <= hi_]
        minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
        plt.close(fig)
    assert minor == []  # the minor labels are what collided
    if expect is None:
        assert all("10^" in s for s in shown) and len(shown) >= 4
    else:
        assert shown == expect


def _store(run_dirs):
    """Write tests/data/figures/<name>.npz/.json from quick-run folders: the arrays `plot` reads, the config."""
    from flowsim.harness import _runner
    from flowsim.harness._store import load_arrays, load_run

    DATA.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        name = run_dir.name.removesuffix("-quick")
        scenario, _ = load_scenario(ROOT / "scenarios" / f"{name}.py")
        if (run_dir / "summary.json").is_file():
            results, summary = load_run(run_dir)
            config = _runner._restore_config(scenario, summary["config"])
        else:  # a run whose figures failed to draw: its results, and the quick config it ran with
            results, config = load_arrays(run_dir / "results.npz"), {**scenario.config, **(scenario.quick or {})}
        recording = _Recording(results)
        for fig in _draw(name, recording, config).values():
            plt.close(fig)
        np.savez_compressed(DATA / f"{name}.npz", **{k: results[k] for k in sorted(recording.read)})
        (DATA / f"{name}.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {len(recording.read)} of {len(results)} arrays")


if __name__ == "__main__":
    _store([pathlib.Path(p) for p in sys.argv[1:]])
