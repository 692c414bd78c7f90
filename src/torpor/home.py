"""Where torpor keeps its state on this machine: TORPOR_HOME, /var/lib/torpor by default.

Every part (log, sandboxes, images, snapshots) places its defaults under it; this is the
one place that says where it is.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_HOME = "/var/lib/torpor"


def torpor_home() -> Path:
    return Path(os.environ.get("TORPOR_HOME") or DEFAULT_HOME)


def machine_id(home: Path | None = None) -> str:
    """This machine's id in a cluster: one per TORPOR_HOME (its hot copies and sandboxes
    are its own), made once and kept in HOME/machine-id."""
    path = (home or torpor_home()) / "machine-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".machine-id.{os.getpid()}")
    tmp.write_text(f"m-{secrets.token_hex(6)}\n")
    try:
        os.link(tmp, path)  # the first process to get here names the machine
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
