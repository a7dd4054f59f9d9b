"""The import rule of docs/architecture.md, checked on every module of the package.

A layer may import only the layers listed for it; a module that breaks the rule fails
here with its file and line, before a reviewer has to notice."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

# layer -> the aiprod layers it may import (besides itself and the package root).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "observability": {"domain"},
    "adapters": {"domain", "observability", "wiring.config"},
    "services": {"domain", "observability", "adapters", "wiring.runtime"},
    "wiring": {"domain", "observability", "adapters"},
    "http": {"domain", "observability", "adapters", "services", "wiring"},
}


def aiprod_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0].startswith("aiprod")]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "aiprod" and len(parts) > 1 else None


def test_every_module_belongs_to_a_layer() -> None:
    package = SHARED / "aiprod"
    loose = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    assert not loose, f"modules at the package root belong in a layer folder: {loose}"
    assert {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    offenders = []
    for path in sorted((SHARED / "aiprod" / layer).rglob("*.py")):
        for line, module in aiprod_imports(path):
            target = layer_of(module)
            if module.startswith("aiprod_dev"):
                offenders.append(f"{path.relative_to(SHARED)}:{line} imports {module}")
            elif target is None or target == layer:
                continue
            elif not any(module == f"aiprod.{allowed}" or module.startswith(f"aiprod.{allowed}.")
                         or (module == f"aiprod.{target}" and allowed == target)
                         for allowed in ALLOWED[layer]):
                offenders.append(f"{path.relative_to(SHARED)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_readme_layout_names_every_layer_and_tool_folder() -> None:
    readme = (SHARED.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    folders = [f"{p.name}/" for root in ("aiprod", "aiprod_dev")
               for p in (SHARED / root).iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert not [f for f in folders if f not in layout], "README's Layout misses a folder"
