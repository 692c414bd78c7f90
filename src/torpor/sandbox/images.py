"""Sandbox images: root filesystems that sandboxes run on, kept in a local image store.

Two ways in: ``build_base`` makes ``torpor/base`` (Debian bookworm minbase plus python3,
git, curl, procps and ca-certificates) with mmdebstrap, and ``pull`` fetches an OCI image
(``docker://``, ``oci:`` layouts, ``docker-archive:`` tars) with skopeo and unpacks it with
umoci. Each image is a directory holding ``rootfs/`` (used read-only as the root of an OCI
bundle) and ``image.json`` (its metadata). Everything is made in a temporary directory next
to its final place, flushed to disk, and renamed into place, so an interrupted build or
pull, or a power cut, leaves nothing half-made behind: the temporary directory a dead
process left is removed by the next build, pull or engine start (`ImageStore.sweep`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torpor.files import fsync_dir, is_leftover, syncfs, write_atomic, writer_tag
from torpor.home import torpor_home

log = logging.getLogger(__name__)

__all__ = [
    "BASE_IMAGE",
    "Image",
    "ImageError",
    "ImageNotFound",
    "ImageStore",
    "apt_mirror",
    "canonical_name",
]

BASE_IMAGE = "torpor/base:latest"
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
BASE_PACKAGES = ("python3", "git", "curl", "procps", "ca-certificates")
# Bumped whenever what build_base does to the tree changes (it feeds the base digest).
BASE_RECIPE = "torpor-base/2"
# Documentation, manual pages and message translations are left out of the base image:
# nothing in a sandbox reads them and they are about a quarter of its size.
BASE_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where the engine bind-mounts torpor-init (torpor.sandbox.initbin.INIT_MOUNT).
INIT_MOUNTPOINT = ".torpor"
METADATA_FILE = "image.json"
ROOTFS_DIR = "rootfs"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
_TRANSPORTS = ("docker://", "oci:", "docker-archive:")
_REF_HELP = "use docker://HOST/NAME[:TAG], oci:PATH[:TAG] or docker-archive:PATH"

Progress = Callable[[str], None]


class ImageError(Exception):
    """An image could not be built, pulled, found or removed; the message is one line."""


class ImageNotFound(ImageError):
    """No image in the store answers to the given name or digest."""


@dataclass(frozen=True)
class Image:
    """One image in the store; ``rootfs`` is meant to be used read-only."""

    name: str
    digest: str
    rootfs: Path
    env: tuple[str, ...]
    cmd: tuple[str, ...]
    entrypoint: tuple[str, ...]
    workdir: str
    user: str
    size: int
    created: str
    recipe: str = ""  # BASE_RECIPE for torpor/base built since it was recorded; else empty

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[-1][:12]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rootfs"] = str(self.rootfs)
        for key in ("env", "cmd", "entrypoint"):
            d[key] = list(d[key])
        return d


# --- names -------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """``x`` -> ``x:latest``; ``base`` and ``torpor/base`` -> ``torpor/base:latest``.

    A tag is the part after a colon in the last path component (so the port of
    ``127.0.0.1:5000/demo`` is not mistaken for one); ``name@sha256:...`` is kept as is.
    """
    name = name.strip()
    if not name:
        raise ImageError("empty image name")
    if any(c.isspace() or not c.isprintable() for c in name):
        raise ImageError(f"bad image name {name!r}: no spaces or control characters")
    if name in ("base", "torpor/base"):
        return BASE_IMAGE
    if "@" in name:
        return name
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return name
    return f"{name}:latest"


def _dir_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "image"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def _split_ref(ref: str) -> tuple[str, str]:
    """Return (transport, rest) for a pull reference, or raise ImageError."""
    ref = ref.strip()
    for transport in _TRANSPORTS:
        if ref.startswith(transport):
            rest = ref[len(transport) :]
            if transport == "docker://":
                host = rest.split("/", 1)[0]
                if not rest or "/" not in rest or not host or rest.endswith("/"):
                    raise ImageError(f"bad image reference {ref!r}: {_REF_HELP}")
            elif not rest or rest.startswith(":"):
                raise ImageError(f"bad image reference {ref!r}: {_REF_HELP}")
            return transport, rest
    raise ImageError(f"bad image reference {ref!r}: {_REF_HELP}")


def _is_local_registry(rest: str) -> bool:
    host = rest.split("/", 1)[0]
    host = host.split("]", 1)[0] + "]" if host.startswith("[") else host.split(":", 1)[0]
    return host in _LOCAL_HOSTS


# --- small helpers -----------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path``, counting hard-linked files once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in (*dirnames, *filenames):
            try:
                st = os.lstat(os.path.join(dirpath, entry))
            except FileNotFoundError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total + os.lstat(path).st_blocks * 512


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "(no output)"
    # skopeo logs as: time="..." level=fatal msg="..."; keep only the message.
    m = re.search(r'msg="(.*)"\s*$', lines[-1])
    return m.group(1).replace('\\"', '"') if m else lines[-1]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first)."""
    prefix = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mnt = line.split()[4].replace("\\040", " ")
                if mnt == prefix or mnt.startswith(prefix + "/"):
                    found.append(mnt)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


