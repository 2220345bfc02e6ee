"""The host's Debian archive mirror, read from its apt sources.

:func:`debian_mirror` parses both source formats apt accepts — one-line ``sources.list`` /
``*.list`` files and deb822 ``*.sources`` stanzas — and picks the first Debian archive, so base
images build from the same (possibly local or caching) mirror the host already uses.
:func:`redact` strips credentials from a mirror URL before it is logged or written into an image.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_DEBIAN_SUITES = {"sid", "unstable", "testing", "stable", "oldstable", "oldoldstable", "experimental",
                  "forky", "trixie", "bookworm", "bullseye", "buster", "stretch", "jessie"}  # fmt: skip


def debian_mirror(root: Path = Path("/")) -> str:
    """The host's Debian archive mirror, from its apt sources (one-line and deb822 files).

    Security, nodesource-like and non-Debian entries are skipped; the first archive of a Debian
    suite (or whose path ends in ``/debian``) wins.

    Args:
        root: the filesystem root whose ``etc/apt`` is read (tests pass a temp dir).

    Returns:
        The mirror URL without a trailing slash, or :data:`DEFAULT_MIRROR`.
    """
    apt = root / "etc" / "apt"
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.name == "sources.list" or path.suffix == ".list":
            entries = list(_one_line_entries(text))
        elif path.suffix == ".sources":
            entries = list(_deb822_entries(text))
        else:
            continue
        for uri, suites in entries:
            if _is_debian_archive(uri, suites):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])  # drop comments and [options]
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], [words[2]]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


def _is_debian_archive(uri: str, suites: list[str]) -> bool:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "file", "ftp") or "security" in uri:
        return False
    bases = {s.split("-", 1)[0].split("/", 1)[0] for s in suites}
    return bool(bases & _DEBIAN_SUITES) or parts.path.rstrip("/").endswith("/debian")


def redact(url: str) -> str:
    """``url`` without user:password (it goes into the image's history and labels, and into logs).

    Args:
        url: a mirror URL, possibly with credentials in its netloc.

    Returns:
        ``url`` unchanged if it has no credentials, else the same URL with only host and port.
    """
    parts = urlsplit(url)
    if parts.hostname is None or "@" not in parts.netloc:
        return url
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
