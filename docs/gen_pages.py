"""The docs pages that are generated, not written: one page per scenario and the API reference.

Run by MkDocs as a hook (`hooks:` in mkdocs.yml): `on_files` adds the generated pages to the site in memory,
so nothing generated is ever committed or edited by hand. `python docs/gen_pages.py OUT` writes the same pages
to the folder OUT, to read them without building the site.

- A scenario's page comes from its file in `scenarios/` (the module docstring states the paper's claim and the
  setup; `fs.Scenario(name=, title=, reference=, config=, quick=, showcase=)` gives the rest, read statically),
  the figures in `figures/<name>/`, and the claims table of its latest full run, `runs/<name>/summary.json`
  (or a `summary.json` committed next to the figures). Without a summary the page says where the table comes from.
- The API reference lists every public name that each package's `__init__.py` re-exports
  (`from ._x import Foo as Foo`), so a new name appears without anyone editing a page.
"""

from __future__ import annotations

import ast
import json
import pathlib
import posixpath
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The packages whose public names the reference covers, each with its page and a one-line description.
PACKAGES = {
    "flowsim": ("reference/flowsim.md", "The engine: problems, losses, solves, trajectories, gradient descent."),
    "flowsim.networks": ("reference/networks.md", "Network families: linear tensor networks and ReLU networks."),
    "flowsim.analysis": ("reference/analysis.md", "Directions, margins, norms, ranks, KKT certificates and the "
                                                 "independent references long-horizon results are checked against."),
    "flowsim.harness": ("reference/harness.md", "Scenario files, the `flowsim` command, stored results, figures."),
    "flowsim.data": ("reference/data.md", "Data generators used by the scenarios and the tests."),
}


def _init_file(package: str) -> pathlib.Path:
    if package == "flowsim.data":
        return ROOT / "flowsim" / "_data.py"
    return ROOT.joinpath(*package.split(".")) / "__init__.py"


def public_names(package: str) -> list[tuple[str, str]]:
    """(public name, where it is defined) for every name `package` exports, in the order of its `__init__`.

    A name is public when it is re-exported under its own name (`from ._x import Foo as Foo`, or
    `from . import _data as data`); for `flowsim.data`, a module of its own, every top-level function or class
    whose name does not start with `_`. Subpackages of `flowsim` are listed too (their pages hold their names).
    """
    tree = ast.parse(_init_file(package).read_text(encoding="utf-8"))
    names = []
    if package == "flowsim.data":
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.append((node.name, package))
        return names
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            public = alias.asname or alias.name
            if public.startswith("_"):
                continue
            if alias.asname is None and node.level == 0:
                continue
            source = "." * node.level + (node.module or "")
            names.append((public, f"{source}.{alias.name}" if node.module else f"{source}{alias.name}"))
    return names


def _reexported_from(package: str, name: str) -> str | None:
    """The other covered package that documents `package.name` (a re-export of one of its names), if any."""
    if package != "flowsim":
        return None
    for other in ("flowsim.harness",):
        if name in {n for n, _ in public_names(other)}:
            return other
    return None


def reference_page(package: str) -> str:
    page, blurb = PACKAGES[package]
    lines = [f"# `{package}`", "", blurb, ""]
    subpackages = [p for p in PACKAGES if p.startswith(package + ".") and p.count(".") == package.count(".") + 1]
    options = "    options:\n      show_root_heading: true\n      show_root_full_path: true\n"
    tail = []
    for name, _source in public_names(package):
        full = f"{package}.{name}"
        if full in subpackages:
            tail += [f"## `{full}` {{ #{full} }}", "", f"{PACKAGES[full][1]} See [`{full}`]({_relative(page, PACKAGES[full][0])}).",
                     ""]
            continue
        other = _reexported_from(package, name)
        if other is not None:
            lines += [f"## `{full}` {{ #{full} }}", "", f"The same object as [`{other}.{name}`]"
                      f"({_relative(page, PACKAGES[other][0])}#{other}.{name}), re-exported at the top level.", ""]
            continue
        lines += [f"::: {full}", options]
    return "\n".join(lines + tail)


