"""`Daemon`: torpor dockerd's state (the engine, the image store, exec instances, the
watchers of running containers) that every route module uses; app.py gives it routes.

Containers are the sandboxes of the engine it is given: the CLI's, over TORPOR_HOME
with its checkpoints in the snapshot store, so `torpor ps` and `docker ps` show the same
ones, and a container outlives the daemon as a `torpor run -d` sandbox does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from torpor.dockerd import stamps
from torpor.dockerd import state as meta_state
from torpor.dockerd.errors import no_such_container
from torpor.dockerd.server import Router
from torpor.dockerd.state import ContainerMeta, ExecTable, now
from torpor.sandbox.engine import Engine, SandboxInfo, SandboxNotFound
from torpor.sandbox.handle import Sandbox
from torpor.sandbox.images import ImageStore

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, engine: Engine, images_store: ImageStore) -> None:
        self.engine = engine
        self.images = images_store
        self.execs = ExecTable()
        self._watched: set[str] = set()
        self._watch_lock = threading.Lock()
        self.router = Router()  # filled by app.build

    # ------------------------------------------------------------------ containers

    def sandbox(self, ref: str) -> Sandbox:
        """The container `ref` names (name, id or id prefix, a leading / allowed)."""
        ref = ref.lstrip("/")
        try:
            return Sandbox.get(ref, engine=self.engine)
        except SandboxNotFound:
            raise no_such_container(ref) from None

    def info(self, ref: str) -> SandboxInfo:
        sb = self.sandbox(ref)
        assert sb.last_info is not None
        return sb.last_info

    def meta(self, info: SandboxInfo) -> ContainerMeta:
        return meta_state.load(self.engine, info)

    def save_meta(self, sid: str, meta: ContainerMeta) -> None:
        with contextlib.suppress(SandboxNotFound, FileNotFoundError):
            meta_state.save(self.engine, sid, meta)

    # ------------------------------------------------------------------ watchers

    def watch(self, sid: str) -> None:
        """Until the container stops: then record when, and remove it if it was created
        with AutoRemove (`docker run --rm`). One thread per running container."""
        with self._watch_lock:
            if sid in self._watched:
                return
            self._watched.add(sid)
        threading.Thread(target=self._watch, args=(sid,), name=f"dockerd-watch-{sid}",
                         daemon=True).start()  # fmt: skip

    def _watch(self, sid: str) -> None:
        try:
            seen = [stamps.last_stamp(self.engine, sid)]
            while True:
                stamps.note_growth(self.engine, sid, seen)
                try:
                    info = self.engine.inspect(sid)
                except SandboxNotFound:
                    return
                if info.state != "running":
                    stamps.note_growth(self.engine, sid, seen)
                    break
                time.sleep(0.1)
            meta = self.meta(info)
            meta.finished_at = now()
            self.save_meta(sid, meta)
            if meta.auto_remove:
                with contextlib.suppress(SandboxNotFound):
                    self.engine.remove(sid, force=True)
        except Exception:
            log.exception("watching container %s failed", sid)
        finally:
            with self._watch_lock:
                self._watched.discard(sid)

    def resume_watching(self) -> None:
        """At start-up: watch the running containers, and remove the auto-remove ones that
        stopped while no daemon watched."""
        for info in self.engine.list(all=True):
            if info.state == "standby":
                continue
            if info.state == "running":
                self.watch(info.id)
            elif info.state != "created" and self.meta(info).auto_remove:
                with contextlib.suppress(SandboxNotFound):
                    self.engine.remove(info.id, force=True)
