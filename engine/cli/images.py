"""``msb pull / images / rmi / push / image … / registry …`` — the image commands."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

import click

from engine.cli.common import echo_error
from engine.cli.progress import BarProgress, human
from engine.errors import MsbError
from engine.images.oci import Platform
from engine.images.store import ImageRecord, ImageStore


def _store() -> ImageStore:
    return ImageStore.default()


def _bar(quiet: bool) -> BarProgress:
    return BarProgress(quiet=quiet)


def _die(exc: MsbError) -> None:
    echo_error(exc)
    sys.exit(1)


def _age(ts: float) -> str:
    secs = max(0, int(dt.datetime.now().timestamp() - ts))
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= n:
            k = secs // n
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "just now"


def _split(rec: ImageRecord) -> tuple[str, str]:
    short = rec.ref.short()
    if "@" in short:
        return short.partition("@")[0], "<none>"
    repo, _, tag = short.rpartition(":")
    return repo, tag


def register(cli: click.Group) -> None:
    cli.add_command(pull)
    cli.add_command(images)
    cli.add_command(rmi)
    cli.add_command(push)
    cli.add_command(image)
    cli.add_command(registry)


@click.command()
@click.argument("ref", metavar="IMAGE")
@click.option("--platform", default=None, metavar="OS/ARCH", help="Pick this platform from a multi-platform image.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output; print only the image id.")
def pull(ref: str, platform: str | None, quiet: bool) -> None:
    """Pull IMAGE from its registry into the local store.

    \b
    IMAGE is Docker-style: python:3.11, ghcr.io/org/app:1, localhost:5000/x@sha256:…
    Loopback registries are reached over plain HTTP; others need HTTPS unless listed in
    MSB_INSECURE_REGISTRIES. Credentials: `msb registry login` or ~/.docker/config.json.
    """
    from engine.images.pull import pull_image

    plat = None
    if platform:
        os_, _, arch = platform.partition("/")
        arch, _, variant = arch.partition("/")
        if not os_ or not arch:
            raise click.BadParameter("use OS/ARCH[/VARIANT], e.g. linux/arm64", param_hint="--platform")
        plat = Platform(os=os_, architecture=arch, variant=variant or None)
    progress = _bar(quiet)
    try:
        result = asyncio.run(pull_image(ref, _store(), platform=plat, progress=progress))
    except MsbError as exc:
        _die(exc)
        return
    rec = result.record
    if quiet:
        click.echo(rec.manifest)
        return
    if result.offline:
        click.echo(f"{rec.ref.short()}: registry unreachable; the stored image is used ({rec.id})")
    elif result.up_to_date:
        click.echo(f"{rec.ref.short()}: up to date ({rec.id})")
    else:
        click.echo(f"{rec.ref.short()}: pulled {rec.id} ({_human(result.fetched_bytes)} downloaded)")
    click.echo(f"digest: {rec.digest}")


def _human(n: int) -> str:
    return human(n)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def images(as_json: bool) -> None:
    """List the images in the local store."""
    recs = _store().list()
    if as_json:
        click.echo(json.dumps([r.model_dump() | {"id": r.id} for r in recs], indent=2))
        return
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "SIZE", "PLATFORM", "STORED", "SOURCE")]
    for r in recs:
        repo, tag = _split(r)
        rows.append((repo, tag, r.id, _human(r.size), r.platform, _age(r.stored_at), r.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not recs:
        click.echo("(no images — `msb pull IMAGE`, or `msb image build microsandbox/python` offline)", err=True)


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--keep-blobs", is_flag=True, help="Only untag; leave the blobs for `msb image prune`.")
def rmi(names: tuple[str, ...], keep_blobs: bool) -> None:
    """Remove images from the store (and the blobs and root filesystems no other image uses)."""
    from engine import paths
    from engine.images.rootfs import remove_unreferenced

    store = _store()
    failed = False
    for n in names:
        try:
            rec = store.remove(n)
            click.echo(f"untagged {rec.ref.short()} ({rec.id})")
        except MsbError as exc:
            click.echo(f"msb: error: {exc}", err=True)
            failed = True
    if not keep_blobs:
        removed, freed = store.prune(ingest_older_than_s=float("inf"))
        remove_unreferenced(store, paths.cache_dir())
        if removed:
            click.echo(f"deleted {removed} blobs ({_human(freed)})")
    sys.exit(1 if failed else 0)


@click.command()
@click.argument("source", metavar="IMAGE")
@click.argument("dest", required=False, metavar="[DEST]")
@click.option("-q", "--quiet", is_flag=True)
def push(source: str, dest: str | None, quiet: bool) -> None:
    """Push a stored IMAGE to its registry, or to DEST (another reference)."""
    from engine.images.push import push_image

    try:
        res = asyncio.run(push_image(_store(), source, dest, progress=_bar(quiet)))
    except MsbError as exc:
        _die(exc)
        return
    click.echo(f"pushed {res.ref} ({res.pushed_blobs} blobs, {_human(res.pushed_bytes)} uploaded)")
    click.echo(f"digest: {res.digest}")


@click.group()
def image() -> None:
    """Manage images: build, import, export, inspect, prune."""


image.add_command(images, name="ls")
image.add_command(pull)
image.add_command(push)
image.add_command(rmi, name="rm")


@image.command("build")
@click.argument("name", type=click.Choice(["microsandbox/python", "microsandbox/node", "busybox"]))
@click.option("--suite", default="bookworm", show_default=True, help="Debian release to build from.")
@click.option("--mirror", default=None, help="Debian mirror URL (default: this host's apt source).")
@click.option("--tag", default=None, help="Store it under this name instead of the default one.")
def build(name: str, suite: str, mirror: str | None, tag: str | None) -> None:
    """Build a base image offline from Debian packages (no Docker Hub needed).

    \b
    microsandbox/python  Debian minbase + python3 + pip
    microsandbox/node    Debian minbase + nodejs + npm
    busybox              the host's static busybox
    """
    from engine.images.resolve import build_offline

    click.echo(f"building {name} from Debian {suite} packages …", err=True)
    try:
        rec = build_offline(name, _store(), lambda line: click.echo(f"  {line}", err=True), tag=tag, suite=suite,
                            mirror=mirror)  # fmt: skip
    except MsbError as exc:
        _die(exc)
        return
    click.echo(f"built {rec.ref.short()} ({rec.id}, {_human(rec.size)})")


@image.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--tag", default=None, help="Name for the image (needed when the archive names none).")
def import_(path: Path, tag: str | None) -> None:
    """Import an OCI layout directory, or a `docker save` / OCI tarball."""
    from engine.images.archive import import_archive

    try:
        recs = import_archive(_store(), path, name=tag, progress=_bar(False))
    except MsbError as exc:
        _die(exc)
        return
    for rec in recs:
        click.echo(f"imported {rec.ref.short()} ({rec.id})")


@image.command("export")
@click.argument("names", nargs=-1, required=True, metavar="IMAGE...")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Directory (OCI layout) or FILE.tar.")
def export(names: tuple[str, ...], output: Path) -> None:
    """Export images as an OCI image layout (directory, or a .tar of one)."""
    from engine.images.archive import export_layout

    try:
        out = export_layout(_store(), list(names), output)
    except MsbError as exc:
        _die(exc)
        return
    click.echo(f"exported {len(names)} image(s) to {out}")


@image.command("inspect")
@click.argument("name", metavar="IMAGE")
def inspect(name: str) -> None:
    """Show an image's record, manifest and config as JSON."""
    store = _store()
    rec = store.find(name)
    if rec is None:
        click.echo(f"msb: error: no image {name!r} in the store\n  hint: list them with `msb images`", err=True)
        sys.exit(1)
    doc = {
        "record": rec.model_dump() | {"id": rec.id},
        "manifest": store.manifest(rec).wire(),
        "config": store.config(rec).wire(),
    }
    click.echo(json.dumps(doc, indent=2))


