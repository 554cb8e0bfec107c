"""The apps share only the protocol: neither imports the other, nor does the protocol import them.

Every import is read from the source with ``ast``: module-level ones, ones inside functions and
classes, relative ones, and ``importlib.import_module``/``__import__`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS, COORDINATOR, FEDERATION = "veilfed.clients", "veilfed.coordinator", "veilfed.federation"
# Where each package's sources live (setup.py's package-dir).
SOURCES = {
    CLIENTS: ROOT / "clients",
    COORDINATOR: ROOT / "coordinator",
    FEDERATION: ROOT / "platform" / "federation",
}
FORBIDDEN = {
    CLIENTS: (COORDINATOR,),
    COORDINATOR: (CLIENTS,),
    FEDERATION: (CLIENTS, COORDINATOR),
}
_DYNAMIC = {"import_module", "__import__"}


def _module_name(package: str, path: Path) -> str:
    rel = path.relative_to(SOURCES[package]).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, at any depth."""
    found: list[tuple[int, str]] = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join([*anchor, *(node.module.split(".") if node.module else [])])
            found.append((node.lineno, stem))
            found += [(node.lineno, f"{stem}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC and node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value)))
    return found


def _violations(package: str) -> list[str]:
    out = []
    for path in sorted(SOURCES[package].rglob("*.py")):
        module = _module_name(package, path)
        source = path.read_text(encoding="utf-8")
        for line, name in imported_modules(source, module, path.name == "__init__.py"):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_may(package):
    assert list(SOURCES[package].rglob("*.py")), f"no sources found for {package}"
    assert _violations(package) == []


def test_the_scan_sees_hidden_relative_and_dynamic_imports():
    source = (
        "import os\n"
        "def f():\n"
        "    from veilfed.coordinator.server_app import Coordinator\n"
        "class C:\n"
        "    def g(self):\n"
        "        import veilfed.clients.trainer\n"
        "        importlib.import_module('veilfed.coordinator.run')\n"
        "from ..coordinator import strategies\n"
    )
    names = {name for _, name in imported_modules(source, "veilfed.clients.node_state")}
    assert "veilfed.coordinator.server_app" in names
    assert "veilfed.clients.trainer" in names
    assert "veilfed.coordinator.run" in names
    assert "veilfed.coordinator.strategies" in names
