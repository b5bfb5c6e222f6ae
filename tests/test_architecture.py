"""The layout of docs/architecture.md: no import circles, between modules or between the package's parts.

The graph is drawn from the source with ``ast``, so it sees every import a reader sees: at module
level, inside functions (imported late only to start fast, they still make one module depend on
another) and under ``if TYPE_CHECKING``. ``from textrefiner.x import y`` is an import of the module
``textrefiner.x.y`` when there is one, else of ``textrefiner.x``. Importing ``textrefiner.x.y`` is
not counted as an import of the package ``textrefiner.x`` too, although Python runs its
``__init__`` first: which of its modules a package's ``__init__`` gathers is its own edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import textrefiner

ROOT = Path(textrefiner.__file__).parent
# the method itself: it runs on plain tensors and knows nothing of training, data or models
CORE = ("aggregation", "alignment", "cache", "config", "losses", "refiner")
# the model glue (``models``, and the documented modules ``hooks`` and ``openai_clip`` that re-export it) and all above it
ABOVE_CORE = (
    "cli", "data", "demo", "engine", "hooks", "learners", "methods", "mini", "models", "openai_clip", "recipes", "results", "training", "viz",
)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _imported(module: str, package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> list[str]:
    """The textrefiner modules one import statement names."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's package, one level up per extra dot
            here = module.split(".") if package else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = []
    for target in targets:
        while target not in modules and "." in target:  # `import textrefiner.data.load` names that module
            target = target.rsplit(".", 1)[0]
        if target in modules and target != module:
            found.append(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every textrefiner module -> the textrefiner modules it imports (anywhere in its source)."""
    modules = _modules()
    graph = {}
    for name, (path, package) in modules.items():
        nodes = [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[name] = {t for n in nodes for t in _imported(name, package, n, modules)}
    return graph


def _part(module: str) -> str:
    """``textrefiner.training.loop`` -> ``training``; ``textrefiner.refiner`` -> ``refiner``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "textrefiner.training.loop" in graph["textrefiner.training.run"]  # module level, relative
    assert "textrefiner._card" in graph["textrefiner.refiner"]  # inside a method
    assert "textrefiner.training.checkpoint" in graph["textrefiner.training.loop"]  # `from . import checkpoint as ckpt`
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_between_modules():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_import_circles_between_the_parts():
    """Parts: the top-level modules and the sub-packages (``training``, ``data``, ``mini``, ...)."""
    parts: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        parts.setdefault(_part(module), set()).update(_part(m) for m in imports if _part(m) != _part(module))
    circle = find_circle(parts)
    assert circle is None, "import circle between parts: " + " -> ".join(circle)


def test_the_layers_point_one_way():
    graph = import_graph()
    for module, imports in graph.items():
        if _part(module) in CORE:
            above = sorted(m for m in imports if _part(m) in ABOVE_CORE)
            assert not above, f"{module}, part of the method, imports {above}"
        if _part(module) == "data":
            assert not [m for m in imports if _part(m) in ("mini", "training")], f"{module} imports {sorted(imports)}"
