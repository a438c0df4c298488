"""The core imports nothing above it: `worker` stands alone, and no package code imports the
benchmark or the tests. Read from the source (every import, module-level or inside a
function), so an import made only on some code path counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each package may not import, by top-level name.
FORBIDDEN = {
    "worker": {"ops", "producers", "bench", "tests"},
    "producers": {"bench", "tests"},
    "ops": {"bench", "tests"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names a module imports (relative imports stay inside its package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imported_packages(path) & FORBIDDEN[package]):
            found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    """No module of the package imports a package it must not depend on."""
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    """A lazy `from ops... import` inside a function is found, a relative one is not."""
    module = tmp_path / "lazy.py"
    module.write_text("import json\nfrom . import sibling\n\ndef run() -> None:\n"
                      "    from ops.reconcile import Reconciler\n    import bench.runner\n")
    assert imported_packages(module) == {"json", "ops", "bench"}
