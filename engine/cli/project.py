"""``msb init / add / remove / list`` — edit and show a project's Sandboxfile.

Every verb takes ``-f/--file PATH``; without it the Sandboxfile is the one in the working
directory or the nearest directory above it. Edits keep the file's comments, key order,
quoting and unknown keys byte for byte outside the edited entry.

Exit codes (docs/sandboxfile.md): 0 done; 1 refused (the file already exists, other
sandboxes depend on the one to remove); 2 the Sandboxfile or the arguments are wrong
(syntax, a bad value, a dependency cycle, a sandbox name the file does not define, usage).
Errors go to stderr as ``msb: error: …`` and ``msb: hint: …``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from engine.cli.common import EXIT_NOT_THERE, EXIT_USAGE, echo_error
from engine.errors import ConfigError, MsbError
from engine.project.sandboxfile import FILENAME, STATE_DIR, Sandboxfile, display_path, entry_from_dict
from engine.project.schema import BACKENDS, SCOPES, SandboxEntry

EXIT_REFUSED = EXIT_NOT_THERE
"""1: the file already exists, other sandboxes depend on it, …"""
EXIT_CONFIG = EXIT_USAGE
"""2: a bad Sandboxfile or bad arguments; nothing was changed."""

STARTER = """\
# Sandboxfile: the sandboxes of this project (docs/sandboxfile.md lists every key).
# Edit it by hand or with `msb add NAME --image IMAGE`; msb keeps your comments.
# Run one with `msb run NAME` (its `start` script) or `msb run NAME~SCRIPT`.
#
# Example:
#
#   api:
#     image: microsandbox/python     # an OCI image, or ./dir for a root filesystem directory
#     memory: 1024                   # MiB (default 512)
#     cpus: 1
#     volumes: ["./src:/app/src"]    # host paths relative to this file; add :ro for read-only
#     ports: ["8000:8000"]           # published on 127.0.0.1
#     envs: ["DEBUG=false"]
#     depends_on: ["db"]             # started first
#     workdir: /app
#     scripts:
#       start: python3 -m http.server 8000
#     scope: public                  # network: none | group | public | any
#     backend: gvisor                # isolation: auto | qemu | gvisor | krun (`msb doctor`)
sandboxes:
"""


def die(exc: MsbError, code: int) -> NoReturn:
    """Print ``exc`` as ``msb: error:`` / ``msb: hint:`` lines on stderr and exit with ``code``."""
    echo_error(exc)
    sys.exit(code)


def _locate(file: Path | None) -> Path:
    if file is None:
        return Sandboxfile.find()
    return file / FILENAME if file.is_dir() else file


def _load(file: Path | None, *, validate: bool = True) -> Sandboxfile:
    try:
        return Sandboxfile.load(_locate(file), validate=validate)
    except ConfigError as exc:
        die(exc, EXIT_CONFIG)


file_option = click.option(
    "-f", "--file", type=click.Path(path_type=Path), default=None, metavar="PATH",
    help="The Sandboxfile (default: ./Sandboxfile or the nearest one above).",
)  # fmt: skip


def register(cli: click.Group) -> None:
    """Add ``init``, ``add``, ``remove`` and ``list`` to the ``msb`` group."""
    for command in (init, add, remove, list_):
        cli.add_command(command)


def ensure_gitignored(directory: Path) -> bool:
    """Add ``.menv/`` to ``directory/.gitignore`` (created if missing) unless it is there;
    True if the file was changed."""
    path = directory / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if any(line.strip().strip("/") == STATE_DIR for line in text.splitlines()):
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    path.write_text(f"{text}{prefix}{STATE_DIR}/\n", encoding="utf-8")
    return True


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), required=False)
@file_option
def init(directory: Path | None, file: Path | None) -> None:
    """Create a commented starter Sandboxfile in DIRECTORY (default: here) and add
    .menv/ (the project's sandbox state) to its .gitignore. Never overwrites a Sandboxfile."""
    path = file if file is not None else (directory or Path.cwd()) / FILENAME
    if path.is_dir():
        path = path / FILENAME
    if path.exists():
        die(MsbError(f"{display_path(path)} already exists",
                     hint="edit it, or add sandboxes with `msb add NAME --image IMAGE`"), EXIT_REFUSED)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER, encoding="utf-8")
    click.echo(f"created {display_path(path)}")
    if ensure_gitignored(path.parent):
        click.echo(f"added {STATE_DIR}/ to {display_path(path.parent / '.gitignore')}")
    click.echo("next: msb add NAME --image IMAGE")


@click.command()
@click.argument("name")
@click.option("--image", default=None, help="OCI image or ./dir root filesystem (required for a new sandbox).")
@click.option("--memory", type=int, default=None, help="Guest memory in MiB (default 512).")
@click.option("--cpus", type=int, default=None, help="Virtual CPUs (default 1).")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:GUEST[:ro]",
              help="Share a host directory (relative to the Sandboxfile); repeatable, replaces the list.")
