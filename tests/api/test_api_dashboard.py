"""The dashboard in headless Chromium (Debian's, driven by Playwright): a session appears
in the live list, its page sends messages, and the tool call, snapshot and restore arrive
live in the timeline while the plot fills in. Saves a screenshot to the test artifacts."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.api.conftest import Server, shell

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


def test_dashboard_live_in_a_browser(server: Server, script):
    t0 = time.time()
    tok = server.token("t-dash")
    model = script([
        {"text": "Let me look around.",
         "tool_calls": [shell("mkdir -p /work && echo hello from the sandbox | tee /work/hi.txt")]},
        {"text": "Wrote /work/hi.txt."},
        {"text": "Still here.", "tool_calls": [shell("cat /work/hi.txt; ls -la /work")]},
        {"text": "The file survived the snapshot and restore."},
    ])  # fmt: skip
    artifacts = Path(os.environ.get("TORPOR_TEST_ARTIFACTS", "/tmp/torpor-test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="torpor-chromium-")
    outside: list[str] = []
    errors: list[str] = []
    try:
        with playwright_sync.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                viewport={"width": 1280, "height": 900})  # fmt: skip
            ctx.set_default_timeout(30_000)
            page = ctx.new_page()
            page.on("request", lambda r: r.url.startswith(server.url) or outside.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))

            # the list: the token comes from ?token= and is dropped from the address bar
            page.goto(f"{server.url}/?token={tok}")
            assert "token=" not in page.url
            page.wait_for_selector("#sessions td.muted >> text=no sessions yet")
            with server.http(tok) as h:
                sid = h.post("/v1/sessions", json={"model": model}).json()["id"]
            row = page.locator(f'tr[data-sid="{sid}"]')
            row.wait_for()  # appeared by itself
            assert row.locator(".badge").inner_text() == "created"

            # its page: send a message, watch the turn arrive live
            row.locator("a").click()
            page.wait_for_url(f"**/ui/sessions/{sid}")
            page.wait_for_selector("#live.on")
            page.fill("#text", "write a file in the sandbox")
            page.click("#send button")
            page.wait_for_selector("#send-status >> text=queued as turn")
            tool = page.locator(".ev.tool").first
            tool.locator("pre.output").wait_for()
            assert "echo hello" in tool.locator("pre.args").inner_text()
            assert "hello from the sandbox" in tool.locator("pre.output").inner_text()
            assert " ms" in tool.locator(".took").inner_text()
            snap = page.locator(".ev.snapshot").first
            snap.wait_for()
            assert " in " in snap.inner_text() and "ms" in snap.inner_text()
            page.wait_for_selector(".ev.state >> text=waiting")
            assert page.locator("#state").inner_text() == "waiting"

            # a second turn: restored from the snapshot, and the plot gets its restore line
            page.fill("#text", "is it still there?")
            page.keyboard.press("Control+Enter")
            page.wait_for_selector(".ev.restored")
            page.locator(".ev.tool pre.output >> text=hello from the sandbox").nth(1).wait_for()
            page.wait_for_function("document.querySelectorAll('.ev.snapshot').length >= 2")
            page.wait_for_selector("#plot svg circle.dot")
            page.wait_for_function("document.querySelectorAll('#plot rect.bar').length >= 2")
            page.wait_for_selector(".ev.state >> nth=1")
            texts = page.locator(".ev.msg p").all_inner_texts()
            assert texts[0] == "write a file in the sandbox" and texts[-1].startswith("The file")
            seqs = page.evaluate("[...document.querySelectorAll('.ev')].length")
            assert seqs == page.locator(".ev").count()

            shot = artifacts / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")

            # back on the list the session shows as waiting
            page.goto(server.url + "/")
            page.wait_for_selector(f'tr[data-sid="{sid}"] .badge.waiting')
            page.screenshot(path=str(artifacts / "dashboard-sessions.png"))
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert not outside, f"the page fetched from elsewhere: {outside}"
    assert not errors, errors
    assert time.time() - t0 < 40


def test_events_take_the_token_as_a_query_parameter_on_get_only(server: Server):
    import httpx

    tok = server.token("t-dash-q")
    with server.http(tok) as h:
        sid = h.post("/v1/sessions", json={"model": "openai:gpt-4o-mini"}).json()["id"]
    with httpx.Client(base_url=server.url, timeout=10) as c:
        with c.stream("GET", f"/v1/sessions/{sid}/events?token={tok}") as r:
            assert r.status_code == 200
        assert c.get(f"/v1/sessions/{sid}/events?token=nope").status_code == 401
        assert c.get(f"/v1/sessions/{sid}?token={tok}").status_code == 401
        assert c.get(f"/v1/sessions/{sid}/log?token={tok}").status_code == 401
        r = c.post(f"/v1/sessions/{sid}/messages?token={tok}", json={"text": "x"})
        assert r.status_code == 401
        other = server.token("t-dash-other")
        assert c.get(f"/v1/sessions/{sid}/events?token={other}").status_code == 404
    with httpx.Client(base_url=server.url, timeout=10) as c:
        page = c.get(f"/ui/sessions/{sid}\"><script>")  # the id is escaped in the page
        assert page.status_code == 200 and "<script>" not in page.text.split("</header>")[0]
        assert f'data-sid="{sid}&quot;&gt;&lt;script&gt;"' in page.text
        js = c.get("/ui/static/dashboard.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/static/..%2Fapp.py").status_code == 404
        assert c.get("/ui/static/page.html").status_code == 404