def reference_index() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings. Every public name is listed below, from each package's `__init__.py`.", ""]
    for package, (page, blurb) in PACKAGES.items():
        lines += [f"## [`{package}`]({_relative('reference/index.md', page)})", "", blurb, ""]
        names = [n for n, _ in public_names(package) if f"{package}.{n}" not in PACKAGES]
        lines.append(", ".join(f"[`{n}`]({_relative('reference/index.md', page)}#{package}.{n})" for n in names))
        lines.append("")
    return "\n".join(lines)


def _relative(from_page: str, to_page: str) -> str:
    """A link from one docs page to another (both given relative to docs/)."""
    return posixpath.relpath(to_page, posixpath.dirname(from_page) or ".")


# --- scenarios ----------------------------------------------------------------------------------------------


def scenario_files() -> list[pathlib.Path]:
    return sorted(p for p in (ROOT / "scenarios").glob("*.py") if not p.name.startswith("_"))


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _settings(node) -> dict:
    """The keyword values of a `dict(...)` call or a `{...}` literal; values that are computed read `(computed)`."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
        return {k.arg: _literal_or_computed(k.value) for k in node.keywords if k.arg}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal_or_computed(v) for k, v in zip(node.keys, node.values) if k is not None}
    return {}


class _Computed:
    def __repr__(self):
        return "(computed in the file)"


def _literal_or_computed(node):
    value = _literal(node)
    return _Computed() if value is None and not (isinstance(node, ast.Constant) and node.value is None) else value


def read_scenario(path: pathlib.Path) -> dict:
    """What a scenario file says about itself, read without running it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    info = {"file": f"scenarios/{path.name}", "docstring": ast.get_docstring(tree) or "", "name": path.stem,
            "title": path.stem, "reference": "", "config": {}, "quick": {}, "showcase": True}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "scenario" for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for keyword in node.value.keywords:
                if keyword.arg in ("name", "title", "reference", "showcase"):
                    value = _literal(keyword.value)
                    if value is not None:
                        info[keyword.arg] = value
                elif keyword.arg in ("config", "quick"):
                    info[keyword.arg] = _settings(keyword.value)
    return info


def latest_summary(name: str) -> tuple[dict | None, str | None]:
    """The summary of the scenario's latest full run, and where it was found."""
    for candidate in (ROOT / "runs" / name / "summary.json", ROOT / "figures" / name / "summary.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8")), str(candidate.relative_to(ROOT))
            except (OSError, ValueError):
                continue
    return None, None


def figures(name: str) -> list[pathlib.Path]:
    return sorted((ROOT / "figures" / name).glob("*.png"))


def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)) and len(value) > 8:
        text = f"{len(value)} values, {_cell(value[0])} … {_cell(value[-1])}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _escape_docstring(text: str) -> str:
    """Scenario docstrings are prose with maths in Unicode: keep `*` (θ*, x*) and `_` from turning into emphasis."""
    out = []
    for line in text.splitlines():
        out.append(line.replace("*", "\\*") if "`" not in line else line)
    return "\n".join(out)


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    """Shell lines with their comments in one column."""
    width = max(len(command) for command, _ in rows) + 2
    return [command.ljust(width) + comment for command, comment in rows]


