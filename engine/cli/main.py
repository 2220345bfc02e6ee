"""The ``msb`` command line.

Exit codes scripts can rely on: the guest command's own code for ``exe``; 125 when msb itself
failed (message on stderr says what to do); 126 the command could not be started; 127 the
command was not found; 130 interrupted (Ctrl-C); 2 usage errors.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys

import click

from engine.cli.images import register as register_image_commands
from engine.cli.server import server as server_group
from engine.errors import ExecError, MsbError
from engine.vm.accel import TCG_WARNING

EXIT_MSB_FAILED = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130


def _fail(exc: MsbError) -> int:
    click.echo(f"msb: error: {exc}", err=True)
    if isinstance(exc, ExecError):
        return EXIT_NOT_FOUND if exc.errno == 2 else EXIT_CANNOT_RUN
    return EXIT_MSB_FAILED


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", envvar="MSB_LOG_LEVEL", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
def cli(log_level: str) -> None:
    """msb — run untrusted code in microVM sandboxes."""
    logging.basicConfig(level=log_level.upper(), format="msb: %(levelname)s: %(message)s")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("image", metavar="IMAGE")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--cpus", type=int, default=1, show_default=True, help="Virtual CPUs.")
@click.option("--memory", type=int, default=512, show_default=True, help="Guest memory in MiB.")
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Environment variable (repeatable).")
@click.option("-w", "--workdir", default=None, help="Working directory in the guest (default: the image's).")
@click.option("--timeout", type=float, default=None, help="Kill the command after this many seconds.")
@click.option("-t/-T", "--tty/--no-tty", default=None, help="Allocate a terminal (default: when stdin is one).")
@click.option("-q", "--quiet", is_flag=True, envvar="MSB_QUIET", help="No notes on stderr (e.g. the TCG note).")
def exe(image: str, command: tuple[str, ...], cpus: int, memory: int, envs: tuple[str, ...],
        workdir: str | None, timeout: float | None, tty: bool | None, quiet: bool) -> None:
    """Run COMMAND in a throwaway sandbox booted from IMAGE.

    IMAGE is an image reference (pulled if not in the store; its Env, WorkingDir, User
    and, without COMMAND, Entrypoint/Cmd apply) or a root filesystem directory
    (./dir, /dir). Nothing is left behind: the writable layer lives in guest memory and
    the VM's sockets and logs are removed however msb exits. The exit code is the command's.

    \b
    Examples:
      msb exe busybox -- sh -c 'echo hello from $(hostname)'
      msb exe ./rootfs -- ls /
    """
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    env = {}
    for item in envs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint="--env")
        env[key] = value
    try:
        code = asyncio.run(_exe(image, argv, cpus, memory, env, workdir, timeout, tty, quiet))
    except KeyboardInterrupt:  # the sandbox was killed and cleaned up on the way out
        code = EXIT_INTERRUPTED
    sys.exit(code)


async def _exe(image: str, argv: list[str], cpus: int, memory: int, env: dict[str, str], workdir: str | None,
               timeout: float | None, tty: bool | None, quiet: bool) -> int:
    from engine.cli.progress import BarProgress
    from engine.cli.terminal import attach, raw_terminal, terminal_size
    from engine.images.resolve import resolve_root
    from engine.sandbox.engine import Engine

    interactive = sys.stdin.isatty() and sys.stdout.isatty() if tty is None else tty
    try:
        root = await resolve_root(image, progress=BarProgress(quiet=quiet))
    except MsbError as exc:
        return _fail(exc)
    argv = argv or root.defaults.command() or ["/bin/sh"]
    try:
        spec = root.spec(f"exe-{secrets.token_hex(4)}", cpus=cpus, memory_mib=memory, env=env, workdir=workdir)
    except ValueError as exc:
        click.echo(f"msb: error: {exc}", err=True)
        return 2
    engine = Engine()
    try:
        sandbox = await engine.start(spec)
    except MsbError as exc:
        return _fail(exc)
    if sandbox.accel == "tcg" and not quiet:
        click.echo(f"msb: note: {TCG_WARNING}", err=True)
    try:
        rows, cols = terminal_size()
        proc = await sandbox.spawn(argv, tty=interactive, stdin=True, timeout=timeout, rows=rows, cols=cols)
        if interactive and sys.stdin.isatty():
            with raw_terminal(sys.stdin.fileno()):
                return await attach(proc, interactive=True, forward_stdin=True)
        return await attach(proc, interactive=False, forward_stdin=True)
    except MsbError as exc:
        return _fail(exc)
    finally:
        # Ephemeral: nothing to keep, so killing is both faster and complete.
        await sandbox.kill()


register_image_commands(cli)
cli.add_command(server_group)


def main() -> None:
    """Entry point of the ``msb`` console script."""
    try:
        cli(prog_name="msb")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
