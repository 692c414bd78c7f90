"""Where torpor keeps its state on this machine: TORPOR_HOME, /var/lib/torpor by default.

Every part (log, sandboxes, images, snapshots) places its defaults under it; this is the
one place that says where it is.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "/var/lib/torpor"


def torpor_home() -> Path:
    return Path(os.environ.get("TORPOR_HOME") or DEFAULT_HOME)
