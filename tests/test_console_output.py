"""Console output belongs to the CLI: nothing under platform/ (except platform/cli/), clients/ or
coordinator/ prints, echoes, uses rich or writes to sys.stdout; library code logs instead.

Every module is parsed (never imported), so the rule also covers code no test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("platform", "clients", "coordinator")
CLI = ROOT / "platform" / "cli"
ECHOES = {"echo", "secho"}  # typer's (click's) console writers
STREAMS = {"stdout", "__stdout__"}


def _modules() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if CLI not in path.parents
    )


def console_writes(source: str) -> list[tuple[int, str]]:
    """(line, what) for every way ``source`` can reach the console."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id == "print":
            found.append((node.lineno, "print"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, attr = node.value.id, node.attr
            if owner in ("typer", "click") and attr in ECHOES:
                found.append((node.lineno, f"{owner}.{attr}"))
            elif owner == "sys" and attr in STREAMS:
                found.append((node.lineno, f"sys.{attr}"))
            elif owner == "builtins" and attr == "print":
                found.append((node.lineno, "builtins.print"))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = {a.name for a in node.names}
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            imported = {module} if isinstance(node, ast.ImportFrom) else names
            roots = {n.split(".")[0] for n in imported}
            if "rich" in roots:
                found.append((node.lineno, "rich"))
            elif module in ("typer", "click") and names & ECHOES:
                found.append((node.lineno, f"{module}.{'/'.join(sorted(names & ECHOES))}"))
            elif module == "sys" and names & STREAMS:
                found.append((node.lineno, "sys.stdout"))
    return sorted(found)


def test_the_detector_finds_every_console_write() -> None:
    source = "\n".join(
        [
            "import sys, typer",
            "from rich.console import Console",
            "from typer import echo",
            "from sys import stdout",
            "print('x')",
            "typer.echo('x')",
            "sys.stdout.write('x')",
            "log = print",
            "import logging",
            "logging.getLogger(__name__).info('fine')",
        ]
    )
    assert [what for _, what in console_writes(source)] == [
        "rich",
        "typer.echo",
        "sys.stdout",
        "print",
        "typer.echo",
        "sys.stdout",
        "print",
    ]


def test_only_the_cli_writes_to_the_console() -> None:
    modules = _modules()
    assert len(modules) > 50 and any(p.parent.name == "coordinator" for p in modules)
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in modules
        for line, what in console_writes(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "console output outside platform/cli/ (use logging):\n" + "\n".join(
        offenders
    )
