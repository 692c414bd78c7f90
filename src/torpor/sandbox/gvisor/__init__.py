"""The gVisor engine: sandboxes run by `runsc`, checkpointed and restored whole.

Each sandbox is an OCI bundle whose root is an image's rootfs under an in-memory overlay
(`--overlay2=root:memory`), so everything the sandbox writes lives in its memory and is
part of its checkpoint, and the image is never modified. Its first process is torpor-init
(see docs/sandbox-init.md), which starts every process torpor runs in it and answers
the host through the host channel.

One module per part, composed by `engine.GVisorEngine`:
  records.py     sandbox records (sandbox.json), the names index, the locks
  runsc.py       the runsc driver: flags, launch, state, stop, reconcile
  bundle.py      the OCI bundle (a pure function of the spec and the image)
  client.py      the torpor-init client: commands and processes
  files.py       files in and out, through init
  checkpoint.py  taking and finding checkpoints
  standby.py     standby sandboxes, created ahead for restores
  boot.py        booting a sandbox: fresh, restored, into a standby
  engine.py      GVisorEngine

State lives under TORPOR_HOME (default /var/lib/torpor):
  runsc/                 runsc's own state (--root)
  names/NAME             the id of the sandbox called NAME (an index; sandbox.json rules)
  sandboxes/ID/          sandbox.json (what `ps`/`inspect` show), bundle/config.json,
                         console.log (the main process's output), lock,
                         ctl/ (the host channel: init.sock, token)
  standby/KEY/ID         unused standby sandboxes (created, not started) by what they fit
  checkpoints/           the checkpoint storage (until the snapshot store replaces it)
"""

from __future__ import annotations

from torpor.sandbox.doctor import PINNED_RUNSC, RUNSC_INSTALL_HINT
from torpor.sandbox.gvisor.bundle import CHANNEL_MOUNT, DEFAULT_CAPS, INIT_DIR
from torpor.sandbox.gvisor.engine import GVisorEngine
from torpor.sandbox.gvisor.runsc import PLATFORMS
from torpor.sandbox.gvisor.streams import CANCEL_GRACE

__all__ = [
    "CANCEL_GRACE",
    "CHANNEL_MOUNT",
    "DEFAULT_CAPS",
    "INIT_DIR",
    "PINNED_RUNSC",
    "PLATFORMS",
    "RUNSC_INSTALL_HINT",
    "GVisorEngine",
]
