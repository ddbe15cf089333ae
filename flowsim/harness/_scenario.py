"""Scenario files: a reproduced study as `run`, `claims` and `plot`, plus its configuration.

A scenario file is a Python file that ends with `scenario = fs.Scenario(...)`; see the README
section "Writing a scenario". This module defines the two records (`Scenario`, `Claim`), loads
a scenario from a file path, and applies `--quick` / `--set key=value` overrides to its config.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib.util
import json
import math
import pathlib
import re
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from typing import Any

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ScenarioError(Exception):
    """A problem a user can fix in a scenario file or on the command line (no traceback shown)."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of a paper, stated as a number with a threshold.

    **Arguments:**

    - `name`: short identifier, e.g. `"final_direction_error"`.
    - `value`: the measured number (stored as a float; NaN allowed, it then should not hold).
    - `threshold`: the number `value` is compared with.
    - `holds`: whether the claim holds for this run.
    - `note`: one line saying what is measured and how it is compared.

    `Claim.at_most` and `Claim.at_least` compute `holds` for the common comparisons.
    """

    name: str
    value: float
    threshold: float
    holds: bool
    note: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Claim name must be a non-empty string, got {self.name!r}.")
        for field in ("value", "threshold"):
            x = getattr(self, field)
            try:
                object.__setattr__(self, field, float(x))
            except (TypeError, ValueError):
                raise ValueError(
                    f"Claim {self.name!r}: {field} must be a real number (a float or a "
                    f"size-1 array), got {x!r}."
                ) from None
        object.__setattr__(self, "holds", bool(self.holds))
        object.__setattr__(self, "note", str(self.note))

    @classmethod
    def at_most(cls, name: str, value, threshold, note: str = "") -> Claim:
        """The claim `value ≤ threshold` (fails for NaN)."""
        value, threshold = float(value), float(threshold)
        return cls(name, value, threshold, value <= threshold, note)

    @classmethod
    def at_least(cls, name: str, value, threshold, note: str = "") -> Claim:
        """The claim `value ≥ threshold` (fails for NaN)."""
        value, threshold = float(value), float(threshold)
        return cls(name, value, threshold, value >= threshold, note)

    def to_json(self) -> dict:
        """A JSON-ready dict; non-finite floats become the strings "nan", "inf", "-inf"."""
        return {
            "name": self.name,
            "value": _json_float(self.value),
            "threshold": _json_float(self.threshold),
            "holds": self.holds,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: Mapping) -> Claim:
        return cls(d["name"], float(d["value"]), float(d["threshold"]), d["holds"], d.get("note", ""))


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """A reproduced study: what to compute, what the paper claims, and its figures.

    **Arguments:**

    - `name`: identifier, used as the folder name under `runs/` and `figures/`.
    - `title`: one line for `flowsim list` and the figure titles.
    - `reference`: the paper and the claim reproduced.
    - `config`: the full configuration, a flat dict of str → number, bool, str or a
      list/tuple of those. `flowsim run --set key=value` parses `value` by the type of
      the default here.
    - `quick`: overrides of `config` for a fast run (`flowsim run --quick`).
    - `run(config) -> dict`: does the computation; returns name → array, scalar, string,
      `fs.Trajectory`, or a dict of those (nested names are joined with "/"). Written as
      `run(config, resume=None)`, it is handed a `fs.harness.Resume` by `flowsim run`, and a
      rerun of an interrupted run continues from its checkpoints and finished sweep members.
    - `claims(results, config) -> list[fs.Claim]`: evaluated on the results as saved and reloaded.
    - `plot(results, config) -> dict[str, Figure]`: figures from the reloaded results only.
    - `showcase`: whether `flowsim run --showcase` (the README's main command, which must fit
      ~30 minutes on 2 cores) runs it; `flowsim run --all` runs every scenario either way.
    """

    name: str
    title: str
    reference: str
    config: Mapping[str, Any]
    run: Callable[[dict], Mapping[str, Any]]
    claims: Callable[[dict, dict], list] | None = None
    plot: Callable[[dict, dict], Mapping[str, Any]] | None = None
    quick: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    showcase: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not SAFE_NAME.match(self.name):
            raise ValueError(
                f"Scenario name {self.name!r} is not valid: use letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (it becomes a folder name)."
            )
        for field in ("title", "reference"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(f"Scenario {self.name!r}: {field} must be a string.")
        if not isinstance(self.config, Mapping):
            raise ValueError(f"Scenario {self.name!r}: config must be a dict, got {type(self.config).__name__}.")
        if not isinstance(self.showcase, bool):
            raise ValueError(f"Scenario {self.name!r}: showcase must be True or False, got {self.showcase!r}.")
        if not isinstance(self.quick, Mapping):
            raise ValueError(f"Scenario {self.name!r}: quick must be a dict, got {type(self.quick).__name__}.")
        for key in self.config:
            if not isinstance(key, str):
                raise ValueError(f"Scenario {self.name!r}: config keys must be strings, got {key!r}.")
        unknown = sorted(set(self.quick) - set(self.config))
        if unknown:
            raise ValueError(
                f"Scenario {self.name!r}: quick overrides unknown config keys {unknown}; "
                f"valid keys: {sorted(self.config)}."
            )
        if not callable(self.run):
            raise ValueError(f"Scenario {self.name!r}: run must be a function run(config) -> dict.")
        for field in ("claims", "plot"):
            f = getattr(self, field)
            if f is not None and not callable(f):
                raise ValueError(f"Scenario {self.name!r}: {field} must be a function (results, config) or None.")
        object.__setattr__(self, "config", types.MappingProxyType(dict(self.config)))
        object.__setattr__(self, "quick", types.MappingProxyType(dict(self.quick)))

    def make_config(self, quick: bool = False, overrides: Mapping[str, str] | None = None) -> dict:
        """The effective config: defaults, then `quick` overrides, then `--set` strings parsed by type."""
        config = dict(self.config)
        if quick:
            config.update(self.quick)
        base = dict(config)
        for key, text in (overrides or {}).items():
            config[key] = parse_override(self, key, text, base=base if quick else None)
        return config


# --------------------------------------------------------------------------------------------
# --set key=value


def parse_set_args(items: list[str]) -> dict[str, str]:
    """`["a=1", "b=x"]` → `{"a": "1", "b": "x"}`; refuses items without '='."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(f"--set {item!r}: expected key=value, e.g. --set log_t1=100.")
        out[key] = value.strip()
    return out


