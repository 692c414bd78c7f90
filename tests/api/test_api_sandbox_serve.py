"""Sandboxes of a real `torpor serve` process: a SIGTERM pauses its live sandboxes (no
sandbox of the home runs after it, and the next server resumes them where they were); a
SIGKILL leaves them to the next server, which reaps them and says so in their records
(paused at their last snapshot, or killed when they had none)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.runtime.test_shutdown_reaping import TORPOR, free_port
from torpor.api.client import ApiError, Client
from torpor.runtime.core import Runtime
from torpor.sandbox.images import ImageStore

COUNTER = ("import os, time\nn = 0\nwhile True:\n    n += 1\n"
           "    open('/tmp/n.t', 'w').write(str(n))\n    os.replace('/tmp/n.t', '/tmp/n')\n"
           "    time.sleep(0.01)\n")


class Serve:
    def __init__(self, home: Path, db: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        started = log.read_text().count("serving http") if log.exists() else 0
        env = dict(os.environ, TORPOR_HOME=str(home), TORPOR_LOG=db,
                   TORPOR_SNAPSHOTS=f"file://{home / 'snapshots'}",
                   TORPOR_IMAGES=str(ImageStore().root))  # fmt: skip
        with log.open("ab") as err:
            self.p = subprocess.Popen([*TORPOR, "serve", "--port", str(self.port),
                                       "--workers", "0", "--grace", "2"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while self.output().count("serving http") <= started:
            assert self.p.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.05)
        self.client = Client(f"http://127.0.0.1:{self.port}", timeout=120)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int) -> int:
        self.client.close()
        self.p.send_signal(sig)
        try:
            return self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"serve did not exit on {sig}:\n{self.output()}") from None


def counter(sb) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while True:
        try:
            return int(sb.files.read_text("/tmp/n"))
        except ApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_sigterm_pauses_and_sigkill_is_recovered_by_the_next_server(home: Path,
                                                                     tmp_path: Path):  # fmt: skip
    db = f"sqlite:///{tmp_path / 'torpor.db'}"
    log = tmp_path / "serve.log"
    srv = Serve(home, db, log)
    sb = srv.client.sandboxes.create()
    sb.spawn(["python3", "-c", COUNTER])
    before = counter(sb)
    assert srv.stop(signal.SIGTERM) == 0, srv.output()
    rt = Runtime(db=db, home=home, store=f"file://{home / 'snapshots'}")
    try:
        assert rt.engine.list(all=True) == []  # nothing of the home runs
        row = rt.sandboxes.records.get(sb.id)
        assert row is not None and (row.state, row.note) == ("paused",
                                                             "paused: its server stopped")
    finally:
        rt.db.close()

    srv = Serve(home, db, log)
    again = srv.client.sandboxes.get(sb.id)
    assert again.info.state == "paused"
    assert counter(again) >= before  # resumed where it was
    snap = again.checkpoint("last-good")
    again.files.write("/work/after", "lost with the server")
    lone = srv.client.sandboxes.create()  # no snapshot: nothing to come back to
    assert srv.stop(signal.SIGKILL) == -signal.SIGKILL

    srv = Serve(home, db, log)  # reaps the orphans, and the records say so
    out = srv.output()
    assert f"sandbox {sb.id} was lost with the process that held it: paused" in out, out
    assert f"sandbox {lone.id} was lost with the process that held it: killed" in out, out
    row = srv.client.sandboxes.get(sb.id).info
    assert row.state == "paused" and row.snapshot == snap.id and "died" in str(row.note)
    assert srv.client.sandboxes.get(lone.id).info.state == "killed"
    revived = srv.client.sandboxes.get(sb.id)
    assert not revived.files.exists("/work/after")  # back at its last snapshot
    assert counter(revived) > 0
    assert srv.stop(signal.SIGTERM) == 0, srv.output()
