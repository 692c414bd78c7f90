"""Network modes: loopback-only by default; a published port keeps serving across restore."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from torpor.sandbox.engine import PortMapping, SandboxError, SandboxSpec
from torpor.sandbox.gvisor import GVisorEngine

# A dev server with state in memory: every request increments a counter.
SERVER = """
import http.server, os
token = os.urandom(4).hex()
hits = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global hits
        hits += 1
        body = f"{token} {hits}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def get(port: int, deadline: float = 30) -> tuple[str, int]:
    end = time.time() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                token, hits = r.read().decode().split()
                return token, int(hits)
        except (urllib.error.URLError, ConnectionError, ValueError):
            if time.time() > end:
                raise
            time.sleep(0.1)


def test_published_port_serves_before_and_after_restore(engine: GVisorEngine, port: int):
    spec = SandboxSpec(image="base", network="sandbox", ports=[PortMapping(port, 8000)])
    info = engine.run(spec, name="t-net")
    try:
        assert info.address == "10.88.0.2"
        engine.spawn("t-net", ["python3", "-c", SERVER])
        token, hits = get(port)
        assert get(port) == (token, hits + 1)
        ck = engine.checkpoint("t-net", "served")
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        engine.start("t-net", checkpoint=ck.id)
        # Same server process, same memory: the hit counter goes on.
        assert get(port) == (token, hits + 2)
        ck2 = engine.checkpoint("t-net", "again", leave_running=True)
        assert get(port) == (token, hits + 3)
        assert ck2.size > 0
    finally:
        engine.remove("t-net", force=True)


def test_default_network_is_loopback_only(engine: GVisorEngine, sandbox: str):
    probe = (
        "import socket\n"
        "names = [n for _, n in socket.if_nameindex()]\n"
        "print(','.join(sorted(names)))\n"
    )
    res = engine.exec(sandbox, ["python3", "-c", probe])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.decode().strip() == "lo"


def test_publish_needs_sandbox_network(engine: GVisorEngine, port: int):
    with pytest.raises(SandboxError, match="--network sandbox"):
        engine.run(SandboxSpec(image="base", ports=[PortMapping(port, 80)]))
