"""LangGraph's own conformance suite for checkpointers (`langgraph-checkpoint-conformance`)
run against TorporSaver on SQLite and on a real PostgreSQL: every base capability (put,
put_writes, get_tuple, list, delete_thread) and the extended ones it implements
(delete_for_runs, copy_thread, prune) pass."""

from __future__ import annotations

import asyncio
import json

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    BASE_CAPABILITIES,
    EXTENDED_CAPABILITIES,
)

from torpor.integrations.langgraph import TorporSaver


def test_conformance_suite_passes_every_capability(url: str):
    @checkpointer_test(name="TorporSaver")
    async def saver():  # a fresh saver per capability, as the suite wants
        s = TorporSaver(url)
        try:
            yield s
        finally:
            s.close()

    report = asyncio.run(validate(saver))
    detail = json.dumps(report.to_dict(), indent=1)
    assert report.passed_all_base(), detail
    for cap in BASE_CAPABILITIES | EXTENDED_CAPABILITIES:
        result = report.results[cap.value]
        assert result.detected and result.passed, detail
        assert result.tests_passed > 0 and result.tests_failed == 0, detail
    assert report.conformance_level() == "FULL"
