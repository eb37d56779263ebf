"""The documentation in docs/ stays true to the code: operations, environment variables, links."""

import re
from pathlib import Path

from tests.api_operations import operation, schema_operations

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OPERATION_ROW = re.compile(r"^\| (GET|POST|PUT|PATCH|DELETE) `(/[^`?]*)[^`]*`", re.MULTILINE)
"""A row of an operations table in docs/api.md: `| POST `/api/v1/jobs/sync/` | ...`."""
ENV_READ = re.compile(r"env_\w+\(\s*\"([A-Z0-9_]+)\"")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def documented_operations() -> set[tuple[str, str]]:
    return {operation(m, p) for m, p in OPERATION_ROW.findall((DOCS / "api.md").read_text())}


def test_api_reference_lists_exactly_the_operations_of_the_schema() -> None:
    documented, generated = documented_operations(), schema_operations()
    assert len(documented) >= 19
    assert generated - documented == set(), "operations in the schema that docs/api.md does not list"
    assert documented - generated == set(), "operations docs/api.md lists that the schema does not have"


def test_every_environment_variable_of_the_settings_is_documented() -> None:
    read = set(ENV_READ.findall((ROOT / "jobsite" / "settings.py").read_text()))
    read |= set(ENV_READ.findall((ROOT / "gunicorn.conf.py").read_text()))
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", (DOCS / "configuration.md").read_text(), re.MULTILINE))
    assert len(read) > 40
    assert read - documented == set()


def test_every_management_command_is_documented() -> None:
    commands = {p.stem for p in ROOT.glob("*/management/commands/*.py") if not p.stem.startswith("_")}
    text = (DOCS / "configuration.md").read_text()
    assert commands - set(re.findall(r"`([a-z_]+)[ `]", text)) == set()


def test_readme_and_docs_link_only_inside_the_repository() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    assert len(pages) >= 5
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, page
        for target, _anchor in MARKDOWN_LINK.findall(text):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).resolve().is_relative_to(ROOT), (page, target)
            assert (page.parent / target).exists(), (page, target)


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```")]
    assert [line.split("#")[0].strip() for line in block] == ["python3 -m jobsite run", "python3 -m jobsite test"]