def parse_override(scenario: Scenario, key: str, text: str, base: Mapping | None = None) -> Any:
    """Parse `text` by the type of `scenario.config[key]`; unknown keys and bad values raise ScenarioError.

    `base` is the config the override applies to (the quick config under `--quick`): a refusal quotes
    its value, the one the user would otherwise get."""
    if key not in scenario.config:
        raise ScenarioError(
            f"--set {key}={text}: {scenario.name!r} has no config key {key!r}; "
            f"valid keys: {', '.join(sorted(scenario.config))}."
        )
    default = scenario.config[key]
    if base is not None and key in scenario.quick:
        current = f"quick value {base[key]!r}, full default {default!r}"
    else:
        current = f"default {default!r}"
    try:
        return _parse_like(default, text)
    except ValueError as e:
        raise ScenarioError(f"--set {key}={text}: {key} expects {_type_words(default)} ({current}); {e}") from None


def _type_words(default) -> str:
    if isinstance(default, bool):
        return "a bool (true/false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a comma-separated list" + (f" of {_type_words(default[0])[2:]}s" if default else "")
    if isinstance(default, dict):
        return "a JSON object"
    return "a Python literal"


def _parse_like(default, text: str):
    if isinstance(default, bool):
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{text!r} is not true/false.")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            x = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer.") from None
        if not x.is_integer():
            raise ValueError(f"{text!r} is not an integer.")
        return int(x)
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number.") from None
    if isinstance(default, str):
        return text
    if isinstance(default, (list, tuple)):
        if text.startswith(("[", "(")):
            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"{text!r} is not a list literal.") from None
            items = [str(i) for i in items]
        else:
            items = [i.strip() for i in text.split(",") if i.strip()]
        if default:
            parsed = [_parse_like(default[0], i) for i in items]
        else:
            parsed = [_literal(i) for i in items]
        return type(default)(parsed)
    if isinstance(default, dict):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"{text!r} is not a JSON object.") from None
        if not isinstance(value, dict):
            raise ValueError(f"{text!r} is not a JSON object.")
        return value
    return _literal(text)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------------------------
# Loading a scenario file


