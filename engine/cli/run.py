"""Project sandboxes from the Sandboxfile: ``msb run``, ``shell``, ``log``, ``status``, ``stop``.

Each running project sandbox is owned by a supervisor process (engine/project/supervisor.py);
these verbs start one or talk to it. Exit codes: engine/cli/common.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from engine.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_NOT_THERE,
    EXIT_USAGE,
    backend_option,
    cancel_on_hangup,
    check_backend,
    fail,
)
from engine.errors import ConfigError, MsbError
from engine.vm.accel import TCG_WARNING

FILE_OPTION = click.option("-f", "--file", "file", type=click.Path(path_type=Path, dir_okay=True),
                           help="The Sandboxfile (default: the nearest one from here upwards).")  # fmt: skip


def _project(file: Path | None) -> Any:
    from engine.project.runtime import Project

    if file is not None and file.is_dir():
        file = file / "Sandboxfile"
    return Project.load(file)


def _entry(project: Any, name: str) -> Any:
    entry = project.sandboxfile.get(name)
    if entry is None:
        defined = ", ".join(project.sandboxfile.names()) or "none"
        raise ConfigError(f"{project.path}: no sandbox named {name!r} (defined: {defined})",
                          hint=f"add it with `msb add {name} --image IMAGE`")  # fmt: skip
    return entry


def _interactive(tty: bool | None) -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty() if tty is None else tty


async def _attach_remote(socket: Path, msg: dict[str, Any], interactive: bool) -> int:
    from engine.cli.terminal import attach, raw_terminal, terminal_size
    from engine.project.control import RemoteProcess

    rows, cols = terminal_size()
    proc = await RemoteProcess.open(socket, {**msg, "tty": interactive, "rows": rows, "cols": cols})
    try:
        if interactive and sys.stdin.isatty():
            with raw_terminal(sys.stdin.fileno()):
                return await attach(proc, interactive=True, forward_stdin=True)
        return await attach(proc, interactive=False, forward_stdin=True)
    finally:
        await proc.close()


async def _wait_gone(sdir: Any, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if not sdir.alive():
            return
        await asyncio.sleep(0.05)


def _note_tcg(state: Any, quiet: bool) -> None:
    if state.accel == "tcg" and not quiet:
        click.echo(f"msb: note: {TCG_WARNING}", err=True)


def _note_running_elsewhere(sdir: Any, forced: str | None, quiet: bool) -> None:
    """``--backend`` applies when a sandbox starts; say so when it already runs on another."""
    from engine.vm.select import backend_label

    st = sdir.state()
    if forced and forced != "auto" and st.backend and st.backend != forced and not quiet:
        click.echo(f"msb: note: sandbox {sdir.name!r} already runs on {backend_label(st.backend, st.accel)}; "
                   f"--backend {forced} applies when it starts", err=True)  # fmt: skip


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("target", metavar="NAME[~SCRIPT]")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-s", "--sandbox", "sandbox_flag", is_flag=True,
              help="NAME is a sandbox (the default; for compatibility).")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; follow with `msb log NAME -f`.")
@click.option("-t/-T", "--tty/--no-tty", default=None, help="Allocate a terminal (default: when stdin is one).")
@click.option("-q", "--quiet", is_flag=True, envvar="MSB_QUIET", help="No notes on stderr.")
@FILE_OPTION
@backend_option(sandboxfile=True)
def run(target: str, args: tuple[str, ...], sandbox_flag: bool, detach: bool, tty: bool | None, quiet: bool,
        file: Path | None, backend: str | None) -> None:  # fmt: skip
    """Start sandbox NAME from the Sandboxfile and run its start script.

    \b
    NAME~SCRIPT runs scripts.SCRIPT instead; `-- ARGS` runs ARGS instead. Without a
    script the image's Entrypoint/Cmd runs, and without that a shell. The sandbox is
    persistent: its files live in .menv/ beside the Sandboxfile and survive stop/start
    and crashes. It stops when the command exits (or on `msb stop NAME`). Dependencies
    (depends_on) are started first and keep running. Exit code: the command's.

    \b
    Examples:
      msb run web              # scripts.start of `web`
      msb run py~repl          # scripts.repl of `py`
      msb run -d web           # in the background
      msb run py -- python3 -c 'print(1 + 1)'
      msb run --backend gvisor web
    """
    argv = list(args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        code = asyncio.run(_run(target, argv, detach, _interactive(tty), quiet, file, backend))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


async def _run(target: str, argv: list[str], detach: bool, interactive: bool, quiet: bool, file: Path | None,
               backend: str | None = None) -> int:  # fmt: skip
    from engine.cli.progress import BarProgress
    from engine.project import runtime, up
    from engine.project.specs import command_for

    name, _, script = target.partition("~")
    try:
        check_backend(backend)
        project = _project(file)
        order, entries = up.check(project, name)  # every problem before anything starts
        sdir = project.sandbox_dir(name)
        if sdir.alive():
            click.echo(f"msb: error: sandbox {name!r} is already running", err=True)
            click.echo(f"msb: hint: open a shell with `msb shell {name}`, or `msb stop {name}` first", err=True)
            return EXIT_NOT_THERE
        roots = await up.resolve_all(project, entries, BarProgress(quiet=quiet))
        command = command_for(entries[name], roots[name].defaults, script or None, argv)

        def started(dep: str) -> None:
            click.echo(f"msb: started dependency {dep!r} (stop it with `msb stop {dep}`)", err=True)

        await up.start_dependencies(project, order, entries, roots, started, backend=backend)
        if detach:
            state = await runtime.launch(project, name, command, backend=backend)
            _note_tcg(state, quiet)
            what = " ".join(command) if command else "idle (no command)"
            click.echo(f"msb: sandbox {name!r} running in the background: {what}", err=True)
            click.echo(f"msb: follow it with `msb log {name} -f`; stop it with `msb stop {name}`", err=True)
            return 0
        command = command or [entries[name].shell or "/bin/sh"]
        state = await runtime.launch(project, name, command, wait_attach=True, backend=backend)
    except MsbError as exc:
        return fail(exc)
    _note_tcg(state, quiet)
    try:
        code = await _attach_remote(sdir.socket(), {"op": "attach"}, interactive)
    except MsbError as exc:
        return fail(exc)
    except (KeyboardInterrupt, asyncio.CancelledError):
        await runtime.stop(sdir)
        return EXIT_INTERRUPTED
    await _wait_gone(sdir)
    return code


@click.command()
@click.argument("name")
@click.option("-t/-T", "--tty/--no-tty", default=None, help="Allocate a terminal (default: when stdin is one).")
@click.option("-q", "--quiet", is_flag=True, envvar="MSB_QUIET", help="No notes on stderr.")
@FILE_OPTION
@backend_option(sandboxfile=True)
def shell(name: str, tty: bool | None, quiet: bool, file: Path | None, backend: str | None) -> None:
    """Open an interactive shell in sandbox NAME.

    A running sandbox gets a second session; a stopped one is started for the shell (with
    its persistent files) and stopped again when the shell exits. The shell is the entry's
    `shell` (default /bin/sh). Exit code: the shell's.
    """
    try:
        code = asyncio.run(_shell(name, _interactive(tty), quiet, file, backend))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


async def _shell(name: str, interactive: bool, quiet: bool, file: Path | None, backend: str | None = None) -> int:
    from engine.cli.progress import BarProgress
    from engine.images.resolve import resolve_root
    from engine.project import runtime
    from engine.project.specs import spec_overrides

    started = False
    cancel_on_hangup()
    try:
        check_backend(backend)
        project = _project(file)
        entry = _entry(project, name)
        sdir = project.sandbox_dir(name)
        if sdir.alive():
            _note_running_elsewhere(sdir, backend, quiet)
        else:
            spec_overrides(entry, project.dir)
            if not entry.image:
                raise ConfigError(f"{project.path}: sandbox {name!r} has no image", hint=f"set sandboxes.{name}.image")
            await resolve_root(entry.image, base_dir=project.dir, progress=BarProgress(quiet=quiet))
            _note_tcg(await runtime.launch(project, name, None, backend=backend), quiet)
            started = True
        return await _attach_remote(sdir.socket(), {"op": "spawn", "argv": [entry.shell or "/bin/sh"]}, interactive)
    except MsbError as exc:
        return fail(exc)
    except asyncio.CancelledError:  # the terminal went away
        return EXIT_INTERRUPTED
    finally:
        if started:
            await runtime.stop(sdir)


def register(cli: click.Group) -> None:
    """Add ``run``, ``shell`` (and, from engine/cli/state.py, ``log``/``status``/``stop``)."""
    from engine.cli.state import log, status, stop

    for command in (run, shell, log, status, stop):
        cli.add_command(command)


__all__ = ["EXIT_USAGE", "register"]
