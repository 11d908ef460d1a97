"""The files an operator reads first: no merge leftovers, and every setting documented where the README says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crmbridge.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "mappings/README.md", "jobs/README.md", "docs/architecture.md", "bench/README.md", ".env.example"]


@pytest.mark.parametrize("name", DOCS)
def test_no_merge_conflict_markers(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        assert not re.match(r"^(<{7}|>{7}|={7})( |$)", line), f"{name}:{number}: merge conflict marker {line!r}"


def test_every_setting_is_in_env_example_and_readme() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    settings_paragraph = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    for field in Settings.model_fields:
        name = field.upper()
        assert re.search(rf"^#?\s*{ENV_PREFIX}{name}=", example, re.M), f".env.example lacks {ENV_PREFIX}{name}"
        assert f"`{name}`" in settings_paragraph, f"README's Settings paragraph lacks `{name}`"
