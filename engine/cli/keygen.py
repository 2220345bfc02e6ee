"""``msb server keygen``: an API key signed with the secret the server actually uses.

The server signs with ``--key``/``MSB_SERVER_KEY`` when given, else with ``<state>/server.key``. A
running server records which of the two in its pid file (never the secret), and answers whether
it accepts a key; keygen uses both to refuse, with the fix, a key that server would reject.
"""

from __future__ import annotations

import httpx

from engine.errors import ConfigError
from engine.server.settings import ServerSettings

ASK_TIMEOUT_S = 3.0


def signed_key(settings: ServerSettings, *, expire: str, namespace: str) -> str:
    """A new ``msb_`` key for ``namespace`` valid for ``expire``, signed with the secret ``settings`` name.

    Args:
        settings: ``--key``/``MSB_SERVER_KEY`` and ``--storage-path``/``MSB_STORAGE_PATH`` as given to keygen.
        expire: a duration such as ``24h`` or ``7d``.
        namespace: the namespace the key may use (``*`` = all).

    Returns:
        The key.

    Raises:
        ConfigError: a bad duration or key; or the server running on this storage signs with another
            secret (the hint says which flag to pass).
    """
    from engine.server.auth import make_key, parse_duration
    from engine.server.main import read_pid, running_secret_source, secret_for

    expire_s = parse_duration(expire)
    source = running_secret_source(settings)
    found = read_pid(settings)
    _check_same_source(settings, source, found[0] if found else 0)
    secret = secret_for(settings.model_copy(update={"dev": False}))
    assert secret is not None  # not dev: made if missing
    key = make_key(secret, expire_s=expire_s, namespace=namespace)
    if found is not None and source != "none":
        _check_accepted(key, found[1], found[2], settings)
    return key


def _check_same_source(settings: ServerSettings, source: str | None, pid: int) -> None:
    """Refuse when the running server takes its secret from elsewhere than keygen would.

    Raises:
        ConfigError: with the flag to pass or drop.
    """
    server_key = settings.storage / "server.key"
    if source == "key" and not settings.key:
        raise ConfigError(f"the server running on {settings.storage} (pid {pid}) was started with --key, so it "
                          f"would reject keys signed with {server_key}",
                          hint="this server was started with --key; pass the same --key to keygen "
                               "(or set MSB_SERVER_KEY)")  # fmt: skip
    if source == "file" and settings.key:
        raise ConfigError(f"the server running on {settings.storage} (pid {pid}) signs with {server_key}, not with "
                          "the --key / MSB_SERVER_KEY given here",
                          hint="drop --key (and unset MSB_SERVER_KEY) for this server, or restart it with that --key")


def _check_accepted(key: str, host: str, port: int, settings: ServerSettings) -> None:
    """Ask the running server whether it accepts ``key`` (a ``--key`` differs from the server's only there).

    A server that cannot be reached is no answer: the key is printed anyway.

    Raises:
        ConfigError: the server answered 401.
    """
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/api/v1/rpc"
    ask = {"jsonrpc": "2.0", "id": 1, "method": "server.info", "params": {}}
    try:
        answer = httpx.post(url, json=ask, headers={"Authorization": f"Bearer {key}"}, timeout=ASK_TIMEOUT_S)
    except httpx.HTTPError:
        return
    if answer.status_code != 401:
        return
    fix = ("pass keygen the same --key the server was started with (and the same --storage-path)" if settings.key
           else "this server was started with --key; pass the same --key to keygen")  # fmt: skip
    raise ConfigError(f"the server running at {host}:{port} rejects keys signed with this secret", hint=fix)
