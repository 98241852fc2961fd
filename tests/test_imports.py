"""No import cycles inside ``resnet_jax``: the package forms layers that only import downwards.

The graph is read from the source with ``ast``, so it sees every import a module can execute:
module level, inside functions (a lazy import that only dodges a cycle is still a cycle) and
under ``if TYPE_CHECKING:`` (a type named from a higher layer is a dependency on it too, and
``resnet_jax.data``'s lazily resolved exports are spelled out there).

Nodes are modules; a package is its ``__init__.py`` (node ``resnet_jax.training``). An import
statement in module ``M`` gives these edges (``resnet_jax`` names only; others are ignored):

- ``import a.b.c`` / ``from a.b import c`` where ``c`` is a submodule: an edge to ``a.b.c``;
- ``from a.b import name`` where ``name`` is not a submodule, or ``import a.b`` of a package:
  an edge to the package ``a.b`` itself, even if ``M`` lives inside it -- the name comes from its
  ``__init__``, which may not have finished running when ``M`` is imported by it;
- each package that Python initialises on the way (``a``, ``a.b`` for ``a.b.c``) and that does
  not contain ``M``: an edge to it, since its ``__init__`` runs first. The packages containing
  ``M`` are already initialised (or initialising: that is how ``M`` gets imported), so a
  package ``__init__`` that re-exports its submodules (edges parent -> child) is not a cycle
  merely because its children live inside it.

Relative imports are resolved against ``M``'s package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "resnet_jax"


def _module_names(root: Path = ROOT) -> dict[str, Path]:
    names = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _containing(name: str, modules: dict[str, Path]) -> set[str]:
    """The packages ``name`` lives in (itself too, if it is a package)."""
    own = {name} if _is_package(name, modules) else set()
    return own | set(_ancestors(name))


def _resolve_from(node: ast.ImportFrom, name: str, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str, node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The modules one import statement in module ``name`` depends on (see the docstring)."""
    imported, explicit = set(), set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            imported.add(alias.name)
            explicit.add(alias.name)
    elif isinstance(node, ast.ImportFrom):
        base = _resolve_from(node, name, modules)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in modules:
                imported.add(sub)
            else:
                imported.add(base)
                explicit.add(base)
    inside = _containing(name, modules)
    out = set()
    for target in imported:
        if target not in modules:
            continue  # outside resnet_jax
        chain = [*_ancestors(target), target]
        out.update(m for m in chain if m in modules and (m in explicit or m not in inside))
        if not _is_package(target, modules):
            out.add(target)
    out.discard(name)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the ``resnet_jax`` modules its imports (any of them, anywhere) depend on."""
    modules = _module_names(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _targets(name, node, modules)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each once: starting at its alphabetically first module."""
    found = []

    def extend(path: list[str], on_path: set[str]) -> None:
        for w in sorted(graph[path[-1]]):
            if w == path[0]:
                found.append([*path, w])
            elif w > path[0] and w not in on_path:  # smaller modules start their own cycles
                extend([*path, w], on_path | {w})

    for start in sorted(graph):
        extend([start], {start})
    return found


def test_resnet_jax_has_no_import_cycles():
    found = cycles(import_graph())
    shown = "\n".join(" -> ".join(c) for c in found)
    assert not found, (
        "import cycles inside resnet_jax; break each so modules import downwards only (e.g.\n"
        f"ConfigError comes from resnet_jax.errors, not training.config):\n{shown}"
    )


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_the_rules_of_the_graph(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from resnet_jax.sub import c\n",  # a re-export: parent -> child
        "a.py": "def f():\n    from resnet_jax import b  # lazy, still an edge\n",
        "b.py": "from . import a\n",
        "sub/__init__.py": "from resnet_jax.sub.c import C\n",
        "sub/c.py": "C = 1\n",
        "sub/d.py": "from resnet_jax.sub import C\n",  # a name of its package's __init__
        "e.py": "import resnet_jax.sub.c\n",  # runs sub/__init__ first: an edge to it too
    })
    graph = import_graph(root)
    assert graph["resnet_jax"] == {"resnet_jax.sub", "resnet_jax.sub.c"}
    assert graph["resnet_jax.sub.d"] == {"resnet_jax.sub"}
    assert graph["resnet_jax.e"] == {"resnet_jax.sub", "resnet_jax.sub.c"}
    assert cycles(graph) == [["resnet_jax.a", "resnet_jax.b", "resnet_jax.a"]]
    (root / PACKAGE / "sub/__init__.py").write_text("from resnet_jax.sub.d import *\n")
    assert ["resnet_jax.sub", "resnet_jax.sub.d", "resnet_jax.sub"] in cycles(import_graph(root))
