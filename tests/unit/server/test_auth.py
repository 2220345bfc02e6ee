from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest

from engine.errors import ConfigError
from engine.server.auth import (
    ApiAuthError,
    Claims,
    ForbiddenError,
    check_namespace,
    load_secret,
    make_key,
    parse_duration,
    token_from_headers,
    verify,
)

SECRET = "s" * 32


def test_secret_is_created_once_private_and_kept(tmp_path: Path) -> None:
    assert load_secret(tmp_path, create=False) is None
    first = load_secret(tmp_path, create=True)
    assert first is not None and len(first) == 32 and first.isalnum()
    assert os.stat(tmp_path / "server.key").st_mode & 0o777 == 0o600
    assert load_secret(tmp_path, create=True) == first


def test_key_roundtrip_and_claims() -> None:
    key = make_key(SECRET, expire_s=3600, namespace="team")
    assert key.startswith("msb_")
    claims = verify(SECRET, key)
    assert claims.namespace == "team" and claims.exp - claims.iat == 3600
    raw = jwt.decode(key[4:], SECRET, algorithms=["HS256"])
    assert set(raw) == {"exp", "iat", "namespace"}


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        (None, "missing"),
        ("", "missing"),
        ("not-a-key", "malformed"),
        ("msb_garbage", "malformed"),
        (make_key("x" * 32), "signature"),
        (make_key(SECRET, expire_s=60, now=0), "expired"),
    ],
)
def test_bad_keys(token: str | None, fragment: str) -> None:
    with pytest.raises(ApiAuthError) as err:
        verify(SECRET, token)
    assert fragment in err.value.message and err.value.http_status == 401


def test_headers() -> None:
    assert token_from_headers({"authorization": "Bearer msb_x"}) == "msb_x"
    assert token_from_headers({"authorization": "msb_bare"}) == "msb_bare"
    assert token_from_headers({"proxy-authorization": "Bearer msb_p"}) == "msb_p"
    assert token_from_headers({}) is None


def test_namespace_rules() -> None:
    check_namespace(None, "any")  # dev mode
    check_namespace(Claims(namespace="*", exp=0, iat=0), "any")
    check_namespace(Claims(namespace="a", exp=0, iat=0), "a")
    with pytest.raises(ForbiddenError) as err:
        check_namespace(Claims(namespace="a", exp=0, iat=0), "b")
    assert err.value.http_status == 403


@pytest.mark.parametrize(("text", "secs"), [("30m", 1800), ("24h", 86400), ("7d", 604800), ("2w", 1209600)])
def test_durations(text: str, secs: int) -> None:
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "0h", "5y", "h", "-1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)
