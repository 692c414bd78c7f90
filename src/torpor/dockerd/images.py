"""Images: the one a container is created from, found in torpor's image store by the
name Docker's clients send.

Docker's clients send short names (`alpine`, `torpor/base:latest`); a name whose first
part is not a registry host (no `.` or `:`, not `localhost`) is Docker Hub's, pulled from
docker.io (`library/` for a single name), as Docker does.
"""

from __future__ import annotations

from torpor.dockerd.server import DockerError
from torpor.sandbox.images import Image, ImageError, ImageNotFound, ImageStore


def _local_name(name: str) -> str:
    """Docker Hub's long forms as the short one torpor's store knows."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/",
                   "index.docker.io/"):  # fmt: skip
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def resolve(store: ImageStore, name: str) -> Image:
    """The image `name` names, else Docker's 404 (`docker run` then pulls it)."""
    try:
        return store.get(_local_name(name))
    except ImageNotFound:
        shown = name if "@" in name or ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
        raise DockerError(404, f"No such image: {shown}") from None
    except ImageError as e:
        raise DockerError(400, str(e)) from None
