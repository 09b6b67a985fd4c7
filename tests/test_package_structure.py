"""The package imports one way: no cycle (not even one hidden in a function-level import), and the
server side (the app, the composition root, the views, the verify path) never imports the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "authportal"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, known: set[str]) -> set[str]:
    """Every authportal module that `path` imports, wherever in the file the import statement is."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from . import notices` imports the module authportal.views.notices
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known}
    found.discard(name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = [path for path in root.rglob("*.py") if "migrations/versions" not in path.as_posix()]
    known = {module_name(path, root) for path in paths}
    return {module_name(path, root): imported_modules(path, root, known) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None. A package is not counted as importing its own
    submodules' parent (Python runs `a/__init__` before `a.b` anyway)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_server_side_never_imports_the_cli():
    graph = import_graph()
    reaches: dict[str, set[str]] = {}

    def reachable(module: str) -> set[str]:
        if module not in reaches:
            reaches[module] = set()
            for nxt in graph[module]:
                reaches[module] |= {nxt} | reachable(nxt)
        return reaches[module]

    server_side = ["authportal.server", "authportal.app", "authportal.portal", "authportal.views", "authportal.verify"]
    # the package authportal.cli and its modules (not authportal.client_certificates)
    offenders = {module: sorted(m for m in reachable(module) if m == "authportal.cli" or m.startswith("authportal.cli."))
                 for module in server_side}
    assert all(not cli for cli in offenders.values()), offenders


def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "authportal"
    (package / "views").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text("def create_app():\n    from .views import register\n")
    (package / "views" / "__init__.py").write_text("from ..app import create_app\n")
    assert find_cycle(import_graph(package)) == ["authportal.app", "authportal.views", "authportal.app"]


def test_the_cli_does_not_load_the_metrics_before_serve_chooses_their_storage():
    """`serve --workers 2` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client loads (it picks its storage at
    import): a command module that imported it on the way (security keys -> credentials -> metrics did) left
    /metrics empty with several workers."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, authportal.cli; print('prometheus_client' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
