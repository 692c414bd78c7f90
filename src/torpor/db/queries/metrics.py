"""The metrics' statements: what `torpor.api.metrics` reads at scrape time."""

from __future__ import annotations

from ..connection import Tx


def sessions_by_state(tx: Tx) -> dict[str, int]:
    """{state: number of sessions} for the states some session is in."""
    return {str(state): int(n) for state, n in
            tx.all("SELECT state, COUNT(*) FROM torpor_sessions GROUP BY state")}
