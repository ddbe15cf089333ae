"""The documentation cannot rot: every Python block in README.md and docs/ runs, and the API reference covers
every public name.

The blocks of one page run in order in one namespace (a page reads as one session), in a temporary working
directory. A block opts out only with `<!-- no-run: reason -->` on the line just before its fence, for code that
cannot run here (a cluster script, a scenario file's fragment shown for its shape).
"""

import importlib
import os
import pathlib
import re
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import gen_pages  # noqa: E402  (docs/gen_pages.py, the MkDocs hook that writes the generated pages)

sys.path.pop(0)

FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[^\n]*$")
NO_RUN = re.compile(r"<!--\s*no-run:\s*(?P<reason>\S[^>]*?)\s*-->")


def code_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, no-run reason) of every fenced block in a Markdown text."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, lang, start = match["indent"], match["lang"], i
        previous = lines[i - 1].strip() if i > 0 else ""
        reason = NO_RUN.search(previous)
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append((start + 1, lang, "\n".join(body), reason["reason"] if reason else None))
        i += 1
    return blocks


def pages() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _page_id(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


PAGES_WITH_PYTHON = [p for p in pages() if any(lang == "python" for _, lang, _, _ in code_blocks(p.read_text()))]


@pytest.mark.parametrize("path", PAGES_WITH_PYTHON, ids=_page_id)
def test_python_blocks_run(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("FLOWSIM_PROGRESS", "0")
    namespace = {"__name__": "__docs__"}
    ran = 0
    for line, lang, code, reason in code_blocks(path.read_text()):
        if lang != "python" or reason is not None:
            continue
        try:
            exec(compile(code, f"{_page_id(path)}:{line}", "exec"), namespace)
        except Exception as exc:  # say which block failed, with its own traceback
            raise AssertionError(f"the python block at {_page_id(path)}:{line} failed: {exc!r}") from exc
        ran += 1
    assert ran > 0
    import matplotlib.pyplot as plt

    plt.close("all")


def test_opt_outs_say_why():
    for path in pages():
        for line, lang, _, reason in code_blocks(path.read_text()):
            if reason is not None:
                assert lang == "python", f"{_page_id(path)}:{line}: no-run marks a python block"
                assert len(reason.split()) >= 3, f"{_page_id(path)}:{line}: say why the block does not run"


def test_block_extraction():
    text = "intro\n```python\nx = 1\n```\n<!-- no-run: needs a SLURM cluster -->\n```python\nboom\n```\n```bash\nls\n```\n"
    assert code_blocks(text) == [(2, "python", "x = 1", None), (6, "python", "boom", "needs a SLURM cluster"),
                                 (9, "bash", "ls", None)]


def _public(module: types.ModuleType) -> set[str]:
    """Names a user can reach as `module.name` that flowsim defines: its own functions, classes and submodules."""
    names = set()
    is_package = hasattr(module, "__path__")
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", "")
        if not isinstance(owner, str):
            continue
        if owner.startswith("flowsim") if is_package else owner == module.__name__:
            names.add(name)
    return names


@pytest.mark.parametrize("package", list(gen_pages.PACKAGES))
def test_reference_covers_every_public_name(package):
    module = importlib.import_module("flowsim")
    for part in package.split(".")[1:]:
        module = getattr(module, part)
    page = gen_pages.reference_page(package)
    documented = set(re.findall(rf"^::: {re.escape(package)}\.(\w+)$", page, re.M))
    documented |= set(re.findall(rf"{{ #{re.escape(package)}\.(\w+) }}", page))
    missing = _public(module) - documented
    assert not missing, f"{package}: public names without a reference entry: {sorted(missing)}"


def test_every_scenario_has_a_page():
    generated = gen_pages.generated_pages()
    for path in sorted((ROOT / "scenarios").glob("*.py")):
        if path.name.startswith("_"):
            continue
        page = generated[f"scenarios/{gen_pages.read_scenario(path)['name']}.md"]
        assert gen_pages.read_scenario(path)["docstring"].splitlines()[0] in page
        assert ("## Claims" in page) and ("summary.json" in page)


def test_scenario_page_shows_the_latest_claims(tmp_path, monkeypatch):
    summary = {"claims": [{"name": "direction_error", "value": 1.5e-7, "threshold": 2e-6, "holds": True,
                           "note": "‖w/‖w‖ − ŵ‖ | at the horizon"}], "quick": False, "config": {"seed": 0},
               "wall_time_s": 12.0, "versions": {"flowsim": "0.1.0"}}
    scenarios, runs = tmp_path / "scenarios", tmp_path / "runs" / "demo"
    scenarios.mkdir()
    runs.mkdir(parents=True)
    (scenarios / "demo.py").write_text('"""A demo claim.\n\nSetup."""\nimport flowsim as fs\n'
                                       'scenario = fs.Scenario(name="demo", title="Demo", reference="Nobody 2026",'
                                       ' config=dict(seed=0), quick=dict(seed=1), run=None, claims=None)\n')
    monkeypatch.setattr(gen_pages, "ROOT", tmp_path)
    page = gen_pages.scenario_page(scenarios / "demo.py")
    assert "appears here after" in page
    (runs / "summary.json").write_text(__import__("json").dumps(summary))
    page = gen_pages.scenario_page(scenarios / "demo.py")
    assert "| `direction_error` | 1.5e-07 | 2e-06 | yes | ‖w/‖w‖ − ŵ‖ \\| at the horizon |" in page
    assert "| `seed` | 0 | 1 |" in page


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_docs_extra_and_ci_build():
    assert "docs = [" in (ROOT / "pyproject.toml").read_text()
    assert "mkdocs build --strict" in (ROOT / ".ci" / "run").read_text()
    assert os.path.isfile(ROOT / "mkdocs.yml")
