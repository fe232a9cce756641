"""The package's import structure: every module imports on its own, no module-level cycle, the CLI on top.

The library is what a second front end (a notebook, a web UI) builds on, so it
never imports hifikit.cli; the CLI's command modules import only the library
and the CLI's shared helpers (common, output), never each other's logic (main
assembles the commands, runs dispatches `runs show` to their renderers).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hifikit

PACKAGE = Path(hifikit.__file__).resolve().parent
# generated at build time: the pinned gguf-py and converter, not hifikit's own code
GENERATED = ("_gguf", "convert")
CLI_SHARED = {"hifikit.cli.common", "hifikit.cli.output"}
CLI_DISPATCH = {"hifikit.cli.main", "hifikit.cli.runs"}


def module_names() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[1] in GENERATED:
            continue
        name = ".".join(rel.with_suffix("").parts)
        out.append(name.removesuffix(".__init__"))
    return out


MODULES = module_names()


def _path(name: str) -> Path:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports(name: str, module_level: bool) -> set[str]:
    """The hifikit modules `name` imports: at module level only (what runs on import), or anywhere."""
    tree = ast.parse(_path(name).read_text())
    package = name if _path(name).name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only, never executed
            if isinstance(child, ast.ImportFrom) and (top or not module_level):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    full = f"{target}.{alias.name}"
                    found.add(full if full in MODULES else target)
            elif isinstance(child, ast.Import) and (top or not module_level):
                found.update(a.name for a in child.names)
            visit(child, top and not nested)

    visit(tree, True)
    return {m for m in found if m.startswith("hifikit") and m in MODULES and m != name}


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_in_a_fresh_interpreter(name, tmp_path):
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr


def test_no_module_level_import_cycle():
    graph = {m: imports(m, module_level=True) for m in MODULES}
    done: set[str] = set()

    def walk(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for dep in sorted(graph[m]):
            walk(dep, path + [m])
        done.add(m)

    for m in MODULES:
        walk(m, [])


def test_the_library_never_imports_the_cli():
    offenders = {m: sorted(d for d in imports(m, module_level=False) if d.startswith("hifikit.cli"))
                 for m in MODULES if not m.startswith("hifikit.cli")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_web_ui_is_a_front_end_like_the_cli():
    """hifikit.ui calls the library and nothing imports it but the CLI's `ui` command (which launches it)."""
    front = {m: sorted(d for d in imports(m, module_level=False) if d.startswith("hifikit.ui"))
             for m in MODULES if not m.startswith(("hifikit.ui", "hifikit.cli.ui"))}
    assert {m: d for m, d in front.items() if d} == {}
    into_cli = {m: sorted(d for d in imports(m, module_level=False) if d.startswith("hifikit.cli"))
                for m in MODULES if m.startswith("hifikit.ui")}
    assert {m: d for m, d in into_cli.items() if d} == {}


def test_cli_commands_import_only_the_library_and_the_shared_helpers():
    commands = [m for m in MODULES if m.startswith("hifikit.cli.") and m not in CLI_SHARED | CLI_DISPATCH]
    offenders = {m: sorted(d for d in imports(m, module_level=False) if d.startswith("hifikit.cli.")
                           and d not in CLI_SHARED) for m in commands}
    assert {m: d for m, d in offenders.items() if d} == {}
    assert not [d for d in imports("hifikit.cli.output", False) | imports("hifikit.cli.common", False)
                if d.startswith("hifikit.cli.") and d not in CLI_SHARED]


def test_the_test_oracle_is_not_shipped():
    """tests/hifi_ref.py, the numpy reference of the HIFI blocks, is not part of the package."""
    assert "hifikit.hifi_ref" not in MODULES and not (PACKAGE / "hifi_ref.py").exists()
