"""Bad sessions end, they don't loop: refused at creation when they could never run, failed
once (with the error, no sandbox left) when they break later, and a turn that keeps dying
stops being recovered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.runtime.test_runtime_sessions import markers, shell
from torpor.context import Entry
from torpor.runtime.core import InvalidSession, Runtime, Worker
from torpor.runtime.recovery import MAX_RECOVERIES, recoveries_in_a_row


@pytest.fixture()
def no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                "ANTHROPIC_AUTH_TOKEN"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "kw, says",
    [
        ({"model": "openai:gpt-4o-mini"}, "no API key: set OPENAI_API_KEY"),
        ({"model": "anthropic:claude-sonnet-4-5"}, "no API key: set ANTHROPIC_API_KEY"),
        ({"model": "script:/nonexistent/turns.jsonl"}, "/nonexistent/turns.jsonl"),
        ({"model": "script:/etc/passwd"}, "/etc/passwd:1"),
        ({"model": "gpt-4o"}, "should look like provider:name"),
        ({"model": "mistral:large"}, "unknown model provider 'mistral'"),
        ({"model": "SCRIPT", "image": "nope"}, "no such image"),
        ({"model": "SCRIPT", "tools": ["nope"]}, "unknown tool 'nope'"),
    ],
    ids=["openai-no-key", "anthropic-no-key", "script-missing", "script-not-jsonl",
         "no-provider", "unknown-provider", "image", "tool"],  # fmt: skip
)
def test_refused_at_creation_with_what_is_wrong(
    runtime: Runtime, script, no_provider_keys: None, kw: dict, says: str
) -> None:
    if kw["model"] == "SCRIPT":
        kw = {**kw, "model": script([{"text": "hi"}])}
    with pytest.raises(InvalidSession) as err:
        runtime.create_session(**kw)
    assert says in str(err.value)
    if "image" in kw:
        assert "torpor image pull" in str(err.value)
    assert runtime.sessions() == []  # nothing was made


def test_a_home_without_the_base_image_says_how_to_build_it(
    rt_home: Path, script, tmp_path: Path
) -> None:
    """A new TORPOR_HOME has an empty image store: 'base' is refused with the command
    that builds it, not with advice to pull it or to use 'base'."""
    from torpor.sandbox.gvisor import GVisorEngine
    from torpor.sandbox.images import ImageStore

    engine = GVisorEngine(tmp_path / "home", images=ImageStore(tmp_path / "images"))
    rt = Runtime(db=f"sqlite:///{tmp_path / 'torpor.db'}", store=f"file://{tmp_path / 's'}",
                 home=tmp_path / "home", engine=engine)  # fmt: skip
    try:
        for image in ("base", "torpor/base", "torpor/base:latest"):
            with pytest.raises(InvalidSession) as err:
                rt.create_session(model=script([{"text": "hi"}]), image=image)
            assert "torpor image build-base" in str(err.value), err.value
            assert str(tmp_path / "images") in str(err.value)
    finally:
        rt.close()


def test_a_session_that_breaks_after_creation_fails_once(
    runtime: Runtime, script, tmp_path: Path
) -> None:
    """Its script vanishes after creation, and a worker of another process (no model
    cache) takes the turn: one attempt, state failed with the error, no sandbox, and the
    log stops growing. A new message, once the script is back, is the retry."""
    spec = script([{"text": "working", "tool_calls": [shell("echo hi")]}, {"text": "done"}])
    path = Path(spec.removeprefix("script:"))
    s = runtime.create_session(model=spec)
    saved = path.read_text()
    path.unlink()
    other = Runtime(db=runtime.db_url, store=runtime.store_url, home=runtime.home,
                    engine=runtime.engine)  # fmt: skip
    try:
        s.post("go")
        out = Worker(other).run_once()
        assert out is not None and out.state == "failed"
        assert str(path) in (out.error or "")
        row = runtime.db.get(s.id)
        assert row.state == "failed" and str(path) in (row.error or "")
        entries = s.log()
        assert markers(entries, "sandbox_started") == []  # the model is opened first
        assert markers(entries, "error")[0]["error"] == out.error
        with pytest.raises(Exception, match="no such sandbox|not found|No such"):
            runtime.engine.inspect(f"s-{s.id}")
        # nothing more happens to it: no worker claims it, the log stays as it is
        n = len(entries)
        for _ in range(3):
            assert Worker(other).run_once() is None
        time.sleep(0.5)
        assert len(s.log()) == n
        # the user's retry: the script is back, a new message runs one turn
        path.write_text(saved)
        other2 = Runtime(db=runtime.db_url, store=runtime.store_url, home=runtime.home,
                         engine=runtime.engine)  # fmt: skip
        try:
            s.post("again")
            out = Worker(other2).run_once()
            assert out is not None and out.state == "waiting", out
            assert runtime.db.get(s.id).error is None
        finally:
            other2.close(drain_pools=False)
    finally:
        other.close(drain_pools=False)


def test_a_turn_that_keeps_dying_is_not_recovered_again(runtime: Runtime, script) -> None:
    """After MAX_RECOVERIES recoveries in a row without a wait point, the next worker to
    find the turn cut short fails the session with why, instead of a recovery loop."""
    s = runtime.create_session(model=script([{"text": "ok"}]))
    s.send("hi")
    epoch = runtime.log.acquire(s.id)
    runtime.log.append(s.id, [Entry.marker("state", state="running")], epoch=epoch)
    for _ in range(MAX_RECOVERIES):
        runtime.log.append(s.id, [Entry.marker("recovery_note", text="died", after_seq=1)],
                           epoch=epoch)  # fmt: skip
    runtime.db.update(s.id, state="running", lease_owner="dead-worker", lease_until=0)
    out = Worker(runtime).run_session(s.id)
    assert out.state == "failed"
    assert f"cut short {MAX_RECOVERIES} times in a row" in (out.error or "")
    assert runtime.db.get(s.id).state == "failed"
    assert Worker(runtime).run_once() is None


def test_recoveries_in_a_row_count_from_the_last_wait_point() -> None:
    def note() -> Entry:
        return Entry.marker("recovery_note", text="x", after_seq=3)

    def state(name: str) -> Entry:
        return Entry.marker("state", state=name)

    fallback = Entry.marker("recovery_note", text="older snapshot", failures=["a"])
    assert recoveries_in_a_row([]) == 0
    assert recoveries_in_a_row([state("waiting"), note(), state("running"), note()]) == 2
    assert recoveries_in_a_row([note(), note(), state("waiting"), state("running")]) == 0
    assert recoveries_in_a_row([note(), state("failed"), note()]) == 1
    assert recoveries_in_a_row([state("waiting"), fallback, note()]) == 1  # a fallback is no death


def test_an_image_gone_after_creation_fails_once(runtime: Runtime, script) -> None:
    s = runtime.create_session(model=script([{"text": "ok"}]))
    runtime.db.update(s.id, image="gone-since")  # as if it had been removed
    s.post("hi")
    out = Worker(runtime).run_once()
    assert out is not None and out.state == "failed"
    assert "no such image" in (out.error or "") and "gone-since" in (out.error or "")
    assert runtime.sessions(state="failed")[0].id == s.id
    n = len(s.log())
    assert Worker(runtime).run_once() is None
    assert len(s.log()) == n


def test_worker_serve_outlives_an_error_outside_a_turn(runtime: Runtime, script, monkeypatch,
                                                       caplog) -> None:  # fmt: skip
    """Worker.serve died on any exception but a lost lease; now it logs, waits and goes on
    (as the API's worker threads do)."""
    import threading

    w = Worker(runtime)
    real = runtime.db.claim_any
    fails = [2]

    def flaky(*a, **kw):  # type: ignore[no-untyped-def]
        if fails[0]:
            fails[0] -= 1
            raise RuntimeError("database is locked")
        return real(*a, **kw)

    monkeypatch.setattr(runtime.db, "claim_any", flaky)  # the real claim after two faults
    s = runtime.create_session(model=script([{"text": "served"}]))
    s.post("hi")
    stop = threading.Event()
    t = threading.Thread(target=w.serve, args=(stop,), kwargs={"poll": 0.05})
    t.start()
    try:
        deadline = time.time() + 30
        while runtime.db.get(s.id).state != "waiting":
            assert t.is_alive() and time.time() < deadline
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(30)
    assert fails[0] == 0
    assert "claiming or running a turn failed" in caplog.text
