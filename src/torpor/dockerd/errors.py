"""torpor's errors as Docker shapes them: the status and the message Docker's clients
know (`No such container: x` is a 404, a name in use a 409, bad input a 400), so the
docker CLI prints its usual `Error response from daemon: ...` line and exit code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torpor.dockerd.server import DockerError
from torpor.sandbox.checkpoints import CheckpointNotFound
from torpor.sandbox.engine import (
    CheckpointError,
    SandboxConflict,
    SandboxError,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxNotRunning,
)
from torpor.sandbox.images import ImageError, ImageNotFound


def no_such_container(ref: str) -> DockerError:
    return DockerError(404, f"No such container: {ref}")


def not_running(ref: str) -> DockerError:
    return DockerError(409, f"Container {ref} is not running")


def name_in_use(name: str, sid: str) -> DockerError:
    return DockerError(409, f'Conflict. The container name "/{name}" is already in use by '
                            f'container "{sid}". You have to remove (or rename) that '
                            "container to be able to reuse that name.")  # fmt: skip


@contextlib.contextmanager
def translated(ref: str = "") -> Iterator[None]:
    """Turn the engine's errors about container `ref` into Docker's."""
    try:
        yield
    except DockerError:
        raise
    except SandboxNotFound:
        raise no_such_container(ref) from None
    except SandboxNotRunning:
        raise not_running(ref) from None
    except (CheckpointNotFound, SandboxFileNotFound, ImageNotFound) as e:
        raise DockerError(404, str(e)) from None
    except SandboxConflict as e:
        raise DockerError(409, str(e)) from None
    except (CheckpointError, ImageError) as e:
        raise DockerError(500, str(e)) from None
    except SandboxError as e:
        raise DockerError(500, str(e)) from None