def scenario_page(path: pathlib.Path) -> str:
    info = read_scenario(path)
    name = info["name"]
    summary, where = latest_summary(name)
    lines = [f"# {info['title']}", "",
             f"**Reproduces:** {info['reference']}  ", f"**File:** `{info['file']}`"
             + ("" if info["showcase"] else " · not in `flowsim run --showcase` (`--all` runs it)"), "",
             "## The claim and the setup", "", "*From the scenario file's docstring.*", "",
             _escape_docstring(info["docstring"]), "",
             "## Run it", "", "```bash", *_aligned([
                 (f"flowsim run {info['file']}", "# the full configuration"),
                 (f"flowsim run {name} --quick", "# a fast check"),
                 (f"flowsim plot runs/{name}", "# redraw the figures, recomputing nothing")]), "```",
             f"Results go to `runs/{name}/` (`runs/{name}-quick/` for `--quick`).", ""]
    pictures = figures(name)
    if pictures:
        lines += ["## Figures", "", f"From the full configuration (`figures/{name}/`, PNG and PDF).", ""]
        for picture in pictures:
            lines += [f"![{picture.stem}](../figures/{name}/{picture.name})", ""]
    lines += ["## Claims", ""]
    if summary is None:
        lines += [f"The claims table appears here after `flowsim run {info['file']}`: it is read from "
                  f"`runs/{name}/summary.json`, the summary of the latest full run, when the docs are built.", ""]
    else:
        claims = summary.get("claims", [])
        quick = summary.get("quick", False)
        versions = summary.get("versions", {})
        version_text = ", ".join(f"{k} {versions[k]}" for k in ("flowsim", "jax", "diffrax", "equinox")
                                 if isinstance(versions, dict) and k in versions)
        lines += [f"From `{where}`" + (" (a `--quick` run)" if quick else "")
                  + (f", {summary['wall_time_s'] / 60:.1f} min" if isinstance(summary.get("wall_time_s"), (int, float))
                     else "") + (f"; {version_text}" if version_text else "") + ".", "",
                  "| claim | value | threshold | holds | note |", "|---|---:|---:|---|---|"]
        for claim in claims:
            holds = "yes" if claim.get("holds") else "**FAILS**"
            lines.append(f"| `{claim.get('name')}` | {_cell(claim.get('value'))} | {_cell(claim.get('threshold'))} | "
                         f"{holds} | {_cell(claim.get('note', ''))} |")
        lines.append("")
    config = (summary or {}).get("config") or info["config"]
    if config:
        lines += ["## Configuration", "", "`flowsim run FILE --set key=value` overrides a value (parsed by the type "
                  "of its default); `--quick` applies the quick column.", "", "| key | full | quick |", "|---|---|---|"]
        for key, value in config.items():
            quick = info["quick"].get(key, "")
            lines.append(f"| `{key}` | {_cell(value)} | {_cell(quick) if key in info['quick'] else ''} |")
        lines.append("")
    return "\n".join(lines)


def scenarios_index() -> str:
    lines = ["# Scenarios", "",
             "Each page is generated from its scenario file (the docstring states the paper's claim and the setup), "
             "the committed figures and the latest run's `summary.json`. `flowsim list` prints the same list; "
             "[Write a scenario](../howto/write-scenario.md) says how to add one.", "",
             "| scenario | what it shows | reproduces |", "|---|---|---|"]
    for path in scenario_files():
        info = read_scenario(path)
        lines.append(f"| [`{info['name']}`]({info['name']}.md) | {_cell(info['title'])} | {_cell(info['reference'])} |")
    return "\n".join(lines) + "\n"


def generated_pages() -> dict[str, str]:
    """Every generated page: path relative to docs/ → Markdown."""
    pages = {"reference/index.md": reference_index(), "scenarios/index.md": scenarios_index()}
    for package, (page, _) in PACKAGES.items():
        pages[page] = reference_page(package)
    for path in scenario_files():
        pages[f"scenarios/{read_scenario(path)['name']}.md"] = scenario_page(path)
    return pages


# --- the MkDocs hook ----------------------------------------------------------------------------------------


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in generated_pages().items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, content=content))
    for picture in sorted((ROOT / "figures").glob("*/*.png")):
        uri = picture.relative_to(ROOT).as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(picture)))
    return files


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "generated-docs")
    for uri, content in generated_pages().items():
        target = out / uri
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        print(target)
