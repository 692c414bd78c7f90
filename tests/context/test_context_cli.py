"""`torpor log` commands, run through Typer's CliRunner against a real SQLite log."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from torpor.cli.log_cmd import app
from torpor.context import Entry, open_log

runner = CliRunner()


@pytest.fixture
def url(tmp_path):
    u = f"sqlite:///{tmp_path / 'context.db'}"
    with open_log(u) as log:
        e = log.acquire("demo")
        log.append("demo", [
            Entry.message("system", "You are terse."),
            Entry.message("user", "What is in /etc/hostname?"),
            Entry.tool_call("c1", "shell", {"cmd": "cat /etc/hostname"}),
            Entry.tool_result("c1", "box\n" + "x" * 5000),
            Entry.marker("snapshot_taken", snapshot="snap-1"),
            Entry.message("assistant", "It is box."),
        ], epoch=e)
    return u


def test_show_text_transcript(url):
    res = runner.invoke(app, ["show", "demo", "--log", url])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("#")]
    assert len(lines) == 6
    assert "\n       " + "x" * 20 in res.output  # continuation lines are indented
    assert lines[0].startswith("#1") and "system: You are terse." in lines[0]
    assert "user: What is in /etc/hostname?" in lines[1]
    assert 'calls shell({"cmd": "cat /etc/hostname"})' in lines[2] and "c1" in lines[2]
    assert "result of c1: box" in lines[3]
    assert "truncated, 4.9 KiB in all" in res.output and len(res.output) < 1500
    assert "snapshot_taken" in lines[4] and "snap-1" in lines[4]
    assert "assistant: It is box." in lines[5]


def test_show_json_after(url):
    res = runner.invoke(app, ["show", "demo", "--after", "4", "--format", "json", "--log", url])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["seq"] for r in rows] == [5, 6]
    assert rows[1]["content"] == "It is box." and len(rows[1]["hash"]) == 64


def test_log_url_from_environment(url, monkeypatch):
    monkeypatch.setenv("TORPOR_LOG", url)
    res = runner.invoke(app, ["show", "demo"])
    assert res.exit_code == 0 and "It is box." in res.output


def test_default_url_under_torpor_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TORPOR_LOG", raising=False)
    monkeypatch.setenv("TORPOR_HOME", str(tmp_path / "home"))
    with open_log(f"sqlite:///{tmp_path / 'home' / 'context.db'}") as log:
        log.append("h", [Entry.message("user", "at home")], epoch=0)
    res = runner.invoke(app, ["show", "h"])
    assert res.exit_code == 0 and "at home" in res.output


def test_verify_ok_and_tampered(url):
    res = runner.invoke(app, ["verify", "demo", "--log", url])
    assert res.exit_code == 0 and "6 entries" in res.output
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    db.execute("UPDATE context_entries SET content = '\"It is NOT box.\"' WHERE seq = 6")
    db.commit()
    db.close()
    res = runner.invoke(app, ["verify", "demo", "--log", url])
    assert res.exit_code == 1
    assert "entry 6" in res.output and "altered" in res.output


def test_unknown_session_is_an_error_not_a_traceback(url):
    res = runner.invoke(app, ["show", "nope", "--log", url])
    assert res.exit_code == 1 and "unknown session 'nope'" in res.output


def test_export_openai_and_anthropic(url, tmp_path):
    res = runner.invoke(app, ["export", "demo", "--format", "openai", "--log", url])
    assert res.exit_code == 0, res.output
    msgs = json.loads(res.output)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
    assert msgs[2]["tool_calls"][0]["function"]["name"] == "shell"
    out = tmp_path / "a.json"
    res = runner.invoke(app, ["export", "demo", "--format", "anthropic", "--out", str(out),
                              "--log", url])
    assert res.exit_code == 0, res.output
    body = json.loads(out.read_text())
    assert body["system"] == "You are terse."
    assert body["messages"][1]["content"][0]["type"] == "tool_use"
    assert body["messages"][2]["content"][0]["type"] == "tool_result"


def test_prune_exports_then_deletes_closed_sessions(url, tmp_path):
    with open_log(url) as log:
        log.append("open-one", [Entry.message("user", "still going")], epoch=0)
        log.close_session("demo")
        log.append("parent", [Entry.message("user", "p")], epoch=0)
        log.fork("parent", 1, new_session="child")
        log.close_session("parent")
    dump = tmp_path / "pruned.jsonl"
    res = runner.invoke(app, ["prune", "--closed-before", "2999-01-01", "--to", str(dump),
                              "--log", url])
    assert res.exit_code == 0, res.output
    assert "pruned 1 sessions" in res.output and "kept parent" in res.output
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert lines[0]["type"] == "session" and lines[0]["id"] == "demo"
    assert [x["seq"] for x in lines[1:]] == [1, 2, 3, 4, 5, 6]
    assert lines[4]["content"].startswith("box\n")
    with open_log(url) as log:
        assert [s.id for s in log.sessions()] == ["child", "open-one", "parent"]
    res = runner.invoke(app, ["prune", "--closed-before", "2000-01-01", "--log", url])
    assert res.exit_code == 0 and "nothing to prune" in res.output


def test_ls_reports_sizes(url):
    res = runner.invoke(app, ["ls", "--log", url])
    assert res.exit_code == 0
    row = [x for x in res.output.splitlines() if x.startswith("demo")][0]
    assert " 6 " in row and "KiB" in row and "open" in row


def test_gc_after_prune_deletes_the_pruned_sessions_blobs(url, tmp_path):
    with open_log(url) as log:  # payloads over the blob threshold (64 KiB)
        log.append("other", [Entry.message("user", "kept\n" + "y" * 70_000)], epoch=0)
        log.append("gone", [Entry.message("user", "gone\n" + "x" * 70_000)], epoch=0)
        log.close_session("gone")
    dump = tmp_path / "pruned.jsonl"
    assert runner.invoke(app, ["prune", "--closed-before", "2999-01-01", "--to", str(dump),
                               "--log", url]).exit_code == 0  # fmt: skip
    res = runner.invoke(app, ["gc", "--log", url, "--json"])  # put a moment ago: stays
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["young"] == 1 and json.loads(res.stdout)["deleted"] == 0
    res = runner.invoke(app, ["gc", "--log", url, "--grace", "0", "--dry-run"])
    assert res.stdout.startswith("would delete 1 of 2 blob(s)"), res.output
    res = runner.invoke(app, ["gc", "--log", url, "--grace", "0", "--json"])
    assert json.loads(res.stdout)["deleted"] == 1
    assert json.loads(runner.invoke(app, ["gc", "--log", url, "--grace", "0", "--json"])
                      .stdout)["deleted"] == 0  # fmt: skip
    with open_log(url) as log:
        assert log.verify("other").ok
    assert "x" * 70_000 in dump.read_text()  # the export holds the payload itself
