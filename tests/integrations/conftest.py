"""Fixtures for the integrations' tests: an empty database of each kind, SQLite in a temp
dir or a database of a real throwaway PostgreSQL cluster (initdb + pg_ctl)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.db.pgtemp import TempCluster, server_bindir


@pytest.fixture(scope="session")
def pg() -> Iterator[TempCluster]:
    """One real PostgreSQL cluster for the whole test session, removed at the end."""
    if server_bindir() is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with TempCluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a new database of the shared cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'graph.db'}"
    cluster: TempCluster = request.getfixturevalue("pg")
    return cluster.url(cluster.create_db())
