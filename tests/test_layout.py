"""The architecture's dependency rule, checked on the imports: models <- tools <- agents <- serving,
memory used by agents, tools and serving; models imports nothing of the project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"models", "tools", "agents", "memory", "serving"}
ALLOWED = {
    "models": set(),
    "memory": set(),
    "tools": {"models", "memory"},
    "agents": {"tools", "memory"},
    "serving": {"agents", "tools", "memory", "models"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PACKAGES


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_dependencies_point_one_way(package: str) -> None:
    for path in (REPO / package).rglob("*.py"):
        illegal = _imports(path) - ALLOWED[package] - {package}
        assert not illegal, f"{path.relative_to(REPO)} imports {sorted(illegal)}"


def _project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("room", "never"),
    [
        ("serving/api", ("serving.cli",)),  # the HTTP app and the operator CLI are siblings, not layers
        ("serving/cli", ("serving.api",)),
        ("serving", ("agents.nodes", "agents.graph", "agents.intake", "agents.state", "agents.context")),
    ],
)
def test_rooms_inside_serving_keep_apart(room: str, never: tuple[str, ...]) -> None:
    allowed_agent_entry = {"serving/services.py": {"agents.graph"}}  # where the compiled graph is built
    for path in (REPO / room).rglob("*.py"):
        relative = str(path.relative_to(REPO))
        bad = {
            name
            for name in _project_imports(path)
            if name.startswith(never) and name not in allowed_agent_entry.get(relative, set())
        }
        assert not bad, f"{relative} imports {sorted(bad)}"
