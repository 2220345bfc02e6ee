from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.images.reference import ImageRef


@pytest.mark.parametrize(
    ("text", "canonical", "api_host", "loopback"),
    [
        ("python", "docker.io/library/python:latest", "registry-1.docker.io", False),
        ("python:3.11-slim", "docker.io/library/python:3.11-slim", "registry-1.docker.io", False),
        ("microsandbox/python", "docker.io/microsandbox/python:latest", "registry-1.docker.io", False),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "registry-1.docker.io", False),
        ("index.docker.io/library/alpine:3", "docker.io/library/alpine:3", "registry-1.docker.io", False),
        ("ghcr.io/o/r:tag", "ghcr.io/o/r:tag", "ghcr.io", False),
        ("localhost/app", "localhost/app:latest", "localhost", True),
        ("127.0.0.1:5000/a/b/c:v1.2", "127.0.0.1:5000/a/b/c:v1.2", "127.0.0.1:5000", True),
        ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000", True),
        ("host:5000/r@sha256:" + "a" * 64, "host:5000/r@sha256:" + "a" * 64, "host:5000", False),
        ("r:t@sha256:" + "b" * 64, "docker.io/library/r:t@sha256:" + "b" * 64, "registry-1.docker.io", False),
    ],
)
def test_normalises(text: str, canonical: str, api_host: str, loopback: bool) -> None:
    ref = ImageRef.parse(text)
    assert str(ref) == canonical
    assert ref.api_host == api_host
    assert ref.is_loopback is loopback
    assert ImageRef.parse(str(ref)) == ref  # canonical form is a fixed point


def test_reference_prefers_digest() -> None:
    ref = ImageRef.parse("r:t@sha256:" + "c" * 64)
    assert ref.reference == "sha256:" + "c" * 64
    assert ImageRef.parse("r").reference == "latest"


def test_short_form() -> None:
    assert ImageRef.parse("python:3").short() == "python:3"
    assert ImageRef.parse("microsandbox/node").short() == "microsandbox/node:latest"
    assert ImageRef.parse("ghcr.io/a/b").short() == "ghcr.io/a/b:latest"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Python", "lowercase"),
        ("a//b", "bad repository part"),
        ("x:-bad", "bad tag"),
        ("x@sha256:12", "bad digest"),
        ("https://ghcr.io/a/b", "URL scheme"),
        ("bad_host.io:99999/x", "bad registry"),
        ("a/" * 200 + "b", "longer than"),
    ],
)
def test_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        ImageRef.parse(text)
    assert fragment in str(err.value)
