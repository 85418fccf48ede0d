"""The module graph of the core is layered and one-way (docs/architecture.md).

Every import between modules of ``particlesampling`` (at module level or inside a function) must go
from a module to one on a strictly lower layer, except a package's ``__init__`` re-exporting its own
children; the graph has no cycle; ``array_api_compat`` is imported by ``_backend`` alone; and the
attention adapter uses only the public names of ``import particlesampling``. The layer table below
is the one in docs/architecture.md: a new module must be placed in both.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import particlesampling

REPO = pathlib.Path(__file__).resolve().parents[2]
CORE = REPO / "particlesampling"

#: layer of each module group (a sub-package counts as one group); imports go strictly downwards
LAYERS = {
    "_backend": 0, "validation": 0,
    "selection": 1, "random": 1, "kernels": 1, "step_sizes": 1, "targets": 1, "memory_budget": 1,
    "log_density": 1, "annealing": 1,
    "stein_kernel": 2,
    "bandwidths": 3,
    "stein_terms": 4, "diagnostics": 4,
    "tiled": 5, "random_batch": 5, "particle_flows": 5, "thinning": 5, "circuits": 5, "function_space": 5,
    "stein": 6,
    "samplers": 7,
    "runner": 8, "checkpoint": 8, "distributed": 8, "ensemble": 8,
    "plotting": 9,
    "cli": 10, "__main__": 11,
    "": 12,  # the package itself: the flat public API
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Modules of particlesampling that ``path`` imports anywhere (names relative to the package)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:  # from . import a, b: sub-modules (or names) of the package
                found.update(".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("particlesampling"):
            found.add(node.module[len("particlesampling"):].lstrip("."))
        elif isinstance(node, ast.Import):
            found.update(a.name[len("particlesampling"):].lstrip(".") for a in node.names
                         if a.name.split(".")[0] == "particlesampling")
    return found


def _group(module: str) -> str:
    return module.split(".")[0]


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in CORE.rglob("*.py")}


def test_every_module_has_a_layer():
    missing = sorted({_group(m) for m in _graph()} - set(LAYERS))
    assert not missing, f"modules without a layer in LAYERS and docs/architecture.md: {missing}"


def test_imports_go_strictly_down():
    wrong = []
    for module, deps in _graph().items():
        for dep in deps:
            if _group(dep) not in LAYERS:  # a name imported from a package (e.g. "from . import x")
                dep = dep.rsplit(".", 1)[0]
            same_group = _group(dep) == _group(module) and module != ""
            if same_group or (module == "" and _group(dep) in LAYERS and dep != ""):
                continue
            if LAYERS[_group(dep)] >= LAYERS[_group(module)]:
                wrong.append(f"{module or 'particlesampling'} (layer {LAYERS[_group(module)]}) imports "
                             f"{dep} (layer {LAYERS[_group(dep)]})")
    assert not wrong, "imports that do not go to a lower layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    full = _graph()
    cycle = _cycle({m: {d for d in deps if d in full} for m, deps in full.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an upward import in a throwaway copy of a module is reported."""
    fake = CORE / "kernels.py"
    text = fake.read_text() + "\n\ndef _oops():\n    from .samplers import svgd  # noqa: F401\n"
    monkeypatch.setattr(pathlib.Path, "read_text",
                        lambda self, *a, **k: text if self == fake else _read(self, *a, **k))
    with pytest.raises(AssertionError, match="kernels .layer 1. imports samplers"):
        test_imports_go_strictly_down()


_read = pathlib.Path.read_text


def test_array_api_compat_only_in_backend():
    users = sorted(_module_name(p) for p in CORE.rglob("*.py") if "array_api_compat" in p.read_text())
    assert users == ["_backend"]


def test_adapter_uses_public_core_names_only():
    public = set(particlesampling.__all__)
    wrong = []
    for path in (REPO / "attention_adapter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("particlesampling"):
                if node.module != "particlesampling":
                    wrong.append(f"{path.name}: from {node.module} import ...")
                wrong += [f"{path.name}: {a.name}" for a in node.names if a.name not in public]
            elif isinstance(node, ast.Import):
                wrong += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("particlesampling.")]
        # attribute access through `import particlesampling as ps`: ps.X with X public, and for a public
        # sub-module (ps.random.X) X in that sub-module's __all__
        aliases = {a.asname or a.name for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Import) for a in node.names if a.name == "particlesampling"}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr not in public:
                    wrong.append(f"{path.name}: {node.value.id}.{node.attr}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                  and isinstance(node.value.value, ast.Name) and node.value.value.id in aliases
                  and node.value.attr in public):
                sub = getattr(particlesampling, node.value.attr)
                if isinstance(sub, type(particlesampling)) and node.attr not in getattr(sub, "__all__", ()):
                    wrong.append(f"{path.name}: {node.value.value.id}.{node.value.attr}.{node.attr}")
    assert not wrong, "the adapter reaches past the public API:\n" + "\n".join(wrong)


def test_public_api_is_flat_and_importable():
    for name in particlesampling.__all__:
        assert hasattr(particlesampling, name), name
    for name in ("svgd", "spos", "sgld", "run_sampler", "stein_direction", "RBF", "IMQ", "Median",
                 "get_bandwidth", "get_target", "ksd", "mmd", "adam", "save_state", "load_state"):
        assert callable(getattr(particlesampling, name)), name
    # the run loop is a function at the top level, not a module shadowing it
    assert callable(particlesampling.run_sampler) and not hasattr(particlesampling, "run")


def _adapter_graph() -> dict[str, set[str]]:
    """Modules of ``attention_adapter`` each one imports (relative imports, anywhere in the file)."""
    adapter = REPO / "attention_adapter"
    graph = {}
    for path in adapter.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        graph[path.stem] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]):
    """One import cycle of ``graph`` as a list of modules, or ``None``."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_adapter_has_no_import_cycle():
    """attention_adapter's modules import each other one way too (function-level imports included:
    the recorder draws through plotting, so plotting must not import the recorder)."""
    graph = _adapter_graph()
    assert {"recorder", "plotting", "layouts", "families", "repulsive"} <= set(graph)
    assert _cycle(graph) is None, "import cycle in attention_adapter: " + " -> ".join(_cycle(graph))
    assert _cycle({**graph, "plotting": graph["plotting"] | {"recorder"}}) is not None  # the checker sees one
