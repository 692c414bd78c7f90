"""docs/sandboxes.md names only what imports: every `torpor.*` name it mentions, and
every `from torpor... import ...` in it, resolve. Pure: reads the page, imports modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docnames import resolve, torpor_names

NEEDS_RUNSC = False  # tests/sandbox/conftest.py: these run anywhere

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sandboxes.md"


def documented_names() -> list[str]:
    text = PAGE.read_text()
    names = torpor_names(text)
    names.update(f"torpor.sandbox.{m}" for m in re.findall(r"`(Sandbox\.\w+)", text))
    for module, imported in re.findall(r"from (torpor[\w.]*) import ([\w, ]+)", text):
        names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
    return sorted(names)


def test_the_page_names_things():
    names = documented_names()
    assert "torpor.sandbox.Sandbox" in names and "torpor.sandbox.GVisorEngine" in names
    assert "torpor.sandbox.Sandbox.restore" in names
    assert len(names) > 10


@pytest.mark.parametrize("name", documented_names())
def test_documented_name_imports(name: str):
    resolve(name)