def _safe_rmtree(path: Path) -> None:
    """rmtree that first unmounts anything a killed mmdebstrap left mounted inside.

    Deleting through a leftover bind mount of /dev or /proc would harm the host, so if a
    mount cannot be removed the tree is left alone.
    """
    if not path.exists():
        return
    for mnt in _mounts_under(path):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    if left := _mounts_under(path):
        log.warning("leaving %s in place: %s still mounted in it (unmount, then remove it)",
                    path, ", ".join(left))  # fmt: skip
        return
    shutil.rmtree(path, ignore_errors=True)


def _run(
    argv: list[str],
    what: str,
    progress: Progress | None = None,
    stream: bool = False,
) -> str:
    """Run a tool; on failure raise ImageError with its last stderr line.

    With ``stream``, the tool's output lines are passed to ``progress`` as they come.
    """
    tool = argv[0]
    if shutil.which(tool) is None:
        raise ImageError(f"{tool} not found: install it (apt-get install {tool})")
    if stream:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        lines: list[str] = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                if not line:
                    continue
                lines.append(line)
                del lines[:-50]
                if progress is not None:
                    progress(line)
            rc = proc.wait()
        except BaseException:
            # SIGTERM first: mmdebstrap then unmounts what it mounted in the target.
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        if rc != 0:
            errs = [ln for ln in lines if ln.startswith("E:")] or lines
            raise ImageError(f"{what} failed: {tool}: {_last_line(errs[-1] if errs else '')}")
        return "\n".join(lines)
    res = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    if res.returncode != 0:
        raise ImageError(f"{what} failed: {tool}: {_last_line(res.stderr or res.stdout)}")
    return res.stdout


def apt_mirror(codename: str | None = None) -> str:
    """The Debian mirror this machine's apt already uses (never a hard-coded host), or
    TORPOR_DEBIAN_MIRROR.

    Asks debian-mirror.sh beside this module, which scripts/setup.sh uses too: it reads
    the sources through apt itself (`apt-get indextargets`, both the deb822 and the
    one-line forms) and skips security, third-party and disabled entries. codename is the
    release whose entries count (default: this machine's).
    """
    script = Path(__file__).with_name("debian-mirror.sh")
    argv = ["bash", str(script), *([codename] if codename else [])]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(proc.stderr.strip() or "debian-mirror.sh failed")
    return proc.stdout.strip()


def _add_init_mountpoint(rootfs: Path) -> None:
    """Create the empty directory torpor-init is bind-mounted on, so that the engine
    never has to create it in the image (images are meant to stay read-only)."""
    mnt = rootfs / INIT_MOUNTPOINT
    if not mnt.exists() and not mnt.is_symlink():
        mnt.mkdir(mode=0o755)


# Every file in a sandbox's in-memory filesystem is in its checkpoint, and restoring costs
# time per file (runsc decodes ~40 kernel objects for each, ~20 us; see docs/images.md).
# git keeps every object it writes as a file of its own until it packs them, which by its
# default waits for ~6,700 of them: an agent that commits after each change piles up
# thousands. The base image has git pack them once there are about 256, in the foreground
# of the command that crossed the line (so the cost lands on that tool call, not on a
# background process caught by a checkpoint).
BASE_GITCONFIG = """\
# torpor/base: pack loose objects early; each file a sandbox keeps costs restore time.
[gc]
\tauto = 256
\tautoDetach = false
"""


def _add_git_defaults(rootfs: Path) -> None:
    """Append BASE_GITCONFIG to the image's system-wide git configuration."""
    conf = rootfs / "etc/gitconfig"
    old = conf.read_text() if conf.exists() else ""
    conf.write_text(old + ("\n" if old and not old.endswith("\n") else "") + BASE_GITCONFIG)


def _dpkg_packages(rootfs: Path) -> list[str]:
    """``name=version:arch`` of every installed package, sorted."""
    status = rootfs / "var/lib/dpkg/status"
    out: list[str] = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line[:1].isspace():
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if fields.get("Package") and "installed" in fields.get("Status", ""):
            out.append(f"{fields['Package']}={fields.get('Version')}:{fields.get('Architecture')}")
    return sorted(out)


# --- OCI layout reading ------------------------------------------------------------------


def _read_blob(layout: Path, digest: str) -> dict[str, Any]:
    algo, _, hexd = digest.partition(":")
    return json.loads((layout / "blobs" / algo / hexd).read_text())


