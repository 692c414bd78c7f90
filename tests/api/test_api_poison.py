"""Poison sessions through a real server and a real `torpor worker` process: sessions that
break after creation are tried once each, end in a clear state with the error, and then
stay put: after 30 s their logs have stopped growing and none of them has a sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.api.conftest import make_runtime, serve
from torpor.api.app import create_app
from torpor.sandbox.images import ImageStore

POISON_SECONDS = 30


def write(path: Path, turns: list[dict]) -> str:
    path.write_text("".join(json.dumps(t) + "\n" for t in turns))
    return f"script:{path}"


def test_poison_sessions_fail_once_and_stay_put(api_home: Path, api_engine) -> None:
    scripts = Path(tempfile.mkdtemp(prefix="poison-"))
    db = scripts / "poison.db"
    rt = make_runtime(api_home, api_engine, db)
    app = create_app(rt, auth=False, workers=0, scripts=scripts)  # turns: the worker's
    ok = [{"text": "", "tool_calls": [{"name": "shell", "arguments": {"command": "true"}}]},
          {"text": "done"}]  # fmt: skip
    env = dict(os.environ, TORPOR_HOME=str(api_home), TORPOR_IMAGES=str(ImageStore().root))
    log = (scripts / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "torpor.cli.main", "worker", "--db", f"sqlite:///{db}",
         "--store", str(rt.store_url), "--pool", "0", "--standby", "0"],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as h:
            kinds = {}
            for kind in ("script-deleted", "script-garbled", "provider-rejects"):
                spec = write(scripts / f"{kind}.jsonl", ok)
                sid = h.post("/v1/sessions", json={"model": spec}).json()["id"]
                kinds[sid] = kind
                path = scripts / f"{kind}.jsonl"
                if kind == "script-deleted":
                    path.unlink()
                elif kind == "script-garbled":
                    path.write_text("this is not JSON\n")
                else:  # a request the provider rejects as invalid: not retried
                    write(path, [{"error": {"status": 400, "message": "bad request"}}])
            t0 = time.monotonic()
            for sid in kinds:
                assert h.post(f"/v1/sessions/{sid}/messages", json={"text": "go"}
                              ).status_code == 202  # fmt: skip

            def view() -> dict[str, tuple[str, str | None, int]]:
                out = {}
                for sid in kinds:
                    row = h.get(f"/v1/sessions/{sid}").json()
                    n = len(h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}
                                  ).json()["entries"])  # fmt: skip
                    out[sid] = (row["state"], row["error"], n)
                return out

            while True:  # until every one has had its one attempt
                now = view()
                if all(err for _, err, _ in now.values()):
                    break
                assert worker.poll() is None, (scripts / "worker.log").read_text()
                assert time.monotonic() - t0 < POISON_SECONDS, now
                time.sleep(0.5)
            time.sleep(max(0.0, POISON_SECONDS - (time.monotonic() - t0)))
            later = view()
            assert later == now, "a poison session's log kept growing"
            for sid, (state, err, _) in later.items():
                kind = kinds[sid]
                if kind == "provider-rejects":
                    assert state == "waiting" and "not retryable" in (err or ""), later[sid]
                else:
                    assert state == "failed" and f"{kind}.jsonl" in (err or ""), later[sid]
                entries = h.get(f"/v1/sessions/{sid}/log", params={"limit": 500}
                                ).json()["entries"]  # fmt: skip
                names = [e["content"].get("marker") for e in entries if e["kind"] == "marker"]
                assert names.count("sandbox_started") <= 1 and "recovery_note" not in names
            running = {i.name for i in api_engine.list(all=True)}
            assert not running & {f"s-{sid}" for sid in kinds}
            assert worker.poll() is None  # the worker itself is fine
    finally:
        worker.terminate()
        worker.wait(30)
        rt.close()
