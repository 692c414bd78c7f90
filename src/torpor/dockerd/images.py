"""Image routes: list, inspect, create (a pull through torpor's OCI pull: skopeo and
umoci), remove. torpor's images appear under their names (`torpor/base:latest`).

Docker's clients send short names (`alpine`, `torpor/base:latest`); a name whose first
part is not a registry host (no `.` or `:`, not `localhost`) is Docker Hub's, pulled from
docker.io (`library/` for a single name), as Docker does.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from torpor.dockerd.errors import translated
from torpor.dockerd.server import ANSWERED, DockerError, Request, Response, json_response
from torpor.sandbox.images import Image, ImageError, ImageNotFound, ImageStore, canonical_name

if TYPE_CHECKING:
    from torpor.dockerd.core import Daemon


def routes(d: Daemon) -> None:
    d.router.add("GET", "/images/json", lambda r: list_images(d, r))
    d.router.add("POST", "/images/create", lambda r: pull(d, r))
    d.router.add("GET", "/images/{name:.+}/json", lambda r: inspect(d, r))
    d.router.add("DELETE", "/images/{name:.+}", lambda r: remove(d, r))


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


def _unix(iso: str) -> int:
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def summary(img: Image) -> dict[str, Any]:
    return {"Id": img.digest, "ParentId": "", "RepoTags": [img.name], "RepoDigests": [],
            "Created": _unix(img.created), "Size": img.size, "VirtualSize": img.size,
            "SharedSize": -1, "Labels": {}, "Containers": -1}  # fmt: skip


def list_images(d: Daemon, req: Request) -> Response:
    return json_response([summary(i) for i in d.images.list()])


def inspect(d: Daemon, req: Request) -> Response:
    img = resolve(d.images, req.params["name"])
    return json_response({
        **summary(img),
        "Created": img.created,
        "Comment": "", "Author": "", "Architecture": "amd64", "Os": "linux",
        "Config": {"Env": list(img.env), "Cmd": list(img.cmd[len(img.entrypoint):]) or None,
                   "Entrypoint": list(img.entrypoint) or None, "WorkingDir": img.workdir,
                   "User": img.user, "Labels": {}},
        "RootFS": {"Type": "layers", "Layers": []},
        "GraphDriver": {"Name": "torpor", "Data": {"RootFS": str(img.rootfs)}},
    })  # fmt: skip


def pull_ref(name: str) -> str:
    """The skopeo reference of a Docker image name."""
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return f"docker://{name}"
    return f"docker://docker.io/{name if '/' in name else 'library/' + name}"


def pull(d: Daemon, req: Request) -> Response:
    """`docker pull`: progress as Docker's JSON messages, one per line; a failure is the
    last message (`error`), as Docker reports it once the stream has begun."""
    src = req.arg("fromImage") or ""
    if not src:
        raise DockerError(400, "fromImage is required (importing images is not supported)")
    tag = req.arg("tag") or ""
    name = f"{src}:{tag}" if tag and "@" not in src else src
    try:
        local = canonical_name(_local_name(name))
    except ImageError as e:
        raise DockerError(400, str(e)) from None
    out = req.stream(200, [("Content-Type", "application/json")])

    def say(**msg: Any) -> None:
        out.write(json.dumps(msg).encode() + b"\r\n")

    say(status=f"Pulling from {src}", id=tag or "latest")
    try:
        img = d.images.pull(pull_ref(_local_name(name)), name=local,
                            progress=lambda m: say(status=m))  # fmt: skip
    except ImageError as e:
        say(errorDetail={"message": str(e)}, error=str(e))
        return ANSWERED
    say(status=f"Digest: {img.digest}")
    say(status=f"Status: Downloaded newer image for {img.name}")
    return ANSWERED


def remove(d: Daemon, req: Request) -> Response:
    img = resolve(d.images, req.params["name"])
    users = [i for i in d.engine.list(all=True) if i.image_digest == img.digest]
    if users and not req.flag("force"):
        raise DockerError(409, f'conflict: unable to remove repository reference "'
                               f'{req.params["name"]}" (must force) - container '
                               f"{users[0].id} is using its referenced image "
                               f"{img.short_digest}")  # fmt: skip
    with translated():
        d.images.remove(img.name)
    return json_response([{"Untagged": img.name}, {"Deleted": img.digest}])
