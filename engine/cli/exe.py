"""``msb exe``: run a command in a throwaway sandbox that leaves nothing behind."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import click

from engine.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    backend_option,
    cancel_on_hangup,
    check_backend,
    fail,
    parse_env_options,
)
from engine.cli.host_ca import bare_host_ca, host_ca_option, host_ca_path
from engine.errors import MsbError
from engine.vm.accel import TCG_WARNING

AFTER_DASHDASH = "msb.exe.after_dashdash"


class _ExeCommand(click.Command):
    """Remembers how many words followed ``--``: with ``--image``, only those are the command (a word
    before ``--`` would be a second IMAGE)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[AFTER_DASHDASH] = len(args) - args.index("--") - 1 if "--" in args else 0
        return super().parse_args(ctx, bare_host_ca(args))


def split_image(ctx: click.Context, image: str | None, command: tuple[str, ...], image_opt: str | None,
                ) -> tuple[str, list[str]]:  # fmt: skip
    """The image (the IMAGE argument or ``--image``) and the command words.

    Raises:
        click.UsageError: no image, or both the argument and ``--image``.
    """
    words = ([image] if image is not None else []) + list(command)
    if image_opt is None:
        if not words:
            raise click.UsageError("Missing argument 'IMAGE' (or --image IMAGE).")
        image, words = words[0], words[1:]
    else:
        before = len(words) - ctx.meta.get(AFTER_DASHDASH, 0)
        if before > 0:
            raise click.UsageError(f"the image is given twice: --image {image_opt} and the argument {words[0]!r}; "
                                   f"give one (with --image, put the command after --: "
                                   f"msb exe --image {image_opt} -- {' '.join(words)})")  # fmt: skip
        image = image_opt
    if words and words[0] == "--":
        words = words[1:]
    return image, words


@click.command(cls=_ExeCommand, context_settings={"ignore_unknown_options": True})
@click.argument("image", metavar="[IMAGE]", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--image", "image_opt", metavar="IMAGE", default=None,
              help="The image, as the IMAGE argument (give one or the other; the command then follows --).")
@click.option("--cpus", type=int, default=1, show_default=True, help="Virtual CPUs.")
@click.option("--memory", type=int, default=512, show_default=True, help="Guest memory in MiB.")
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Environment variable (repeatable).")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:GUEST[:ro]",
              help="Share a host directory (relative to the current directory; repeatable).")
@click.option("-p", "--port", "ports", multiple=True, metavar="[IP:]HOST:GUEST",
              help="Publish a guest port on the host (127.0.0.1 unless an IP is given; repeatable).")
@click.option("--scope", type=click.Choice(["none", "group", "public", "any"]), default="public", show_default=True,
              help="Network reach: none = no network; public = internet but not the host's "
              "loopback/private ranges; any = everything.")
@click.option("-w", "--workdir", default=None, help="Working directory in the guest (default: the image's).")
@click.option("--timeout", type=float, default=None, help="Kill the command after this many seconds.")
@click.option("-t/-T", "--tty/--no-tty", default=None, help="Allocate a terminal (default: when stdin is one).")
@click.option("--with-entrypoint", is_flag=True,
              help="COMMAND is arguments to the image's Entrypoint (as `docker run` does); used by `msb install`.")
@click.option("-q", "--quiet", is_flag=True, envvar="MSB_QUIET", help="No notes on stderr (e.g. the TCG note).")
@host_ca_option()
@backend_option()
def exe(image: str | None, command: tuple[str, ...], image_opt: str | None, cpus: int, memory: int,
        envs: tuple[str, ...], volumes: tuple[str, ...], ports: tuple[str, ...], scope: str, workdir: str | None,
        timeout: float | None, tty: bool | None, with_entrypoint: bool, quiet: bool,
        backend: str | None, host_ca: str | None = None) -> None:  # fmt: skip
    """Run COMMAND in a throwaway sandbox booted from IMAGE (or --image IMAGE).

    IMAGE is an image reference (pulled if not in the store; its Env, WorkingDir, User
    and, without COMMAND, Entrypoint/Cmd apply) or a root filesystem directory
    (./dir, /dir). Nothing is left behind: the writable layer lives in guest memory and
    the VM's sockets and logs are removed however msb exits (Ctrl-C included). The exit
    code is the command's.

    \b
    Examples:
      msb exe busybox -- sh -c 'echo hello from $(hostname)'
      msb exe --image microsandbox/python -- python -c 'print(1+1)'
      msb exe -v ./data:/data:ro microsandbox/python -- python3 /data/script.py
      msb exe -p 8000:8000 microsandbox/python -- python3 -m http.server 8000
      msb exe ./rootfs -- ls /
      msb exe --backend qemu busybox -- uname -r
      msb exe --host-ca microsandbox/python -- pip install requests
    """
    from engine.project.specs import parse_port, parse_volume, refuse_writable_state

    image, argv = split_image(click.get_current_context(), image, command, image_opt)
    env = parse_env_options(envs)
    try:
        mounts = tuple(parse_volume(v, Path.cwd()) for v in volumes)
        refuse_writable_state(list(mounts), list(volumes))
        published = tuple(parse_port(p) for p in ports)
        check_backend(backend)
    except MsbError as exc:
        fail(exc)
        sys.exit(EXIT_USAGE)
    options = {"cpus": cpus, "memory_mib": memory, "env": env, "workdir": workdir, "volumes": mounts,
               "ports": published, "network": scope}  # fmt: skip
    try:
        code = asyncio.run(_exe(image, argv, options, timeout, tty, quiet, with_entrypoint, backend,
                                host_ca_path(host_ca)))  # fmt: skip
    except KeyboardInterrupt:  # the sandbox was killed and cleaned up on the way out
        code = EXIT_INTERRUPTED
    sys.exit(code)


async def _exe(image: str, argv: list[str], options: dict[str, object], timeout: float | None, tty: bool | None,
               quiet: bool, with_entrypoint: bool, backend: str | None = None,
               host_ca: Path | None = None) -> int:  # fmt: skip
    from engine.cli.progress import BarProgress
    from engine.cli.terminal import attach, raw_terminal, terminal_size
    from engine.images.resolve import resolve_root
    from engine.sandbox.engine import Engine
    from engine.sandbox.host_ca import with_host_ca

    interactive = sys.stdin.isatty() and sys.stdout.isatty() if tty is None else tty
    cancel_on_hangup()
    engine = Engine(backend=backend)
    try:
        await engine.prepare()  # a forced backend that does not work fails before any pull
        root = await resolve_root(image, progress=BarProgress(quiet=quiet))
    except MsbError as exc:
        return fail(exc)
    if with_entrypoint:
        argv = root.defaults.command(argv) or ["/bin/sh"]
    else:
        argv = argv or root.defaults.command() or ["/bin/sh"]
    try:
        spec = root.spec(f"exe-{secrets.token_hex(4)}", **options)
    except ValueError as exc:
        click.echo(f"msb: error: {exc}", err=True)
        return 2
    try:
        if host_ca is not None:
            spec = with_host_ca(spec, host_ca)
        sandbox = await engine.start(spec)
    except MsbError as exc:
        return fail(exc)
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
        return fail(exc)
    except asyncio.CancelledError:  # SIGHUP/SIGTERM: the terminal went away
        return EXIT_INTERRUPTED
    finally:
        # Ephemeral: nothing to keep, so killing is both faster and complete.
        await sandbox.kill()
