"""The README's configuration table stays true to the settings the service reads."""

from __future__ import annotations

from service.settings import SETTINGS
from tests.conftest import REPO


def test_every_setting_is_in_the_readme_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    for doc in SETTINGS.values():
        default = f"`{doc.default}`" if doc.default else "unset"
        assert f"| `{doc.env}` | {default} |" in readme, doc.env
