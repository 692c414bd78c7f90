"""Steps the runtime tries and goes on without: releasing a lease, removing a sandbox on
the way out, a heartbeat, a poll for cancels. Their failure must not stop the caller
(whatever they left is cleaned up or retried elsewhere), but it must not be silent
either: `best_effort` logs it, with the traceback when debug logging is on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger("torpor.runtime")


@contextlib.contextmanager
def best_effort(what: str, *args: object, level: int = logging.WARNING) -> Iterator[None]:
    """Run the block; if it raises, log "WHAT failed: error" at `level` and go on.
    `what` is a %-format string filled with `args` only when it is logged."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - the point of this helper
        logger.log(level, "%s failed: %s: %s", what % args if args else what,
                   type(err).__name__, err,
                   exc_info=logger.isEnabledFor(logging.DEBUG))  # fmt: skip
