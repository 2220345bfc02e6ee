"""Host tools and apt: running them, parsing ``apt-cache show``, resolving, downloading and
checking Debian's cloud kernel package."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.vm.kernel.model import DEBIAN_META_PACKAGE, KernelFetchError, KernelIntegrityError


def _run(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run a host tool with the C locale; return stdout.

    Raises:
        KernelFetchError: the tool is missing or failed (stderr tail in the message).
    """
    env = dict(os.environ, LC_ALL="C", LANG="C")
    try:
        proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError as exc:
        raise KernelFetchError(
            f"{what}: `{argv[0]}` is not installed",
            hint="Debian's kernel is fetched with apt on Debian/Ubuntu hosts; elsewhere "
            "run `make kernel` or set MSB_KERNEL=/path/to/bzImage",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelFetchError(f"{what}: `{' '.join(argv)}` timed out") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise KernelFetchError(f"{what}: `{' '.join(argv)}` failed ({proc.returncode}):\n{tail}")
    return proc.stdout


def _deb822(text: str) -> list[dict[str, str]]:
    """Parse ``apt-cache show`` output into records (continuation lines are joined)."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        records.append(current)
    return records


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (serialises fetches across processes)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve_debian_package() -> tuple[str, str, str]:
    """Ask apt for the newest cloud kernel: ``(package, version, abi)``.

    Raises:
        KernelFetchError: apt does not know the metapackage or its dependency.
    """
    hint = "run `apt-get update`; the host needs Debian's main archive in its apt sources"
    out = _run(["apt-cache", "show", "--no-all-versions", DEBIAN_META_PACKAGE], what="resolving the kernel")
    records = _deb822(out)
    if not records or "Depends" not in records[0]:
        raise KernelFetchError(f"apt-cache knows no {DEBIAN_META_PACKAGE}", hint=hint)
    for alternative in records[0]["Depends"].split(","):
        first = alternative.split("|")[0].strip()
        m = re.fullmatch(r"(linux-image-(\S+)-cloud-amd64)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", first)
        if m:
            package, abi, version = m.group(1), m.group(2), m.group(3)
            break
    else:
        raise KernelFetchError(
            f"{DEBIAN_META_PACKAGE} depends on no linux-image-*-cloud-amd64: {records[0]['Depends']!r}",
            hint=hint,
        )
    if version is None:
        cand = _deb822(_run(["apt-cache", "show", "--no-all-versions", package], what="resolving the kernel"))
        if not cand or "Version" not in cand[0]:
            raise KernelFetchError(f"apt-cache has no candidate for {package}", hint=hint)
        version = cand[0]["Version"]
    return package, version, f"{abi}-cloud-amd64"


def _archive_record(package: str, version: str) -> dict[str, str]:
    """The archive's record (``SHA256``, ``Size``) for one package version."""
    out = _run(["apt-cache", "show", f"{package}={version}"], what="reading the package record")
    for record in _deb822(out):
        if record.get("Package") == package and record.get("Version") == version and "SHA256" in record:
            return record
    raise KernelFetchError(
        f"apt-cache show {package}={version} has no SHA256 field",
        hint="run `apt-get update`",
    )


def _download_deb(package: str, version: str, record: dict[str, str], dest: Path) -> Path:
    """``apt-get download`` one package into ``dest`` and check it against ``record``.

    apt itself verifies the file against the archive's index, whose ``Release`` file is
    signed by the Debian archive key (the ``Packages`` hash chain); the SHA256 compared here
    is the same index entry, checked again so a bypassed or misconfigured apt cannot hand us
    another file.
    """
    download_dir = dest
    tmp_owned: Path | None = None
    if os.geteuid() == 0:
        # apt drops to the `_apt` user to download; it needs a directory it can write, and
        # the cache usually sits under /root (0700). Download into /tmp instead.
        try:
            apt_user = pwd.getpwnam("_apt")
        except KeyError:
            apt_user = None
        if apt_user is not None:
            tmp_owned = Path(tempfile.mkdtemp(prefix="msb-kernel-dl-"))
            os.chown(tmp_owned, apt_user.pw_uid, -1)
            download_dir = tmp_owned
    try:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=download_dir, what="downloading the kernel")
        debs = sorted(download_dir.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise KernelFetchError(f"apt-get download left {len(debs)} files for {package} in {download_dir}")
        # move out of the _apt-writable directory first, then check what we will unpack
        deb = dest / debs[0].name
        if debs[0] != deb:
            shutil.copyfile(debs[0], deb)
        want_size = int(record.get("Size", "-1"))
        if want_size >= 0 and deb.stat().st_size != want_size:
            raise KernelIntegrityError(
                f"{deb.name}: size {deb.stat().st_size} != {want_size} from the archive index",
                hint="run `apt-get update` and try again; if it persists, check the mirror",
            )
        got = _sha256(deb)
        if got != record["SHA256"].lower():
            raise KernelIntegrityError(
                f"{deb.name}: SHA256 {got} does not match the archive index ({record['SHA256']})",
                hint="run `apt-get update` and try again; if it persists, check the mirror",
            )
        return deb
    finally:
        if tmp_owned is not None:
            shutil.rmtree(tmp_owned, ignore_errors=True)
