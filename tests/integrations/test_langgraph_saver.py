"""TorporSaver under real LangGraph graphs (an agent node with a scripted model and a tool
node), on SQLite and on a real PostgreSQL: the same states as LangGraph's own SQLite
saver at every checkpoint, forks of a thread, async runs, threads run at once, and the
storage itself: a growing message list costs what it appended, not the whole list again."""

from __future__ import annotations

import asyncio
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver

from tests.integrations.lg_agent import build, plain, user
from torpor.db.queries import langgraph as q
from torpor.integrations.langgraph import TorporSaver


@pytest.fixture
def saver(url: str):
    s = TorporSaver(url)
    yield s
    s.close()


def cfg(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}


def history(graph: Any, config: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every checkpoint of a thread, newest first, as comparable tuples."""
    return [(plain(s.values.get("messages", [])), s.next, s.metadata["step"],
             s.metadata["source"], len(s.tasks))
            for s in graph.get_state_history(config)]


def value_rows(saver: TorporSaver, thread: str, channel: str = "messages") -> list[tuple]:
    with saver.db.read() as tx:
        return tx.all("SELECT version, base, depth FROM langgraph_values WHERE thread_id = %s "
                      "AND channel = %s ORDER BY version", (thread, channel))


def test_every_checkpoint_reads_as_with_langgraphs_own_saver(saver: TorporSaver,
                                                             tmp_path: Path):
    ours = build(calls=3).compile(checkpointer=saver)
    with SqliteSaver.from_conn_string(str(tmp_path / "lg.db")) as lg_saver:
        theirs = build(calls=3).compile(checkpointer=lg_saver)
        for turn in range(3):
            a = ours.invoke(user(turn), cfg("t"))
            b = theirs.invoke(user(turn), cfg("t"))
            assert plain(a["messages"]) == plain(b["messages"])
        expected = history(theirs, cfg("t"))
        assert history(ours, cfg("t")) == expected
    assert len(expected) == 3 * (2 * 3 + 3)  # per turn: input, 3 x (agent, tools), agent
    last = ours.get_state(cfg("t")).values["messages"]
    assert len(last) == 3 * 8 and last[-1].content == "Turn 3 done."
    # the messages after the first version were stored as appended items
    rows = value_rows(saver, "t")
    assert rows[0][1] is None and all(base is not None for _, base, _ in rows[1:])


def test_a_fork_reads_its_own_branch_and_leaves_the_other(saver: TorporSaver, tmp_path: Path):
    ours = build(calls=2).compile(checkpointer=saver)
    with SqliteSaver.from_conn_string(str(tmp_path / "lg.db")) as lg_saver:
        theirs = build(calls=2).compile(checkpointer=lg_saver)
        results = []
        for graph in (ours, theirs):
            graph.invoke(user(0), cfg("t"))
            end_of_turn_0 = graph.get_state(cfg("t")).config
            graph.invoke(user(1), cfg("t"))
            main = graph.get_state(cfg("t"))
            # back to the end of turn 0, and on from there with another message
            graph.invoke(user(7), end_of_turn_0)
            fork = graph.get_state(cfg("t"))
            results.append((plain(main.values["messages"]), plain(fork.values["messages"]),
                            plain(graph.get_state(main.config).values["messages"]),
                            history(graph, cfg("t"))))
        assert results[0] == results[1]
    main, fork, main_again, _ = results[0]
    assert [m[1] for m in fork if m[0] == "human"] == ["user-0", "user-7"]
    assert main_again == main and [m[1] for m in main if m[0] == "human"] == ["user-0",
                                                                            "user-1"]


def test_a_growing_list_is_stored_as_what_it_appended(saver: TorporSaver):
    graph = build(calls=10, size=400).compile(checkpointer=saver)
    stored, whole = [], []
    for turn in range(8):
        out = graph.invoke(user(turn), cfg("t"))
        with saver.db.read() as tx:
            stored.append(q.thread_bytes(tx, "t")["langgraph_values"])
        whole.append(len(saver.serde.dumps_typed(out["messages"])[1]))
    added = [b - a for a, b in zip(stored, stored[1:], strict=False)]
    # every turn appends the same messages, and costs the same bytes: linear growth (whole
    # lists would cost more at each turn, 8x the first turn's by the last)
    assert max(added) < 1.2 * min(added), added
    # all the thread's values take about the bytes of its final list, not the sum of all
    # the lists it held (21 versions a turn)
    assert stored[-1] < 1.5 * whole[-1], (stored[-1], whole[-1])
    assert whole[-1] > 8 * 10 * 400


class Pickled:
    """A serializer other than LangGraph's default (as an EncryptedSerializer would be)."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return "pickle", pickle.dumps(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        assert data[0] == "pickle"
        return pickle.loads(data[1])


def test_another_serializer_stores_and_reads_the_same(url: str):
    with TorporSaver(url, serde=Pickled()) as saver:
        graph = build(calls=3).compile(checkpointer=saver)
        for turn in range(2):
            out = graph.invoke(user(turn), cfg("t"))
        assert plain(graph.get_state(cfg("t")).values["messages"]) == plain(out["messages"])
        rows = value_rows(saver, "t")
        assert rows[0][1] is None and all(base is not None for _, base, _ in rows[1:])
        with saver.db.read() as tx:
            assert {r[0] for r in tx.all("SELECT DISTINCT type FROM langgraph_values")} == {
                "pickle"}


def test_full_every_bounds_the_chain_a_read_walks(url: str):
    with TorporSaver(url, full_every=4) as saver:
        graph = build(calls=5).compile(checkpointer=saver)
        for turn in range(2):
            graph.invoke(user(turn), cfg("t"))
        rows = value_rows(saver, "t")
        assert max(depth for _, _, depth in rows) == 3
        assert sum(base is None for _, base, _ in rows) == (len(rows) + 3) // 4  # 1 in 4
        assert [m.id for m in graph.get_state(cfg("t")).values["messages"]][-2:] == [
            "tool-call-2-4", "ai-2-end"]
        assert len(list(saver.list(cfg("t")))) == 2 * (2 * 5 + 3)
        for state in graph.get_state_history(cfg("t")):  # each checkpoint rebuilds
            msgs = state.values.get("messages", [])
            assert [m.id for m in msgs] == sorted({m.id for m in msgs}, key=[
                m.id for m in msgs].index)


def _checkpoint(messages: list[Any], version: str, step: int) -> tuple[dict, dict]:
    cp = empty_checkpoint()
    cp["channel_values"] = {"messages": messages}
    cp["channel_versions"] = {"messages": version}
    return cp, {"source": "loop", "step": step, "parents": {}}


def test_a_saver_never_extends_a_row_it_does_not_have(url: str):
    """Two savers (two processes) on one database: one remembers a version, the other
    deletes the thread and stores different messages under that same version; the
    first's next version must not be stored as items appended to the other's list."""
    a, b = TorporSaver(url), TorporSaver(url)
    try:
        one = [HumanMessage("one", id="1")]
        conf = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        cp, md = _checkpoint(one, "000000000001.aa", 0)
        first = a.put(conf, cp, md, {"messages": "000000000001.aa"})
        b.delete_thread("t")
        other = [HumanMessage("other", id="9"), HumanMessage("list", id="8")]
        cp, md = _checkpoint(other, "000000000001.aa", 0)
        b.put(conf, cp, md, {"messages": "000000000001.aa"})
        two = [*one, AIMessage("two", id="2")]
        cp, md = _checkpoint(two, "000000000002.bb", 1)
        second = a.put(first, cp, md, {"messages": "000000000002.bb"})
        got = b.get_tuple(second)
        assert got is not None
        assert [m.content for m in got.checkpoint["channel_values"]["messages"]] == [
            "one", "two"]
        assert value_rows(a, "t")[1][1] is None  # stored whole
        # ... while a saver that read the thread first (a new process) appends to it
        with TorporSaver(url) as c:
            read = c.get_tuple(second)
            assert read is not None
            four = [*read.checkpoint["channel_values"]["messages"], AIMessage("4", id="4")]
            cp, md = _checkpoint(four, "000000000003.dd", 2)
            fourth = c.put(second, cp, md, {"messages": "000000000003.dd"})
            got = c.get_tuple(fourth)
            assert got is not None and [m.content for m in got.checkpoint[
                "channel_values"]["messages"]] == ["one", "two", "4"]
        assert ("000000000003.dd", "000000000002.bb", 1) in value_rows(a, "t")
    finally:
        a.close()
        b.close()


def test_async_runs_read_and_write_as_sync_ones(saver: TorporSaver):
    graph = build(calls=2).compile(checkpointer=saver)

    async def run() -> tuple[list, list]:
        for turn in range(2):
            await graph.ainvoke(user(turn), cfg("a"))
        state = await graph.aget_state(cfg("a"))
        hist = [s async for s in graph.aget_state_history(cfg("a"), limit=5)]
        return plain(state.values["messages"]), [s.config for s in hist]

    messages, configs = asyncio.run(run())
    assert messages == plain(graph.get_state(cfg("a")).values["messages"])
    assert len(messages) == 2 * 6
    assert configs == [s.config for s in list(graph.get_state_history(cfg("a")))[:5]]
    asyncio.run(saver.adelete_thread("a"))
    assert graph.get_state(cfg("a")).values == {}


def test_threads_run_at_once_on_one_saver(saver: TorporSaver):
    graph = build(calls=3).compile(checkpointer=saver)
    errors: list[BaseException] = []

    def run(thread: str) -> None:
        try:
            for turn in range(3):
                graph.invoke(user(turn), cfg(thread))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for i in range(4):
        msgs = graph.get_state(cfg(f"t{i}")).values["messages"]
        assert len(msgs) == 3 * 8 and msgs[-1].content == "Turn 3 done."