def load_scenario(path: str | pathlib.Path) -> tuple[Scenario, pathlib.Path]:
    """Import the file at `path` and return its `scenario` and the resolved path.

    Errors raised while importing are turned into a `ScenarioError` naming the file and line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        alt = pathlib.Path("scenarios") / f"{path}.py"
        if path.suffix == "" and alt.is_file():
            path = alt
        else:
            raise ScenarioError(f"no scenario file {str(path)!r}{_suggest(path)}.")
    if path.suffix != ".py":
        raise ScenarioError(f"{str(path)!r} is not a Python file; a scenario file ends in .py.")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_flowsim_scenario_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(module_name, None)
        raise ScenarioError(f"{_short(path)}:{e.lineno}: SyntaxError: {e.msg}") from e
    except BaseException as e:
        sys.modules.pop(module_name, None)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ScenarioError(describe_error(e, path, "while importing")) from e
    scenario = getattr(module, "scenario", None)
    if scenario is None:
        raise ScenarioError(
            f"{_short(path)} defines no `scenario`; end the file with `scenario = fs.Scenario(name=..., "
            "title=..., reference=..., config=..., run=run, claims=claims, plot=plot)`."
        )
    if not isinstance(scenario, Scenario):
        raise ScenarioError(
            f"{_short(path)}: `scenario` is a {type(scenario).__name__}, expected an fs.Scenario."
        )
    return scenario, path


def _suggest(path: pathlib.Path) -> str:
    """'; did you mean …?' for a mistyped scenario name or file, from the files next to it and in ./scenarios."""
    folders = [path.parent, pathlib.Path("scenarios")]
    known = {}
    for folder in folders:
        if folder.is_dir():
            for f in sorted(folder.glob("*.py")):
                if not f.name.startswith("_"):
                    known.setdefault(f.stem, f)
    close = difflib.get_close_matches(path.stem, list(known), n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(str(known[c]) for c in close) + "?"
    return " (run `flowsim list` for the scenarios in ./scenarios)"


def bundled_scenarios() -> pathlib.Path:
    """The scenario folder of the flowsim checkout this package was installed from (`<project>/scenarios`)."""
    return pathlib.Path(__file__).resolve().parents[2] / "scenarios"


def scenario_by_name(name, recorded_file=None) -> tuple[Scenario, pathlib.Path]:
    """The known scenario called `name`: `./scenarios/<name>.py`, else the bundled `scenarios/<name>.py`.

    Used to redraw a run folder, which names its scenario but must never choose the code that runs: only
    the name (and the bare file name of `recorded_file`, for a scenario whose file is named differently)
    is taken from it, checked to be a plain name, and looked up in these two folders."""
    stems = [name]
    if isinstance(recorded_file, str) and recorded_file:
        stems.append(pathlib.PurePath(recorded_file.replace("\\", "/")).stem)
    folders = [pathlib.Path("scenarios"), bundled_scenarios()]
    for stem in stems:
        if not isinstance(stem, str) or not SAFE_NAME.match(stem):
            continue
        for folder in folders:
            candidate = folder / f"{stem}.py"
            if candidate.is_file():
                return load_scenario(candidate)
    raise ScenarioError(
        f"no known scenario named {name!r} in ./scenarios or {bundled_scenarios()}; pass its file with "
        "--scenario FILE (a run folder never says which code to run)."
    )


def describe_error(exc: BaseException, path: pathlib.Path, during: str) -> str:
    """One line: the innermost frame of `exc` inside the file `path`, and the exception itself."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _same_file(f.filename, path)]
    message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if not frames:
        return f"{_short(path)}: error {during}: {message}"
    f = frames[-1]
    where = f"{_short(path)}:{f.lineno}"
    code = f"\n    {f.line.strip()}" if f.line else ""
    func = "" if f.name == "<module>" else f" in {f.name}()"
    return f"{where}{func}: {message}{code}"


def _same_file(a: str, b: pathlib.Path) -> bool:
    try:
        return pathlib.Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _short(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def find_scenarios(directory: str | pathlib.Path = "scenarios") -> list[pathlib.Path]:
    """The scenario files `flowsim list` and `flowsim run --all` use: `DIR/*.py`, not starting with '_'."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise ScenarioError(
            f"no scenario folder {str(directory)!r}: `flowsim list` and `flowsim run --all` look in "
            "./scenarios (run them from the project root, or pass --dir DIR)."
        )
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))
