"""The `torpor snapshot` sub-app (ls, info, rm, prune, gc, export) through CliRunner."""

from __future__ import annotations

import json

from pyzstd import SeekableZstdFile
from typer.testing import CliRunner

from torpor.cli.snapshot_cmd import app
from torpor.snapshots import open_store

runner = CliRunner()


def test_snapshots_cli_ls_info_rm_gc(tmp_path, checkpoint, monkeypatch):
    url = f"file://{tmp_path}/store"
    store = open_store(url, use_key_env=False)
    a = store.put(checkpoint, {"session": "s1", "sandbox": "sb"}, engine="gvisor")
    b = store.put(checkpoint / "pages.img", {"session": "s2"})

    res = runner.invoke(app, ["ls", "--store", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [d["id"] for d in json.loads(res.stdout)] == [a.id, b.id]
    res = runner.invoke(app, ["ls", "--store", url, "--session", "s2", "--format", "json"])
    assert [d["id"] for d in json.loads(res.stdout)] == [b.id]
    res = runner.invoke(app, ["ls", "--store", url, "-w", "sandbox=sb"])
    assert a.id in res.stdout and b.id not in res.stdout

    # default store from TORPOR_SNAPSHOTS
    monkeypatch.setenv("TORPOR_SNAPSHOTS", url)
    res = runner.invoke(app, ["info", a.id, "--format", "json"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["engine"] == "gvisor" and doc["logical_size"] == a.logical_size
    assert set(doc["files"]) == {"checkpoint.img", "pages.img", "pages_meta.img"}
    res = runner.invoke(app, ["info", a.id])
    assert "logical size" in res.stdout and "pages.img" in res.stdout

    res = runner.invoke(app, ["info", "20000101T000000-00000000"])
    assert res.exit_code == 1 and "not found" in res.stderr

    res = runner.invoke(app, ["verify", a.id, "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True
    for pack in (tmp_path / "store" / "packs").glob("*.pack"):
        raw = bytearray(pack.read_bytes())
        raw[len(raw) // 2] ^= 1
        pack.write_bytes(raw)
    res = runner.invoke(app, ["verify", a.id])
    assert res.exit_code == 1 and a.id in res.stderr and "chunk" in res.stderr
    assert runner.invoke(app, ["rm", a.id]).exit_code == 0
    res = runner.invoke(app, ["rm", a.id])
    assert res.exit_code == 1 and "not found" in res.stderr
    res = runner.invoke(app, ["gc", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["aborted"] is None
    assert runner.invoke(app, ["gc"]).stdout.startswith("deleted ")


def test_snapshots_cli_default_under_torpor_home(tmp_path, monkeypatch, checkpoint):
    monkeypatch.delenv("TORPOR_SNAPSHOTS", raising=False)
    monkeypatch.setenv("TORPOR_HOME", str(tmp_path / "home"))
    info = open_store(f"file://{tmp_path}/home/snapshots", use_key_env=False).put(checkpoint)
    res = runner.invoke(app, ["ls"])
    assert res.exit_code == 0 and info.id in res.stdout


def test_snapshots_cli_export_and_prune(tmp_path, checkpoint):
    url = f"file://{tmp_path}/store"
    store = open_store(url, use_key_env=False)
    ids = [store.put(checkpoint, {"session": "s"}).id for _ in range(3)]
    out = tmp_path / "pages.zst"
    res = runner.invoke(app, ["export", ids[0], "pages.img", str(out), "--store", url,
                              "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["bytes"] == out.stat().st_size
    with SeekableZstdFile(out) as f:
        f.seek(4096 * 7)
        assert f.read(4096) == (checkpoint / "pages.img").read_bytes()[4096 * 7:4096 * 8]
    res = runner.invoke(app, ["export", ids[0], str(out), "--store", url])
    assert res.exit_code == 1 and "several files" in res.stderr
    res = runner.invoke(app, ["prune", "--keep-last", "1", "--store", url, "--format", "json"])
    assert json.loads(res.stdout)["deleted"] == ids[:2]
    assert [i.id for i in store.list()] == ids[2:]


def test_snapshots_cli_gc_dry_run_says_what_it_would_free_and_deletes_nothing(
        tmp_path, checkpoint):  # fmt: skip
    url = f"file://{tmp_path}/store"
    store = open_store(url, use_key_env=False)
    a = store.put(checkpoint / "pages.img", {"session": "s1"})
    b = store.put(checkpoint / "checkpoint.img", {"session": "s1"})
    store.delete(a.id)
    files = sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file())
    res = runner.invoke(app, ["gc", "--dry-run", "--store", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    dry = json.loads(res.stdout)
    assert dry["dry_run"] and dry["deleted_bytes"] > 0 and dry["snapshots"] == 1
    assert sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file()) == files
    text = runner.invoke(app, ["gc", "--dry-run", "--store", url]).stdout
    assert text.startswith("would delete ") and "nothing deleted" in text
    res = runner.invoke(app, ["gc", "--store", url, "--format", "json"])
    done = json.loads(res.stdout)
    # its progress, phase by phase, on stderr (stdout is the result alone)
    phases = [line.split("] ", 1)[1] for line in res.stderr.splitlines()]
    assert phases[:2] == ["listing packs and seek tables", "reading 1 manifests"], phases
    assert phases[2].startswith("reading the indexes of ") and len(phases) == 4
    assert phases[3] == (f"deleting {done['deleted_packs']} packs, rewriting "
                         f"{done['repacked_packs']}")
    assert (done["deleted_bytes"], done["deleted_packs"], done["repacked_packs"]) == \
        (dry["deleted_bytes"], dry["deleted_packs"], dry["repacked_packs"])
    assert json.loads(runner.invoke(app, ["gc", "--dry-run", "--store", url, "--format",
                                          "json"]).stdout)["deleted_bytes"] == 0
    assert store.verify(b.id) > 0
