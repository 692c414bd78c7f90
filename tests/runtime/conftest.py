"""Fixtures for runtime tests: a real gVisor engine, a SQLite log, a file snapshot store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torpor.runtime.core import Runtime
from torpor.sandbox.gvisor import GVisorEngine


@pytest.fixture()
def runtime(rt_home: Path, rt_engine: GVisorEngine, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(
        db=f"sqlite:///{tmp_path / 'torpor.db'}",
        store=f"file://{rt_home / 'snapshots'}",
        home=rt_home,
        engine=rt_engine,
    )
    yield rt
    rt.close()
    for row in rt.sessions():
        with contextlib.suppress(Exception):
            rt_engine.remove(f"s-{row.id}", force=True)


@pytest.fixture()
def script(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a scripted model file; returns the model spec."""

    def make(turns: list[dict[str, Any]], name: str = "turns.jsonl") -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps(t) + "\n" for t in turns))
        return f"script:{path}"

    return make

