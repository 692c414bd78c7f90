"""Booting a sandbox: its runsc container created and run fresh, restored from a
checkpoint, restored into a standby, or only created (a standby itself).

A fresh boot writes the OCI bundle (`bundle.oci_config`), sets up the sandbox network if
it has one, and launches runsc (`Driver.launch`); a new sandbox then waits until init
answers, a restored one does not (init notices the restore by itself: a new token in
the host channel's directory).
A restore into a standby skips all of that: the container exists, runsc only loads the
checkpoint; a standby that is dead or unfit is noted and the restore goes the usual way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from torpor.sandbox import network
from torpor.sandbox.engine import SandboxError, SandboxInfo
from torpor.sandbox.gvisor import bundle
from torpor.sandbox.gvisor.client import InitClient
from torpor.sandbox.gvisor.records import Records, now
from torpor.sandbox.gvisor.runsc import Driver, read_pid
from torpor.sandbox.gvisor.standby import Standbys
from torpor.sandbox.images import Image


class Booter:
    """Boots the sandboxes of one engine."""

    def __init__(self, records: Records, driver: Driver, client: InitClient,
                 standbys: Standbys, init_dir: Callable[[], Path]) -> None:  # fmt: skip
        self.records = records
        self.driver = driver
        self.client = client
        self.standbys = standbys
        self._init_dir = init_dir

    def boot(
        self,
        info: SandboxInfo,
        image: Image,
        *,
        image_path: Path | None = None,
        standby: bool = False,
    ) -> None:
        """Start (or restore, from `image_path`) the runsc container for info, whose lock
        the caller holds, and wait until init answers. With standby, only create it
        (`runsc create`): a later restore loads into it."""
        self.driver.settle(info.id)
        self.records.sweep(info.id)  # what a process that crashed while using it left
        state = self._into_standby(info, image_path) if info.state == "standby" else None
        if state is None:
            state = self._container(info, image, image_path=image_path, standby=standby)
        info.state = "standby" if standby else "running"
        info.started = None if standby else now()
        info.exit_code = None
        info.last_checkpoint = None
        info.pid = read_pid(self.records.dir(info.id) / "runsc.pid")
        self.records.save(info)
        if standby:
            return
        if state != "running":
            self.driver.reconcile(info)
            return
        if image_path is None:  # a restored init listens again once its hooks have run
            self.driver.wait_ready(info, time.monotonic() + 30, lambda: self.client.ping(info))
        if info.spec.network == "sandbox" and info.spec.ports:
            network.start_proxy(self.records.home, info.id, info.spec.ports)

    def _into_standby(self, info: SandboxInfo, image_path: Path | None) -> str | None:
        """Restore into info, a standby (created ahead: runsc create is done); runsc's
        state after, or None if the standby could not be used."""
        self.standbys.unlist(info)
        info.from_standby = False
        if image_path is None:
            return None
        dead = self.standbys.dead(info)
        if dead:
            self.standbys.note_miss(info, dead)
            return None
        (self.client.channel_dir(info) / "init.sock").unlink(missing_ok=True)
        self.client.channel_token(info, "restored")
        try:
            state = self.driver.launch(info, ["restore", f"--image-path={image_path}", info.id],
                                       what="restore")  # fmt: skip
        except SandboxError as e:  # the standby was unfit or broken: restore the usual way
            self.standbys.note_miss(info, str(e))
            return None
        info.from_standby = True
        return state

    def _container(self, info: SandboxInfo, image: Image, *, image_path: Path | None,
                   standby: bool) -> str:  # fmt: skip
        """Create the runsc container for info and run it (a restore from `image_path`,
        else its main process; with standby, only create it); runsc's state after."""
        info.from_standby = False
        if info.started is not None:  # a cleanup left by another process: not this run
            info.started = None
            self.records.save(info)
        if self.driver.has_state(info.id):
            self.driver.delete(info.id)
        if info.spec.network == "sandbox":
            info.address = network.setup(self.records.home, info.id)
        (self.client.channel_dir(info) / "init.sock").unlink(missing_ok=True)
        if image_path is not None:  # the restored init sees a new token: restored
            self.client.channel_token(info, "restored")
        d = self.write_bundle(info, image)
        pidfile = self.records.dir(info.id) / "runsc.pid"
        pidfile.unlink(missing_ok=True)
        if standby:
            args = ["create", f"--bundle={d}", f"--pid-file={pidfile}", info.id]
        elif image_path is not None:
            args = ["restore", f"--bundle={d}", f"--image-path={image_path}",
                    f"--pid-file={pidfile}", info.id]  # fmt: skip
        else:
            args = ["run", f"--bundle={d}", f"--pid-file={pidfile}", info.id]
        what = "create" if standby else "restore" if image_path else "start"
        return self.driver.launch(info, args, what=what)

    def write_bundle(self, info: SandboxInfo, image: Image) -> Path:
        """Write info's OCI bundle (see `bundle.oci_config`); returns its directory."""
        channel_dir = self.client.channel_dir(info)
        channel_dir.mkdir(mode=0o700, exist_ok=True)
        uid, gid = bundle.image_user(image, info.spec.user or image.user)
        config = bundle.oci_config(
            info.spec, image, sandbox_id=info.id, hostname=info.name, uid=uid, gid=gid,
            init_dir=self._init_dir(), channel_dir=channel_dir,
            netns=network.netns_path(info.id) if info.spec.network == "sandbox" else None,
        )  # fmt: skip
        d = self.records.dir(info.id) / "bundle"
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=1))
        return d
