"""Dependencies flow one way: jobsite (infrastructure) <- accounts <- credits <- jobs (docs/architecture.md)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("jobsite", "accounts", "credits", "jobs")
"""Lowest first: a package may import those before it, never those after it."""
COMPOSITION_ROOTS = {"jobsite/urls.py", "jobsite/settings.py"}
"""Django's entry points that wire every app together; they name every layer by design."""


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _violations() -> list[str]:
    found = []
    for rank, layer in enumerate(LAYERS):
        above = set(LAYERS[rank + 1 :])
        for path in sorted((ROOT / layer).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in COMPOSITION_ROOTS:
                continue
            found += [f"{relative} imports {name}" for name in sorted(_imported_packages(path) & above)]
    return found


def test_no_import_runs_against_the_layers() -> None:
    assert _violations() == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from jobs.models import Job\nimport credits.services\n")
    assert _imported_packages(module) >= {"jobs", "credits"}
