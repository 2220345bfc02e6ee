"""``msb install IMAGE [ALIAS]`` / ``msb uninstall ALIAS`` — an image as a host command.

``install`` writes a small shell launcher ``<bin-dir>/<alias>`` that runs
``msb exe --quiet --with-entrypoint IMAGE -- "$@"``: each call boots a throwaway sandbox,
passes the arguments to the image's Entrypoint and returns the guest command's exit code.
The launcher's second line, ``# msb-launcher image=IMAGE``, marks it as msb's, so
``uninstall`` never deletes a file msb did not write.

Exit codes: 0 done; 1 refused (the alias would shadow a command or overwrite a file, the
file is not an msb launcher, no such launcher); 2 bad arguments (a malformed image
reference or alias, a missing directory); 125 the image could not be pulled or built.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import click

from engine.cli.common import EXIT_MSB_FAILED
from engine.cli.project import EXIT_CONFIG, EXIT_REFUSED, die
from engine.errors import ConfigError, MsbError, NotFoundError

MARKER = "# msb-launcher image="
DEFAULT_BIN_DIR = Path("~/.local/bin")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class LauncherRefused(MsbError):
    """The launcher would overwrite or shadow something, or the file is not msb's."""


def default_alias(image: str) -> str:
    """The last path component without tag or digest: ``microsandbox/python`` → ``python``,
    ``localhost:5000/tools/jq:1.7`` → ``jq``, ``./rootfs`` → ``rootfs``."""
    name = image.rstrip("/").partition("@")[0].rpartition("/")[2]
    return name.partition(":")[0]


def msb_executable() -> Path:
    """The absolute path of the running ``msb`` console script.

    Raises:
        MsbError: it cannot be found.
    """
    beside = Path(sys.executable).parent / "msb"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("msb")
    if found:
        return Path(found).absolute()
    raise MsbError("cannot find the msb executable to point the launcher at",
                   hint="install msb (pip install .) so an `msb` script sits beside its Python")  # fmt: skip


def launcher_text(image: str, msb: Path, alias: str) -> str:
    """The launcher script for ``image``."""
    return (
        "#!/bin/sh\n"
        f"{MARKER}{image}\n"
        f"# Runs {image} in a throwaway msb sandbox. Made by `msb install`; remove with `msb uninstall {alias}`.\n"
        f'exec {shlex.quote(str(msb))} exe --quiet --with-entrypoint {shlex.quote(image)} -- "$@"\n'
    )


def launcher_image(path: Path) -> str | None:
    """The image of an msb launcher at ``path``; ``None`` if it is not one (or not a regular file)."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if len(head) >= 2 and head[0].startswith("#!") and head[1].startswith(MARKER):
        return head[1][len(MARKER):].strip()
    return None


def on_path(directory: Path) -> bool:
    entries = [Path(p).expanduser() for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    target = directory.resolve()
    return any(p.resolve() == target for p in entries if p.is_absolute())


def fetch_image(image: str) -> str:
    """Pull (or build, for msb's offline base images) ``image`` now, so a bad reference fails
    at install time; returns the image argument the launcher should use.

    Raises:
        ConfigError: a malformed reference or a missing directory.
        MsbError: the image could not be pulled or built.
    """
    from engine.cli.progress import BarProgress
    from engine.images.resolve import is_directory_arg, resolve_root

    if is_directory_arg(image):
        path = Path(image).expanduser().absolute()
        asyncio.run(resolve_root(str(path)))
        return str(path)
    asyncio.run(resolve_root(image, progress=BarProgress()))
    return image


def _check_free(alias: str, target: Path, image: str, force: bool) -> None:
    """Refuse to overwrite a file or shadow a command, unless forced or it is our own launcher
    for the same image."""
    ours = launcher_image(target)
    if target.exists() or target.is_symlink():
        if ours == image or force:
            return
        what = f"an msb launcher for {ours}" if ours else "a file msb did not make"
        raise LauncherRefused(f"{target} already exists ({what})",
                       hint=f"pick another alias (msb install {image} ALIAS) or pass --force to replace it")
    found = shutil.which(alias)
    if found and not force and Path(found).resolve() != target.resolve():
        raise LauncherRefused(f"{alias!r} is already a command on your PATH ({found}); the launcher would shadow it",
                       hint=f"pick another alias (msb install {image} ALIAS) or pass --force")  # fmt: skip


@click.command()
@click.argument("image")
@click.argument("alias", required=False)
@click.option("--force", is_flag=True, help="Replace an existing file and shadow an existing command.")
@click.option("--bin-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_BIN_DIR,
              show_default=True, help="Where the launcher goes.")  # fmt: skip
def install(image: str, alias: str | None, force: bool, bin_dir: Path) -> None:
    """Install IMAGE as a command: ALIAS (default: the image's last name component, e.g.
    microsandbox/python → python) runs the image's Entrypoint with your arguments in a
    throwaway sandbox and returns its exit code.

    \b
    Examples:
      msb install microsandbox/python            # then: python -c 'print(6 * 7)'
      msb install busybox bb                      # then: bb sh -c 'uname -a'
    """
    alias = alias or default_alias(image)
    bin_dir = bin_dir.expanduser().absolute()
    target = bin_dir / alias
    try:
        if not _ALIAS.match(alias):
            raise ConfigError(f"{alias!r} is not a usable command name",
                              hint="use letters, digits, '.', '_', '+', '-' (pass ALIAS explicitly)")  # fmt: skip
        _check_free(alias, target, image, force)
        msb = msb_executable()
        image_arg = fetch_image(image)
        bin_dir.mkdir(parents=True, exist_ok=True)
        tmp = bin_dir / f".{alias}.msb-tmp"
        tmp.write_text(launcher_text(image_arg, msb, alias), encoding="utf-8")
        tmp.chmod(0o755)
        os.replace(tmp, target)
    except ConfigError as exc:
        die(exc, EXIT_CONFIG)
    except LauncherRefused as exc:
        die(exc, EXIT_REFUSED)
    except MsbError as exc:
        die(exc, EXIT_MSB_FAILED)
    click.echo(f"installed {alias} → {target} (runs {image_arg})")
    if not on_path(bin_dir):
        click.echo(f"msb: hint: {bin_dir} is not on your PATH; add it, e.g. "
                   f'export PATH="{bin_dir}:$PATH" in your shell profile', err=True)  # fmt: skip


@click.command()
@click.argument("alias")
@click.option("--bin-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_BIN_DIR,
              show_default=True, help="Where the launcher is.")  # fmt: skip
def uninstall(alias: str, bin_dir: Path) -> None:
    """Remove the launcher ALIAS that `msb install` made (refuses any other file)."""
    target = bin_dir.expanduser().absolute() / alias
    try:
        if "/" in alias or not (target.exists() or target.is_symlink()):
            raise NotFoundError(f"no launcher {alias!r} in {target.parent}",
                                hint="`msb install IMAGE ALIAS` makes one; pass --bin-dir if it went elsewhere")
        image = launcher_image(target)
        if image is None:
            raise LauncherRefused(f"{target} is not an msb launcher; not removing it",
                           hint="remove it yourself if you are sure")  # fmt: skip
        target.unlink()
    except MsbError as exc:
        die(exc, EXIT_REFUSED)
    click.echo(f"removed {alias} ({image}) from {target.parent}")


def register(cli: click.Group) -> None:
    """Add ``install`` and ``uninstall`` to the ``msb`` group."""
    cli.add_command(install)
    cli.add_command(uninstall)
