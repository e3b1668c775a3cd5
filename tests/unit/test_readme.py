"""The README stays true: its configuration table to the settings the service reads, its Development
section to the modules there are."""

from __future__ import annotations

from service.settings import SETTINGS
from tests.conftest import REPO


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    for doc in SETTINGS.values():
        default = f"`{doc.default}`" if doc.default else "unset"
        assert f"| `{doc.env}` | {default} |" in readme, doc.env


def _development_tree() -> set[str]:
    """The paths the README's Development section lists under service/ (`pipeline/`, `pipeline/api.py`)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Development\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder) of the folders above the current line
    inside = False
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        token = line.strip().split("  ", 1)[0]
        if indent == 0:
            inside = token == "service/"
            stack = []
            continue
        if not inside or indent >= 20:  # a description's continuation
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(folder for _, folder in stack) + token
        listed.add(path)
        if token.endswith("/"):
            stack.append((indent, token))
    return listed


def test_the_development_section_lists_every_module() -> None:
    service = REPO / "service"
    actual = {
        str(p.relative_to(service)) + ("/" if p.is_dir() else "")
        for p in service.rglob("*")
        if "__pycache__" not in p.parts
        and ((p.suffix == ".py" and not p.name.startswith("__")) or (p.is_dir() and (p / "__init__.py").exists()))
        and (p.relative_to(service).parts[0] != "_gen" or p == service / "_gen")
    }
    listed = _development_tree()
    assert listed - actual == set(), "listed in README's Development section, but not in service/"
    assert actual - listed == set(), "in service/, but not in README's Development section"
