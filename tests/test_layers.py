"""The package's imports run one way: no cycles, and no module imports a layer above its own.

Every ``import`` counts, at the top of a module or inside a function or a ``TYPE_CHECKING``
block: a lazy import of a higher layer is still a dependency that runs upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tessy"

#: Layers, lowest first. A module belongs to the layer of its longest listed prefix and may
#: import its own layer and the ones below. Within a layer the cycle check keeps order.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "text", "version", "records", "jsonl", "retry", "workers", "prompts", "presets", "shard"),
    ("backends", "boundary", "hf", "models", "tokenizers", "formats", "scoring", "view", "fakes", "verify"),
    ("config",),
    ("engine",),
    ("build",),
    (
        "data",
        "synth",
        "sharded",
        "ray_runner",
        "scale",
        "report",
        "export",
        "demo",
        "bench",
        "predictor",
        "check",
        "compare",
        "verify_run",
    ),
    ("cli",),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, source: str, modules: dict[str, Path], *, is_package: bool = False) -> set[str]:
    """The package's modules that module ``name`` (whose code is ``source``) imports, anywhere."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & modules.keys()
            found |= submodules
            if target in modules and len(submodules) < len(node.names):
                found.add(target)  # a name defined in the module itself (not one of its submodules)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: _imports(name, path.read_text(encoding="utf-8"), modules, is_package=path.name == "__init__.py")
        for name, path in modules.items()
    }


def _layer(module: str) -> int | None:
    """The layer of a module below the package root (``None`` for the root itself)."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    for rank, names in enumerate(LAYERS):
        if parts[0] in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add its top-level name to LAYERS")


def test_every_module_is_in_a_layer():
    for module in _graph():
        _layer(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, targets in sorted(_graph().items()):
        rank = _layer(module)
        if rank is None:
            continue  # the public surface re-exports from every layer
        for target in sorted(targets):
            target_rank = _layer(target)
            if target_rank is None:
                upward.append(f"{module} imports the package root (import from the defining module)")
            elif target_rank > rank:
                upward.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components; any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .errors import ConfigError", {"tessy.errors"}),
        ("from . import hf", {"tessy.hf"}),
        ("from .backends import Backend", {"tessy.backends"}),
        ("from .backends import base", {"tessy.backends.base"}),
        ("def f():\n    from .config import load_config", {"tessy.config"}),
    ],
)
def test_the_import_walker_sees_each_kind_of_import(source: str, expected: set[str]):
    assert _imports("tessy.probe", source, _modules()) == expected


def test_every_error_class_lives_in_errors_py():
    """One error tree: a TessyError subclass defined anywhere else would be a second one."""
    import importlib
    import inspect

    from tessy.errors import TessyError

    elsewhere = []
    for module in _modules():
        if module.endswith("__main__"):
            continue  # importing it would run it
        loaded = importlib.import_module(module)
        for name, obj in vars(loaded).items():
            if inspect.isclass(obj) and issubclass(obj, TessyError) and obj.__module__ == module != "tessy.errors":
                elsewhere.append(f"{module}.{name}")
    assert not elsewhere, elsewhere
