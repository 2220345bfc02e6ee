"""``--host-ca[=PATH]``: the option of ``msb exe`` and ``msb server start`` that gives sandboxes
the host's CA bundle read-only (engine/sandbox/host_ca.py).

A bare ``--host-ca`` takes no value from the next word (``msb exe --host-ca busybox`` must not
read ``busybox`` as the bundle): :func:`bare_host_ca` rewrites it to ``--host-ca=`` before click
parses, and an empty value means :func:`~engine.sandbox.host_ca.default_bundle`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
OPTION = "--host-ca"


def host_ca_option(envvar: str | None = None) -> Callable[[F], F]:
    """The ``--host-ca[=PATH]`` option (parameter ``host_ca``: ``None`` off, ``""`` the default bundle, or a path).

    Args:
        envvar: an environment variable that turns it on with its value as the path (the server's
            ``MSB_HOST_CA``).
    """
    return click.option(
        OPTION, "host_ca", metavar="[=PATH]", default=None, is_flag=False, flag_value="", envvar=envvar,
        help="Give sandboxes the host's CA bundle read-only (default MSB_HOST_CA, else "
             "/etc/ssl/certs/ca-certificates.crt) and set "
             "SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE: for pip/npm/curl "
             "behind a TLS-inspecting proxy.",
    )  # fmt: skip


def bare_host_ca(args: list[str]) -> list[str]:
    """``args`` with each bare ``--host-ca`` before ``--`` written ``--host-ca=`` (no value from the next word)."""
    end = args.index("--") if "--" in args else len(args)
    return [f"{OPTION}=" if i < end and a == OPTION else a for i, a in enumerate(args)]


def host_ca_path(value: str | None) -> Path | None:
    """The bundle the option's value names: ``None`` off, ``""`` :func:`default_bundle`, else the path."""
    from engine.sandbox.host_ca import default_bundle  # pydantic and the spec only when the option is used

    if value is None:
        return None
    return Path(value).expanduser() if value else default_bundle()
