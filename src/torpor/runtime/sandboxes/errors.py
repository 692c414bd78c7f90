"""The errors of the sandbox resource, each with a message that says what to do. Errors of
the sandbox itself (a file not found, a command timed out, ...) are the engine's
(`torpor.sandbox.engine`) and pass through unchanged."""

from __future__ import annotations


class SandboxResourceError(Exception):
    """A request the sandbox resource cannot do."""


class NoSuchSandbox(SandboxResourceError, LookupError):
    """No sandbox has this id (or it is another tenant's: the same answer)."""


class NoSuchSnapshot(SandboxResourceError, LookupError):
    """No snapshot of this tenant's sandboxes has this id."""


class InvalidSandbox(SandboxResourceError, ValueError):
    """A sandbox that cannot be made as asked (an image this server has not got, a
    setting out of range): refused before anything starts."""


class NoSuchImage(InvalidSandbox):
    """The image (or E2B template) named is not in this server's image store."""


class SandboxStateError(SandboxResourceError):
    """The request does not fit the sandbox's state."""


class SandboxPaused(SandboxStateError):
    """A call to a paused sandbox that does not resume by itself (auto_resume off)."""


class SandboxKilled(SandboxStateError):
    """The sandbox was killed: only its record (and its named snapshots) remain."""


class AlreadyPaused(SandboxStateError):
    """A pause of a sandbox that is paused already."""


class HeldElsewhere(SandboxStateError):
    """The sandbox runs on another machine, whose server holds it live."""


class LifecycleFailed(SandboxResourceError):
    """A pause, resume or snapshot the engine could not do (the message says why); the
    sandbox stays as it was, as its record says."""


class TenantOverQuota(SandboxResourceError):
    """A new sandbox or named snapshot refused: its tenant is over a storage quota
    (runtime/quotas.py); the message says which and what to delete. `status`: 413 (stored
    bytes) or 429 (snapshots)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