@click.option("-p", "--port", "ports", multiple=True, metavar="[IP:]HOST:GUEST",
              help="Publish a guest port (on 127.0.0.1 by default); repeatable, replaces the list.")
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Environment; repeatable, replaces the list.")
@click.option("--workdir", default=None, help="Working directory in the guest (absolute).")
@click.option("--shell", default=None, help="Shell that runs scripts (default /bin/sh).")
@click.option("--script", "scripts", multiple=True, metavar="NAME=COMMAND",
              help="Add or change a script (NAME= with nothing after it deletes one); repeatable.")
@click.option("--start", default=None, metavar="COMMAND", help="The start script (the default command of msb run).")
@click.option("--scope", type=click.Choice(SCOPES), default=None, help="Network reach (default public).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="What isolates it (default: MSB_BACKEND, else auto; `msb doctor` shows which work).")
@click.option("--depends-on", "depends_on", multiple=True, metavar="NAME",
              help="Start NAME first; repeatable, replaces the list.")
@file_option
def add(name: str, image: str | None, memory: int | None, cpus: int | None, volumes: tuple[str, ...],
        ports: tuple[str, ...], envs: tuple[str, ...], workdir: str | None, shell: str | None,
        scripts: tuple[str, ...], start: str | None, scope: str | None, backend: str | None,
        depends_on: tuple[str, ...], file: Path | None) -> None:  # fmt: skip
    """Add sandbox NAME to the Sandboxfile, or update it if it exists (options not given keep
    their values; the entry keeps its comments).

    \b
    Examples:
      msb add api --image microsandbox/python --memory 1024 -p 8000:8000 --start 'python3 app.py'
      msb add api --script test='python3 -m pytest'
    """
    sbf = _load(file, validate=False)
    try:
        old = sbf.get(name)
        if old is None and image is None:
            raise ConfigError(f"sandbox {name!r} is new, so it needs an image",
                              hint=f"msb add {name} --image IMAGE (e.g. microsandbox/python)")  # fmt: skip
        data: dict[str, Any] = old.model_dump(exclude_none=True, exclude_defaults=True) if old else {}
        given = {"image": image, "memory": memory, "cpus": cpus, "workdir": workdir, "shell": shell, "scope": scope,
                 "backend": backend}  # fmt: skip
        data.update({k: v for k, v in given.items() if v is not None})
        lists = {"volumes": volumes, "ports": ports, "envs": envs, "depends_on": depends_on}
        data.update({k: list(v) for k, v in lists.items() if v})
        data["scripts"] = _edit_scripts(dict(data.get("scripts") or {}), scripts, start)
        sbf.set_sandbox(name, entry_from_dict(data))
        sbf.check_entry(name)
        sbf.start_order([name])
        sbf.save()
    except ConfigError as exc:
        die(exc, EXIT_CONFIG)
    click.echo(f"{'updated' if old else 'added'} sandbox {name!r} in {display_path(sbf.path)}")


def _edit_scripts(current: dict[str, str], scripts: tuple[str, ...], start: str | None) -> dict[str, str]:
    for item in scripts:
        key, sep, body = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--script {item!r} is not NAME=COMMAND", hint="e.g. --script test='pytest -q'")
        if body:
            current[key] = body
        else:
            current.pop(key, None)
    if start is not None:
        current["start"] = start
    return current


@click.command()
@click.argument("name")
@file_option
def remove(name: str, file: Path | None) -> None:
    """Remove sandbox NAME from the Sandboxfile (everything else in the file is kept as is).

    Its persistent state in .menv/ is not deleted."""
    sbf = _load(file, validate=False)
    if name not in sbf.names():
        die(sbf.unknown(name), EXIT_CONFIG)
    users = sbf.dependents(name)
    if users:
        die(MsbError(f"{', '.join(users)} depend{'s' if len(users) == 1 else ''} on {name!r}",
                     hint=f"remove {name!r} from their depends_on first (msb add NAME --depends-on …)"),
            EXIT_REFUSED)  # fmt: skip
    sbf.remove(name)
    sbf.save()
    click.echo(f"removed sandbox {name!r} from {display_path(sbf.path)}")


def _row(name: str, e: SandboxEntry) -> list[str]:
    return [name, e.image or "-", str(e.memory or 512), str(e.cpus or 1), ",".join(e.ports) or "-",
            ",".join(e.scripts) or "-", ",".join(e.depends_on) or "-"]  # fmt: skip


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help='Print {"file": …, "sandboxes": [{"name": …, …}]}.')
@file_option
def list_(as_json: bool, file: Path | None) -> None:
    """List the sandboxes the Sandboxfile defines (after checking the whole file)."""
    sbf = _load(file)
    try:
        entries = sbf.entries()
    except ConfigError as exc:
        die(exc, EXIT_CONFIG)
    if as_json:
        fields = set(SandboxEntry.model_fields)
        out = [{"name": n, **e.model_dump(include=fields)} for n, e in entries.items()]
        click.echo(json.dumps({"file": str(sbf.path.absolute()), "sandboxes": out}, indent=2))
        return
    if not entries:
        click.echo(f"no sandboxes in {display_path(sbf.path)} (add one: msb add NAME --image IMAGE)")
        return
    rows = [["NAME", "IMAGE", "MEMORY", "CPUS", "PORTS", "SCRIPTS", "DEPENDS ON"]]
    rows += [_row(n, e) for n, e in entries.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
