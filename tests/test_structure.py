"""The package's structure: no import cycles among flowsim's modules, and no module importing another's
private names. Read from the source with `ast` (every import, at module level or inside a function), so a
cycle hidden in a function-level import counts too.

Package `__init__.py` files are left out of the cycle check: they only re-export (a submodule importing a
sibling through its package runs the package's `__init__`, which is not a dependency of that submodule's code).
"""

import ast
import pathlib

import flowsim

ROOT = pathlib.Path(flowsim.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = ["flowsim", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return ".".join(part for part in (package, node.module) if part)


def _imports(module: str, path: pathlib.Path):
    """(imported flowsim module, imported names or None, line) for every import in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flowsim"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node) if node.level else (node.module or "")
            if not target.startswith("flowsim"):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:  # `from . import _x`: the module _x itself
                    yield submodule, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


def _graph():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        for target, _, _ in _imports(name, path):
            if target in MODULES and target != name and MODULES[target].name != "__init__.py":
                graph[name].add(target)
    return graph


def _find_cycle(graph):
    """One cycle as a list of modules (first == last), or None (depth-first search, colouring nodes)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_imports():
    # _smoothing imports _cache at module level; _cache is imported inside functions nowhere else than seen here.
    graph = _graph()
    assert "flowsim._cache" in graph["flowsim._smoothing"]
    assert "flowsim._simulate" in graph["flowsim._cache"]


def test_flowsim_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, path in MODULES.items():
        for target, imported, line in _imports(name, path):
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                offenders.append(f"{path.relative_to(ROOT.parent)}:{line} imports {imported} from {target}")
    assert not offenders, "\n".join(offenders)