def _layout_image(layout: Path, tag: str) -> tuple[str, dict[str, Any]]:
    """(manifest digest, image config) of ``tag`` in the OCI layout at ``layout``."""
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests", [])
    chosen = None
    for m in manifests:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            chosen = m
            break
    if chosen is None and len(manifests) == 1:
        chosen = manifests[0]
    if chosen is None:
        raise ImageError(f"pulled image has no manifest tagged {tag!r}")
    manifest = _read_blob(layout, chosen["digest"])
    config = _read_blob(layout, manifest["config"]["digest"])
    return chosen["digest"], config


# --- the store ---------------------------------------------------------------------------


def default_root() -> Path:
    if os.environ.get("TORPOR_IMAGES"):
        return Path(os.environ["TORPOR_IMAGES"])
    return torpor_home() / "images"


class ImageStore:
    """Images under one directory: ``<root>/<name-slug>/{rootfs/,image.json}``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- reading --

    def _load(self, d: Path) -> Image | None:
        try:
            meta = json.loads((d / METADATA_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as e:
            log.warning("image %s left out: its %s is unreadable (%s); build or pull it "
                        "again", d.name, METADATA_FILE, e)  # fmt: skip
            return None
        try:
            return Image(
                name=meta["name"],
                digest=meta["digest"],
                rootfs=d / ROOTFS_DIR,
                env=tuple(meta.get("env") or ()),
                cmd=tuple(meta.get("cmd") or ()),
                entrypoint=tuple(meta.get("entrypoint") or ()),
                workdir=meta.get("workdir") or "/",
                user=meta.get("user") or "",
                size=int(meta.get("size") or 0),
                created=meta.get("created") or "",
                recipe=meta.get("recipe") or "",
            )
        except (KeyError, TypeError, ValueError) as e:
            log.warning("image %s left out: its %s lacks %s", d.name, METADATA_FILE, e)
            return None

    def list(self) -> list[Image]:
        if not self.root.is_dir():
            return []
        images = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            img = self._load(d)
            if img is not None:
                images.append(img)
        return sorted(images, key=lambda i: i.name)

    def get(self, name: str) -> Image:
        query = name.strip()
        if not query:
            raise ImageNotFound("no such image: '' (try `torpor images`)")
        try:
            wanted = [canonical_name(query)]
            if "/" not in query and not query.startswith("sha256:"):
                wanted.append(canonical_name(f"torpor/{query}"))
        except ImageError:
            raise ImageNotFound(f"no such image: {query} (try `torpor images`)") from None
        for want in wanted:
            img = self._load(self.root / _dir_name(want))
            if img is not None and img.name == want:
                return img
        # A digest or a unique prefix of one (at least 4 hex digits), Docker-style.
        m = re.fullmatch(r"(?:sha256:)?([0-9a-f]{4,64})", query)
        if m:
            hits = [i for i in self.list() if i.digest.split(":", 1)[-1].startswith(m.group(1))]
            names = sorted({i.name for i in hits})
            if len(names) > 1:
                raise ImageError(f"digest prefix {query} is ambiguous: {', '.join(names)}")
            if hits:
                return hits[0]
        raise ImageNotFound(f"no such image: {query} (try `torpor images`)")

    # -- writing --

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def sweep(self) -> None:
        """Remove what killed builds, pulls and removals left behind: trash, and the
        temporary directories of processes that are gone (never one a live build or
        pull is unpacking into)."""
        if not self.root.is_dir():
            return
        with self._lock():
            self._sweep()

    def _sweep(self) -> None:
        """`sweep`, with the lock held."""
        for d in self.root.iterdir():
            if d.name.startswith(_TRASH_PREFIX) or is_leftover(d, _TMP_PREFIX):
                _safe_rmtree(d)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh temp dir in the store, removed unless it was renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._sweep()
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{writer_tag()}", dir=self.root))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; images are readable by every sandbox user
        try:
            yield tmp
        finally:
            _safe_rmtree(tmp)

    def _commit(self, staged: Path, meta: dict[str, Any]) -> Image:
        """Write metadata into ``staged`` and rename it into place, replacing any old one.
        The tree is flushed to disk first, then image.json (fsynced), and the store's
        directory after the rename: a power cut leaves the image whole under its name,
        or the old one (or, between the two renames of a replace, none: build or pull
        it again), never a tree with files the cut tore."""
        final = self.root / _dir_name(meta["name"])
        syncfs(staged)  # the unpacked files: one syncfs, not an fsync per file
        write_atomic(staged / METADATA_FILE, (json.dumps(meta, indent=2, sort_keys=True)
                                              + "\n").encode(), sync_dir=True)  # fmt: skip
        with self._lock():
            if final.exists():
                trash = self.root / f"{_TRASH_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
                final.rename(trash)
                staged.rename(final)
                fsync_dir(self.root)
                _safe_rmtree(trash)
            else:
                staged.rename(final)
                fsync_dir(self.root)
        img = self._load(final)
        assert img is not None
        return img

    def remove(self, name: str) -> None:
        img = self.get(name)
        d = img.rootfs.parent
        with self._lock():
            trash = self.root / f"{_TRASH_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
            try:
                d.rename(trash)
            except FileNotFoundError:
                raise ImageNotFound(f"no such image: {name} (try `torpor images`)") from None
        _safe_rmtree(trash)

    # -- the base image --

    def build_base(self, *, force: bool = False, progress: Progress | None = None) -> Image:
        say = progress or (lambda _msg: None)
        if not force:
            try:
                return self.get(BASE_IMAGE)
            except ImageNotFound:
                pass
        mirror = apt_mirror()
        say(f"building {BASE_IMAGE}: Debian {BASE_SUITE} {BASE_VARIANT} + "
            f"{', '.join(BASE_PACKAGES)} from {mirror}")
        started = time.monotonic()
        with self._staging() as tmp:
            rootfs = tmp / ROOTFS_DIR
            argv = [
                "mmdebstrap",
                f"--variant={BASE_VARIANT}",
                "--mode=root",
                "--format=directory",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt={opt}" for opt in BASE_DPKG_OPTS),
                BASE_SUITE,
                str(rootfs),
                mirror,
            ]

            def relay(line: str) -> None:
                if line.startswith(("I:", "W:", "E:")):
                    say(line[2:].strip())

            _run(argv, "building the base image", relay, stream=True)
            (rootfs / "etc/torpor/restore.d").mkdir(parents=True, exist_ok=True)
            _add_init_mountpoint(rootfs)
            _add_git_defaults(rootfs)
            packages = _dpkg_packages(rootfs)
            h = hashlib.sha256()
            for part in (BASE_RECIPE, BASE_SUITE, BASE_VARIANT, *BASE_PACKAGES,
                         *BASE_DPKG_OPTS, "--", *packages):
                h.update(part.encode() + b"\n")
            say("measuring the image")
            meta = {
                "name": BASE_IMAGE,
                "digest": f"sha256:{h.hexdigest()}",
                "env": [DEFAULT_PATH, "LANG=C.UTF-8"],
                # No command: a sandbox started from the base image without one idles under
                # torpor-init, and the agent's work arrives through exec.
                "cmd": [],
                "entrypoint": [],
                "workdir": "/",
                "user": "",
                "size": _disk_usage(rootfs),
                "created": _now_iso(),
                "source": f"mmdebstrap {BASE_SUITE} {BASE_VARIANT}",
                "recipe": BASE_RECIPE,
                "packages": len(packages),
            }
            img = self._commit(tmp, meta)
        say(f"built {img.name} ({img.size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")
        return img

    # -- OCI images --

    def pull(
        self,
        ref: str,
        *,
        name: str | None = None,
        insecure: bool = False,
        progress: Progress | None = None,
    ) -> Image:
        say = progress or (lambda _msg: None)
        transport, rest = _split_ref(ref)
        target = canonical_name(name if name else rest)
        if transport in ("oci:", "docker-archive:"):
            path = rest.split(":", 1)[0]
            if not Path(path).exists():
                raise ImageError(f"cannot pull {ref}: {path} does not exist")
        started = time.monotonic()
        with self._staging() as tmp:
            layout = tmp / "oci"
            argv = ["skopeo", "copy", "--quiet"]
            if transport == "docker://" and (insecure or _is_local_registry(rest)):
                argv.append("--src-tls-verify=false")
            argv += [f"{transport}{rest}", f"oci:{layout}:image"]
            say(f"fetching {ref}")
            _run(argv, f"pulling {ref}")
            digest, config = _layout_image(layout, "image")
            say(f"unpacking {digest[:19]}")
            rootfs = tmp / ROOTFS_DIR
            _run(["umoci", "raw", "unpack", "--image", f"{layout}:image", str(rootfs)],
                 f"unpacking {ref}")
            shutil.rmtree(layout)
            _add_init_mountpoint(rootfs)
            cfg = config.get("config") or {}
            entrypoint = list(cfg.get("Entrypoint") or [])
            meta = {
                "name": target,
                "digest": digest,
                "env": list(cfg.get("Env") or [DEFAULT_PATH]),
                "entrypoint": entrypoint,
                "cmd": entrypoint + list(cfg.get("Cmd") or []),
                "workdir": cfg.get("WorkingDir") or "/",
                "user": cfg.get("User") or "",
                "size": _disk_usage(rootfs),
                "created": config.get("created") or _now_iso(),
                "pulled": _now_iso(),
                "source": ref,
            }
            img = self._commit(tmp, meta)
        say(f"pulled {img.name} ({img.size / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")
        return img
