"""Fixtures for the agent tests: a fake LLM HTTP server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fakellm import FakeLLM


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A started FakeLLM on 127.0.0.1 (free port); stopped after the test."""
    fake = FakeLLM().start()
    try:
        yield fake
    finally:
        fake.stop()