@image.command("prune")
@click.option("--all", "everything", is_flag=True,
              help="Also remove every cached template and root filesystem no running sandbox uses.")
def prune(everything: bool) -> None:
    """Delete blobs and built root filesystems that no image uses, stale partial downloads, and
    cached templates and root filesystems beyond their bounds (MSB_TEMPLATE_CACHE_MIB,
    MSB_ROOTFS_CACHE_MIB; least recently used first). Entries a running sandbox uses stay."""
    from engine import paths
    from engine.cachebound import all_caches
    from engine.images.rootfs import remove_unreferenced

    store = _store()
    removed, freed = store.prune()
    click.echo(f"deleted {removed} blobs ({_human(freed)})")
    unref = remove_unreferenced(store, paths.cache_dir())
    click.echo(f"deleted {len(unref.removed)} root filesystems of removed images ({_human(unref.freed_bytes)})")
    for cache in all_caches(paths.cache_dir()):
        out = cache.prune_all() if everything else cache.enforce()
        kept = f"; {out.in_use} in use kept" if out.in_use else ""
        click.echo(f"{cache.name}: deleted {len(out.removed)} ({_human(out.freed_bytes)}){kept}")


@click.group()
def registry() -> None:
    """Registry credentials."""


@registry.command("login")
@click.argument("host")
@click.option("-u", "--username", required=True)
@click.option("-p", "--password", default=None, help="Prefer --password-stdin: this shows in `ps`.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def login(host: str, username: str, password: str | None, password_stdin: bool) -> None:
    """Log in to a registry (checked against it, then saved in msb's state dir, mode 0600)."""
    from engine.images import credentials
    from engine.images.registry import OrasRegistry

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        password = click.prompt("Password", hide_input=True)
    creds = credentials.Credentials(username=username, password=password, source="login")
    try:
        asyncio.run(OrasRegistry(creds={host: creds}, use_stored_credentials=False).check_login(host))
    except MsbError as exc:
        _die(exc)
        return
    path = credentials.save(host, creds)
    click.echo(f"login succeeded; credentials for {host} saved in {path}")


@registry.command("logout")
@click.argument("host")
def logout(host: str) -> None:
    """Forget msb's saved credentials for HOST."""
    from engine.images import credentials

    if credentials.forget(host):
        click.echo(f"removed the credentials for {host}")
    else:
        click.echo(f"no saved credentials for {host}", err=True)


