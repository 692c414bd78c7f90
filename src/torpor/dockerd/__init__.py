"""torpor dockerd: the Docker Engine API over torpor's sandboxes, so the docker CLI,
docker-py and the tools built on them drive torpor with one setting (DOCKER_HOST).

    torpor dockerd --socket /run/torpor/docker.sock     # then:
    DOCKER_HOST=unix:///run/torpor/docker.sock docker run -d torpor/base

One module per resource: `system` (ping, version, info), `containers`, `logs` (logs and
attach), `execs`, `archive` (docker cp), `checkpoints`, `images`; `config` maps a create
body to a sandbox spec, `shapes` a sandbox to Docker's JSON, `state` keeps the Docker
settings a sandbox record lacks; `server` is the HTTP/1.1 server with the connection
hijack; `app.Daemon` ties them together; `serve` runs it. docs/docker.md says what is
supported.
"""

from __future__ import annotations

from torpor.dockerd.daemon import serve

__all__ = ["serve"]
