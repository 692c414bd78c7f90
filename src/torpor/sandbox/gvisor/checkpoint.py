"""Checkpoints of gVisor sandboxes: taking one (`runsc checkpoint`), finding one, and
checking that one can be restored on this engine.

A checkpoint holds the whole sandbox: every process, its memory, and the files it wrote
(the root overlay and tmpfs mounts live in its memory). It is staged by runsc into a
directory of the checkpoint storage (`torpor.sandbox.checkpoints`), which stores it
under an id that follows from the sandbox and the checkpoint's name. Its metadata
records what a restore must match (engine, image digest, the sandbox layout: `LAYOUT`),
and the checkpoint it was taken after (`parent`: the snapshot store encodes changed
pages as deltas against it). The restore itself is the engine's (it boots the sandbox
from the checkpoint's directory).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from torpor.sandbox import network
from torpor.sandbox.checkpoints import CheckpointNotFound, CheckpointStorage
from torpor.sandbox.engine import (
    CheckpointError,
    CheckpointInfo,
    SandboxConflict,
    SandboxError,
    SandboxInfo,
)
from torpor.sandbox.gvisor.client import InitClient
from torpor.sandbox.gvisor.records import Records, now
from torpor.sandbox.gvisor.runsc import Driver
from torpor.sandbox.images import Image

# What every sandbox of this build is, recorded in each checkpoint's metadata: init
# answers the host through the host channel, and keeps its state on a tmpfs. Older
# development builds also made sandboxes without them; their checkpoints (where these
# are false or missing) cannot be restored by this one (see `check_restorable`).
LAYOUT = {"channel": True, "init_tmpfs": True}


class Checkpointer:
    """Takes and finds the checkpoints of one engine's sandboxes in its storage (given
    as a callable: the engine's `checkpoints` attribute)."""

    def __init__(self, engine_name: str, records: Records, driver: Driver, client: InitClient,
                 storage: Callable[[], CheckpointStorage]) -> None:  # fmt: skip
        self.engine_name = engine_name
        self.records = records
        self.driver = driver
        self.client = client
        self._storage = storage

    @property
    def storage(self) -> CheckpointStorage:
        return self._storage()

    def take(self, info: SandboxInfo, name: str | None, *, leave_running: bool) -> CheckpointInfo:
        """Checkpoint info's sandbox (whose lock the caller holds exclusively) as `name`
        (default: a timestamp); it stops unless `leave_running`."""
        if info.state != "running":
            raise SandboxConflict(
                f"cannot checkpoint sandbox {info.name}: it is not running (state: {info.state})"
            )
        ck_name, ck_id = self._free_name(info, name)
        # init closes its host socket, which gVisor cannot save
        self.client.run(info, ["prepare"], timeout=60)
        staging = self.storage.staging_dir()
        # Connections through torpor's port proxy are external to the sandbox and would
        # block the checkpoint: close them first (clients reconnect after).
        network.stop_proxy(self.records.home, info.id)
        t0 = time.monotonic()
        try:
            self.driver.run(
                info, "checkpoint", f"--image-path={staging}", "--compression=none",
                "--exclude-committed-zero-pages",
                *(["--leave-running"] if leave_running else []), info.id, timeout=600,
            )  # fmt: skip
        except SandboxError as e:
            shutil.rmtree(staging, ignore_errors=True)
            self._resume_after_failure(info)
            raise CheckpointError(f"checkpoint of {info.name} failed: {e}") from None
        meta = self._meta(info, ck_id, ck_name, time.monotonic() - t0, leave_running)
        size = self.storage.put(ck_id, staging, meta)
        if leave_running:
            self._keep_running(info, ck_id)
        else:
            info.state = "checkpointed"
            info.exit_code = None
            info.pid = None
            self.records.save(info)
            self.driver.after_stop_later(info)
        return CheckpointInfo.from_json({**meta, "size": size})

    def _free_name(self, info: SandboxInfo, name: str | None) -> tuple[str, str]:
        """(name, id) of a new checkpoint of info: `name`, which must be free, else a
        timestamp (with a counter after it when that one is taken: two checkpoints in
        one second). The id follows from the sandbox and the name, so checking that the
        name is free is one lookup, whatever the number of checkpoints."""
        stamp = datetime.now(UTC).strftime("ck-%Y%m%d-%H%M%S")
        for n in range(1, 100):
            ck_name = name or (stamp if n == 1 else f"{stamp}-{n}")
            ck_id = f"{info.name}-{ck_name}-{info.id[:6]}"
            try:
                self.storage.meta(ck_id)
            except CheckpointNotFound:
                return ck_name, ck_id
            if name is not None:
                break
        raise SandboxConflict(f"sandbox {info.name} already has a checkpoint named {ck_name}")

    def _meta(self, info: SandboxInfo, ck_id: str, ck_name: str, seconds: float,
              leave_running: bool) -> dict[str, Any]:  # fmt: skip
        meta = CheckpointInfo(
            id=ck_id,
            sandbox=info.name,
            created=now(),
            size=0,
            seconds=round(seconds, 4),
            engine=self.engine_name,
            engine_version=self.driver.version,
            image_digest=info.image_digest,
            spec=info.spec,
            leave_running=leave_running,
            name=ck_name,
        ).to_json()
        # The checkpoint this memory came from: the store encodes changed pages as deltas
        # against it (see docs/snapshots.md).
        parent = info.last_checkpoint or info.restored_from
        meta.update(LAYOUT, sandbox_id=info.id, platform=self.driver.platform, parent=parent)
        return meta

    def _resume_after_failure(self, info: SandboxInfo) -> None:
        """A failed checkpoint: if the sandbox still runs, init listens again and the
        published ports are served again; the record says what became of it."""
        if self.driver.runsc_state(info.id) == "running":
            self.client.channel_token(info, "resumed")
            if info.spec.ports:
                network.start_proxy(self.records.home, info.id, info.spec.ports)
        self.driver.reconcile(info)

    def _keep_running(self, info: SandboxInfo, ck_id: str) -> None:
        """After a checkpoint that kept the sandbox running."""
        info.last_checkpoint = ck_id
        self.records.save(info)
        self.client.channel_token(info, "resumed")
        if self.driver.state(info) != "running":
            raise CheckpointError(
                f"checkpoint {ck_id} was saved but sandbox {info.name} did not keep running"
            )
        if info.spec.ports:
            network.start_proxy(self.records.home, info.id, info.spec.ports)

    def list(self, sandbox: SandboxInfo | None = None) -> list[dict[str, Any]]:
        metas = self.storage.list()
        if sandbox is None:
            return metas
        return [m for m in metas if m.get("sandbox_id") == sandbox.id]

    def find(self, ref: str, *, sandbox: SandboxInfo | None = None) -> dict[str, Any]:
        """Find a checkpoint by id (one lookup), or by name (within `sandbox` when given)."""
        try:
            return self.storage.meta(ref)
        except CheckpointNotFound:
            pass
        metas = self.storage.list()
        named = [
            m for m in metas
            if m.get("name") == ref and (sandbox is None or m.get("sandbox_id") == sandbox.id)
        ]  # fmt: skip
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise CheckpointError(f"checkpoint name {ref} is ambiguous: use its id")
        raise CheckpointNotFound(f"no such checkpoint: {ref}")

    def check_restorable(self, ck: dict[str, Any], image: Image) -> None:
        """Refuse a checkpoint of another engine, of an older development build's sandbox
        layout, or of another version of the image."""
        if ck.get("engine") != self.engine_name:
            raise CheckpointError(f"checkpoint {ck['id']} was made by engine {ck.get('engine')}")
        if any(ck.get(key) is not value for key, value in LAYOUT.items()):
            why = ("without the host channel to its init" if ck.get("channel") is not True
                   else "with its init's state on the root overlay")  # fmt: skip
            raise CheckpointError(
                f"checkpoint {ck['id']} was made by an older development build of torpor (a "
                f"sandbox {why}); this version cannot restore it: remove it (`torpor "
                "checkpoint rm`) and take a new one from a sandbox of this version"
            )
        if ck.get("image_digest") != image.digest:
            raise CheckpointError(
                f"checkpoint {ck['id']} was taken on image {ck.get('spec', {}).get('image')} "
                f"at digest {ck.get('image_digest')}, which is now {image.digest}"
            )
