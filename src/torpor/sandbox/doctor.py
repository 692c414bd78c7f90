"""`torpor doctor`: checks that this host can run torpor's sandboxes, and the runsc gate.

Some runsc builds are broken in ways a version string does not show (Debian's rebuild of
the same upstream release with a newer Go, `-7+b1`, panics the sandbox on ordinary file
reads). So before torpor uses a runsc binary it runs a tiny self-test sandbox: read a file
from the image, write one into the overlay, run a process, checkpoint, restore, and read
both again. The verdict is cached per binary (path, size, mtime) in TORPOR_HOME/doctor.json;
a binary that fails is refused with the reason.

This module does not import the engine (torpor.sandbox.gvisor imports it, for the runsc
it needs): the gate and the checks take a `GVisorEngine` from their caller, and
`torpor.sandbox.factory.open_engine` is what builds an engine and runs the gate.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor.sandbox.engine import SandboxError, SandboxSpec
from torpor.sandbox.images import Image, ImageNotFound

log = logging.getLogger(__name__)

PINNED_RUNSC = "0.0~20240729.0-4+b7"
RUNSC_INSTALL_HINT = (
    "runsc (gVisor) is not installed: run scripts/setup.sh, or on Debian 13 "
    f"`apt-get install runsc={PINNED_RUNSC}` (on Debian 12 from the trixie suite, pinned)"
)
SELFTEST_TEXT = b"torpor self-test: read from the image\n"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float | None = None  # how long the check took, where it does real work
    # False: a failure worth a look that does not stop torpor from working (orphaned
    # sandboxes): `torpor doctor` shows it as WARN and still exits 0.
    blocking: bool = True


def orphans_check(engine: Any) -> Check:
    """Sandboxes of the engine's home whose owner (a torpor process) is gone."""
    from torpor.sandbox.owners import describe, orphans

    t0 = time.monotonic()
    found = orphans(engine)
    if not found:
        return Check("orphans", True, "no sandbox of this home outlived its owner",
                     time.monotonic() - t0, blocking=False)  # fmt: skip
    listed = ", ".join(f"{i.name} ({i.state}, {describe(i.owner)})" for i in found[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    names = " ".join(i.name for i in found)
    detail = (f"{len(found)} sandbox(es) whose owner is gone: {listed}{more}; the next "
              f"`torpor serve` or `torpor worker` of this home removes them, or now: "
              f"`torpor rm -f {names}`")  # fmt: skip
    return Check("orphans", False, detail, time.monotonic() - t0, blocking=False)


class _SelfTestImages:
    """Stands in for the image store: the self-test runs on a tiny rootfs of its own, so
    it needs no base image and no network."""

    def __init__(self, home: Path) -> None:
        root = home / "selftest" / "rootfs"
        for d in ("proc", "dev", "sys", "tmp", "run", "etc", "root"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "etc" / "selftest.txt").write_bytes(SELFTEST_TEXT)
        self.image = Image(
            name="torpor/selftest:latest",
            digest="sha256:selftest",
            rootfs=root,
            env=("PATH=/bin",),
            cmd=(),
            entrypoint=(),
            workdir="/",
            user="",
            size=0,
            created="",
        )

    def get(self, name: str) -> Image:
        if name != self.image.name:
            raise ImageNotFound(f"no such image: {name}")
        return self.image


def _binary_key(runsc: str) -> dict[str, Any]:
    st = os.stat(runsc)
    return {"runsc": os.path.realpath(runsc), "size": st.st_size, "mtime": st.st_mtime}


def debian_runsc_version() -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "runsc"], capture_output=True, text=True
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def self_test(engine: Any) -> float:
    """Run the self-test sandbox with the runsc of engine (a GVisorEngine); returns seconds
    taken, raises SandboxError on failure."""
    from torpor.sandbox.checkpoints import LocalCheckpointStorage

    home = engine.home
    images = _SelfTestImages(home)
    ck_root = home / "selftest" / "checkpoints"
    # An engine of the same class on the self-test's rootfs and checkpoint directory.
    probe = type(engine)(
        home,
        platform=engine.platform,
        images=images,
        checkpoints=LocalCheckpointStorage(ck_root),
        runsc=engine.runsc,
    )
    probe.owner_kind = "runtime"  # this process's: reaped if it dies before removing it
    name = f"torpor-selftest-{os.getpid()}"
    t0 = time.monotonic()
    try:
        probe.run(SandboxSpec(image=images.image.name), name=name)
        if probe.read_file(name, "/etc/selftest.txt") != SELFTEST_TEXT:
            raise SandboxError("reading a file of the image returned wrong bytes")
        written = os.urandom(4096)
        probe.write_file(name, "/root/written.bin", written)
        res = probe.exec(name, ["/.torpor/init", "ping"])
        if res.exit_code != 0:
            raise SandboxError(f"running a process failed: {res.stderr.decode().strip()}")
        ck = probe.checkpoint(name, "selftest")
        probe.start(name, checkpoint=ck.id)
        if probe.read_file(name, "/root/written.bin") != written:
            raise SandboxError("a file written before checkpoint differs after restore")
        if probe.read_file(name, "/etc/selftest.txt") != SELFTEST_TEXT:
            raise SandboxError("reading a file of the image after restore returned wrong bytes")
        res = probe.exec(name, ["/.torpor/init", "ping"])
        if res.exit_code != 0:
            raise SandboxError("running a process after restore failed")
    finally:
        try:
            probe.remove(name, force=True)
        except SandboxError as e:  # the verdict stands; the reaper or doctor finds it later
            log.warning("cannot remove the self-test sandbox %s: %s", name, e)
        shutil.rmtree(ck_root, ignore_errors=True)
    return time.monotonic() - t0


def require_working_runsc(engine: Any) -> None:
    """Refuse the runsc of engine (a GVisorEngine) if it fails the self-test; run it once per
    binary and cache the verdict. `open_engine` calls it."""
    cache = engine.home / "doctor.json"
    key = _binary_key(engine.runsc)
    key["platform"] = engine.platform
    with open(engine.home / ".doctor.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(cache.read_text())
        except (FileNotFoundError, ValueError):
            known = {}
        if known.get("key") == key:
            if known.get("ok"):
                engine.self_test_cached = True
                return
            raise SandboxError(known.get("message", "runsc failed torpor's self-test"))
        try:
            seconds = self_test(engine)
            verdict = {"key": key, "ok": True, "seconds": round(seconds, 3)}
        except SandboxError as e:
            version = debian_runsc_version() or engine.version
            verdict = {
                "key": key,
                "ok": False,
                "message": (
                    f"runsc {version} at {engine.runsc} fails torpor's self-test ({e}); "
                    "torpor needs a runsc that passes it, e.g. Debian's "
                    "0.0~20240729.0-4+b7 (run scripts/setup.sh)"
                ),
            }
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(verdict))
        os.replace(tmp, cache)
        engine.self_test_cached = False
        if not verdict["ok"]:
            raise SandboxError(verdict["message"])


def run_checks(
    engine_factory: Any, *, build_base: bool = False, progress: Any = None
) -> Iterator[Check]:
    """The checks `torpor doctor` shows, each yielded as soon as it is done (the base image
    build can take minutes), with the seconds it took. engine_factory() builds the engine
    (`open_engine(check=False)`: the self-test gate is run here, to time it and say whether
    its verdict was cached); progress(line) hears the base image build's steps."""
    from torpor.home import torpor_home
    from torpor.sandbox.images import BASE_RECIPE
    from torpor.sandbox.initbin import ensure_init_binary

    runsc = shutil.which("runsc")
    if runsc is None:
        yield Check("runsc", False, RUNSC_INSTALL_HINT)
        return
    deb = debian_runsc_version()
    pinned = deb == PINNED_RUNSC
    yield Check(
        "runsc",
        True,
        f"{runsc} (Debian {deb or 'not from a package'})"
        + ("" if pinned else f"; tested build is {PINNED_RUNSC}, the self-test decides"),
    )
    for tool in ("musl-gcc", "mmdebstrap", "skopeo", "umoci", "ip"):
        path = shutil.which(tool)
        yield Check(tool, path is not None, path or "missing: run scripts/setup.sh")
    t0 = time.monotonic()
    try:
        init_dir = ensure_init_binary(torpor_home())
    except SandboxError as e:
        yield Check("torpor-init", False, str(e), time.monotonic() - t0)
        return
    yield Check("torpor-init", True, str(init_dir / "init"), time.monotonic() - t0)
    t0 = time.monotonic()
    try:
        engine = engine_factory()
        require_working_runsc(engine)
        verdict = json.loads((engine.home / "doctor.json").read_text())
    except SandboxError as e:
        yield Check("self-test", False, str(e), time.monotonic() - t0)
        return
    when = ("cached: this runsc passed before" if engine.self_test_cached
            else f"{verdict['seconds']:.2f} s of sandbox work")  # fmt: skip
    yield Check(
        "self-test",
        True,
        f"sandbox read/write/exec/checkpoint/restore passed on {engine.platform} ({when})",
        time.monotonic() - t0,
    )
    yield orphans_check(engine)
    t0 = time.monotonic()
    try:
        images = engine.images
        img = images.build_base(progress=progress) if build_base else images.get("torpor/base")
        detail = f"{img.name} {img.digest[:19]}"
        if img.recipe != BASE_RECIPE:  # still works; says what a rebuild would bring
            detail += (f"; built by an older recipe ({img.recipe or 'torpor-base/1'}), without "
                       "what torpor/base has since gained (early git packing): `torpor image "
                       "build-base --force` rebuilds it, and checkpoints of sandboxes from "
                       "the old one are then refused")  # fmt: skip
        yield Check("base image", True, detail, time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        hint = "" if build_base else " (build it with `torpor image build-base`)"
        yield Check("base image", False, f"{e}{hint}", time.monotonic() - t0)
