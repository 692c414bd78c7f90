"""Image commands of the `torpor` CLI: `image build-base`, `pull`, `images`, `rmi`.

The main CLI mounts ``image_app`` as ``torpor image`` and registers the plain functions as
top-level verbs, Docker-style: ``app.command("pull")(pull)``, ``app.command("images")(images)``
and ``app.command("rmi")(rmi)``. Data goes to stdout (``--format json`` for machines),
progress and errors to stderr; every error is one line and exit code 1.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import NoReturn

import typer
from rich.console import Console

from torpor.sandbox.images import Image, ImageError, ImageStore

image_app = typer.Typer(
    help="Sandbox images: the torpor/base image and pulled OCI images.",
    no_args_is_help=True,
)

_FORMATS = ("text", "json")


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, log_path=False)


def _fail(msg: str) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def _check_format(fmt: str) -> str:
    fmt = fmt.lower()
    if fmt not in _FORMATS:
        _fail(f"unknown format {fmt!r}: use text or json")
    return fmt


def human_size(n: int) -> str:
    """Decimal units, as `docker images` shows them."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" or size >= 100 else f"{size:.3g}{unit}"
        size /= 1000
    return f"{size:.3g}TB"  # pragma: no cover


def human_age(iso: str) -> str:
    """'3 minutes ago' for an ISO-8601 time; the time itself if it does not parse."""
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        # Nanosecond fractions (as in many OCI configs) are more than fromisoformat takes.
        try:
            head = iso.split(".", 1)[0].rstrip("Z")
            then = datetime.fromisoformat(head).replace(tzinfo=UTC)
        except ValueError:
            return iso
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 0:
        return iso
    for unit, length in (("year", 31536000), ("month", 2592000), ("week", 604800),
                         ("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= length:
            n = secs // length
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "less than a minute ago"


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def _summary(img: Image) -> str:
    return f"{img.name}  {img.digest}  {human_size(img.size)}"


@image_app.command("build-base")
def build_base(
    force: bool = typer.Option(False, "--force", help="Rebuild even if torpor/base exists."),
    fmt: str = typer.Option("text", "--format", help="Output format: text or json."),
) -> None:
    """Build torpor/base with mmdebstrap (cached; --force rebuilds).

    Debian bookworm minbase plus python3, git, curl, procps and ca-certificates.
    """
    fmt = _check_format(fmt)
    console = _err_console()
    started = time.monotonic()
    try:
        with console.status("building torpor/base") as status:

            def progress(msg: str) -> None:
                status.update(f"torpor/base: {msg}")
                console.log(msg)

            img = ImageStore().build_base(force=force, progress=progress)
    except ImageError as e:
        _fail(str(e))
    took = time.monotonic() - started
    if fmt == "json":
        typer.echo(json.dumps({**img.to_dict(), "seconds": round(took, 3)}, indent=2))
    else:
        typer.echo(f"{_summary(img)}  ({took:.1f} s)")


def pull(
    ref: str = typer.Argument(
        ..., help="docker://HOST/NAME[:TAG], oci:PATH[:TAG] or docker-archive:PATH"
    ),
    name: str | None = typer.Option(
        None, "--name", help="Store the image under this name (default: REF without transport)."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Plain HTTP / unverified TLS (automatic for localhost)."
    ),
    fmt: str = typer.Option("text", "--format", help="Output format: text or json."),
) -> None:
    """Pull an OCI image (skopeo + umoci) into the local image store."""
    fmt = _check_format(fmt)
    console = _err_console()
    started = time.monotonic()
    try:
        with console.status(f"pulling {ref}") as status:
            img = ImageStore().pull(
                ref, name=name, insecure=insecure, progress=lambda m: status.update(m)
            )
    except ImageError as e:
        _fail(str(e))
    took = time.monotonic() - started
    if fmt == "json":
        typer.echo(json.dumps({**img.to_dict(), "seconds": round(took, 3)}, indent=2))
    else:
        typer.echo(f"{_summary(img)}  ({took:.1f} s)")


def images(
    fmt: str = typer.Option("text", "--format", help="Output format: text or json."),
) -> None:
    """List the images in the local store."""
    fmt = _check_format(fmt)
    try:
        found = ImageStore().list()
    except (ImageError, OSError) as e:
        _fail(str(e))
    if fmt == "json":
        typer.echo(json.dumps([i.to_dict() for i in found], indent=2))
        return
    rows = [["NAME", "DIGEST", "SIZE", "CREATED"]]
    rows += [[i.name, i.short_digest, human_size(i.size), human_age(i.created)] for i in found]
    typer.echo(format_table(rows))


def rmi(
    names: list[str] = typer.Argument(..., help="Image names or digest prefixes."),  # noqa: B008
) -> None:
    """Remove images from the local store."""
    store = ImageStore()
    failed = False
    for n in names:
        try:
            img = store.get(n)
            store.remove(img.name)
        except ImageError as e:
            typer.echo(f"error: {e}", err=True)
            failed = True
            continue
        typer.echo(f"Deleted: {img.name} ({img.digest})")
    if failed:
        raise typer.Exit(1)


# Docker's long forms: `torpor image pull|ls|rm`.
image_app.command("pull")(pull)
image_app.command("ls")(images)
image_app.command("rm")(rmi)
