"""Exit codes and error printing shared by the ``msb`` verbs.

Exit codes scripts can rely on: the guest command's own code for ``exe``/``run``/``shell``;
1 the thing asked about is not there or not in that state (e.g. ``stop`` of a sandbox that
is not running); 2 usage errors and bad Sandboxfiles (nothing was started); 125 msb itself
failed (the message says what to do); 126 the command could not be started; 127 the command
was not found; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import TypeVar

import click

from engine.errors import ConfigError, ExecError, MsbError

F = TypeVar("F", bound=Callable[..., object])
BACKEND_CHOICES = ("auto", "qemu", "gvisor", "krun")
"""``auto`` and ``engine.vm.select.BACKEND_NAMES`` (spelled out: the CLI starts without importing it)."""

EXIT_NOT_THERE = 1
EXIT_USAGE = 2
EXIT_MSB_FAILED = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130


def echo_error(exc: MsbError) -> None:
    """``msb: error: …`` and, if there is one, ``msb: hint: …`` on stderr."""
    click.echo(f"msb: error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"msb: hint: {exc.hint}", err=True)


def fail(exc: MsbError) -> int:
    """Print ``exc`` and its hint on stderr; return the exit code it maps to."""
    echo_error(exc)
    if isinstance(exc, ExecError):
        return EXIT_NOT_FOUND if exc.errno == 2 else EXIT_CANNOT_RUN
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_MSB_FAILED


def parse_env_options(envs: tuple[str, ...] | list[str], hint: str = "--env") -> dict[str, str]:
    """``K=V`` options to a dict (click usage error otherwise)."""
    env = {}
    for item in envs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=hint)
        env[key] = value
    return env


def cancel_on_hangup() -> None:
    """Turn SIGHUP/SIGTERM into cancelling the current task, so ``finally`` blocks clean up
    (stop what this command started, remove run directories) when the terminal goes away."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        return
    for signo in (signal.SIGHUP, signal.SIGTERM):
        loop.add_signal_handler(signo, task.cancel)


def backend_option(*, sandboxfile: bool = False) -> Callable[[F], F]:
    """``--backend auto|qemu|gvisor|krun`` (default: ``MSB_BACKEND``, else ``auto``).

    Args:
        sandboxfile: the verb starts Sandboxfile sandboxes, whose ``backend:`` the flag overrides.
    """
    default = "the Sandboxfile's backend:, then MSB_BACKEND, else auto" if sandboxfile else "MSB_BACKEND, else auto"
    return click.option(
        "--backend", type=click.Choice(BACKEND_CHOICES, case_sensitive=False), default=None,
        help="What isolates the sandboxes this starts: auto (the strongest that works here), qemu, gvisor "
        f"or krun (default: {default}; `msb doctor` shows which work on this host).",
    )  # fmt: skip


def check_backend(forced: str | None) -> None:
    """Refuse an unknown backend name, from ``--backend`` or ``MSB_BACKEND``, before anything starts.

    Raises:
        ConfigError: not one of auto, qemu, gvisor, krun (the message says where it came from).
    """
    from engine.vm.select import requested_backend

    name, source = requested_backend(forced)
    if name not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {name!r} (from {source})", hint=f"use one of: {', '.join(BACKEND_CHOICES)}")
