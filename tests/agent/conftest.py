"""Fixtures for the agent tests: a fake LLM HTTP server per test. A test module that
runs real sandboxes says so with `NEEDS_RUNSC = True` (as in tests/sandbox, whose modules
need runsc unless they say otherwise): its tests are skipped without root and runsc and
marked `runsc`; the others need neither."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .fakellm import FakeLLM


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = os.geteuid() != 0 or shutil.which("runsc") is None
    for item in items:
        module = getattr(item, "module", None)
        if "tests/agent/" in str(item.fspath) and getattr(module, "NEEDS_RUNSC", False):
            item.add_marker(pytest.mark.runsc)
            if missing:
                item.add_marker(pytest.mark.skip(reason="needs root and runsc "
                                                 "(run scripts/setup.sh)"))  # fmt: skip


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A started FakeLLM on 127.0.0.1 (free port); stopped after the test."""
    fake = FakeLLM().start()
    try:
        yield fake
    finally:
        fake.stop()
