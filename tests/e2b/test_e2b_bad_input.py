"""What the E2B protocol answers to bad input, through the SDK and by hand: an unknown
sandbox, a wrong key, another tenant's sandbox, malformed Connect frames, and a paused
sandbox's command (resumed first with auto_resume; else refused, saying why)."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
from e2b import (
    AuthenticationException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
)

from tests.e2b.conftest import E2BServer


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def frames(body: bytes) -> list[tuple[int, dict]]:
    """The envelopes of a Connect stream's answer: (flags, JSON)."""
    out = []
    while body:
        flags, n = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5:5 + n])))
        body = body[5 + n:]
    return out


def test_an_unknown_sandbox(e2b_server: E2BServer):
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("sbx-000000000000")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("sbx-000000000000")
    assert Sandbox.kill("sbx-000000000000") is False
    r = httpx.get(f"{e2b_server.url}/files", params={"path": "/etc/hostname"},
                  headers={"E2b-Sandbox-Id": "sbx-000000000000",
                           "X-Access-Token": e2b_server.key})  # fmt: skip
    assert r.status_code == 502 and r.json() == {"code": 502, "message":
                                                 "sandbox sbx-000000000000 not found"}
    r = httpx.get(f"{e2b_server.url}/files", params={"path": "/x"})  # no sandbox named
    assert r.status_code == 400 and "E2b-Sandbox-Id" in r.json()["message"]


def test_an_unknown_template_is_a_404_naming_it(e2b_server: E2BServer):
    r = httpx.post(f"{e2b_server.url}/v2/sandboxes", json={"templateID": "no-such-template"},
                   headers={"X-API-KEY": e2b_server.key})  # fmt: skip
    assert r.status_code == 404, r.text
    assert "no such image: no-such-template" in r.json()["message"]
    r = httpx.post(f"{e2b_server.url}/v2/sandboxes", json={"templateID": "base", "timeout": -5},
                   headers={"X-API-KEY": e2b_server.key})  # fmt: skip
    assert r.status_code == 400, r.text  # a setting out of range: not a missing template


def test_a_wrong_key(e2b_server: E2BServer):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="tpk_nope_nope")
    with pytest.raises(SandboxException, match="lacks the 'sandboxes' scope"):
        Sandbox.create(api_key=e2b_server.drive_key)  # a token without the scope: 403
    r = httpx.post(f"{e2b_server.url}/v2/sandboxes", json={"templateID": "base"},
                   headers={"X-API-KEY": "wrong"})  # fmt: skip
    assert r.status_code == 401 and set(r.json()) == {"code", "message"}
    sb = Sandbox.create()
    try:  # envd's calls need the token too
        r = httpx.post(f"{e2b_server.url}/filesystem.Filesystem/Stat", json={"path": "/"},
                       headers={"E2b-Sandbox-Id": sb.sandbox_id, "X-Access-Token": "wrong",
                                "Connect-Protocol-Version": "1"})  # fmt: skip
        assert r.status_code == 401
    finally:
        sb.kill()


def test_another_tenants_sandbox(e2b_server: E2BServer):
    mine = Sandbox.create()
    try:
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(mine.sandbox_id, api_key=e2b_server.other_key)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.pause(mine.sandbox_id, api_key=e2b_server.other_key)
        assert Sandbox.kill(mine.sandbox_id, api_key=e2b_server.other_key) is False
        theirs = Sandbox.list(api_key=e2b_server.other_key).next_items()
        assert mine.sandbox_id not in [i.sandbox_id for i in theirs]
        r = httpx.get(f"{e2b_server.url}/files", params={"path": "/etc/hostname"},
                      headers={"E2b-Sandbox-Id": mine.sandbox_id,
                               "X-Access-Token": e2b_server.other_key})  # fmt: skip
        assert r.status_code == 502  # as if it were not there
        snap = mine.create_snapshot()
        with pytest.raises(SandboxException):  # nor its snapshots
            Sandbox.create(template=snap.snapshot_id, api_key=e2b_server.other_key)
        assert mine.is_running()
    finally:
        mine.kill()


def test_malformed_stream_frames(e2b_server: E2BServer):
    sb = Sandbox.create()
    headers = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1",
               "E2b-Sandbox-Id": sb.sandbox_id, "X-Access-Token": e2b_server.key}
    url = f"{e2b_server.url}/process.Process/Start"
    try:
        good = envelope(json.dumps({"process": {"cmd": "/bin/echo", "args": ["ok"]},
                                    "stdin": False}).encode())  # fmt: skip
        got = frames(httpx.post(url, content=good, headers=headers).content)
        assert "start" in got[0][1]["event"] and got[-1] == (2, {})
        assert {"event": {"data": {"stdout": "b2sK"}}} in [f for _, f in got]  # "ok\n"
        for bad in (envelope(b"{not json"),              # the message is not JSON
                    envelope(good[5:])[:12],              # cut short: fewer bytes than said
                    b"\x00\x00",                          # not even a header
                    envelope(b"[1, 2]"),                  # JSON, not an object
                    envelope(b'{"process": {"args": ["x"]}}')):  # no command
            r = httpx.post(url, content=bad, headers=headers)
            assert r.status_code == 200, r.text  # Connect: the error is in the last frame
            last = frames(r.content)[-1]
            assert last[0] == 2 and last[1]["error"]["code"] in (
                "invalid_argument", "unimplemented", "internal"), last
        # a unary call with a body that is not JSON: a Connect error, not a crash
        r = httpx.post(f"{e2b_server.url}/filesystem.Filesystem/Stat", content=b"{nope",
                       headers={**headers, "Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
        assert sb.is_running()  # and the sandbox is fine
    finally:
        sb.kill()


def test_a_paused_sandboxs_command_resumes_it_or_says_why():
    auto = Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": True})
    manual = Sandbox.create(lifecycle={"on_timeout": "pause", "auto_resume": False})
    try:
        auto.files.write("/work/v", "kept")
        auto.pause()
        assert auto.commands.run("cat /work/v").stdout == "kept"  # resumed by the call
        assert auto.get_info().state.value == "running"
        manual.pause()
        with pytest.raises(SandboxException, match="paused"):
            manual.commands.run("true")
        assert manual.get_info().state.value == "paused"
        Sandbox.connect(manual.sandbox_id)
        assert manual.commands.run("echo back").stdout == "back\n"
    finally:
        auto.kill()
        manual.kill()
