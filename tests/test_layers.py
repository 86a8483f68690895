"""The library's layers: nothing under mia/ depends on the commands or on the training app, and no import cycles.

Read from the source (every ``import`` statement, those inside functions too; ``if TYPE_CHECKING:`` blocks
excepted, since they never run), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The entry points: `python -m mia` and the console scripts, which may import the commands they run.
ENTRY_POINTS = {"mia.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up (level - 1) packages from this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def library_graph() -> dict[str, set[str]]:
    """mia's modules and the mia modules each imports."""
    paths = {module_name(p): p for p in (REPO / "mia").rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in paths and i != name} for name, path in paths.items()}


def test_the_library_imports_neither_the_commands_nor_the_training_app():
    offenders = []
    for path in sorted((REPO / "mia").rglob("*.py")):
        name = module_name(path)
        if name.startswith("mia.cli") or name in ENTRY_POINTS:
            continue
        for imported in sorted(imports_of(path)):
            if imported.startswith(("mia.cli", "train_targets")):
                offenders.append(f"{name} imports {imported}")
    assert not offenders, "\n".join(offenders)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_library_has_no_import_cycle():
    # Packages' __init__ files re-export their modules; an edge into a package is an edge into its __init__.
    cycle = find_cycle(library_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_walk_finds_a_cycle_and_a_lazy_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "mia.runs.attack" in imports_of(REPO / "mia" / "cli" / "attack.py")
    lazy = imports_of(REPO / "mia" / "evaluation" / "result.py")  # plot_roc imports the figures inside itself
    assert "mia.reporting.figures" in lazy
