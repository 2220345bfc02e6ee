"""Finding gVisor's ``runsc`` and fetching it into the cache when the host has none.

``runsc`` is one static binary. Lookup order: ``MSB_RUNSC``, then ``PATH`` (a distribution
package, e.g. Debian's ``runsc``), then ``$MSB_CACHE_DIR/bin/runsc``.

:func:`fetch_runsc` (run by ``make setup`` as ``python -m engine.vm.runsc --ensure``) gets
Debian's ``runsc`` package with apt itself, from ``bookworm-backports`` through a private
sources list, lists directory and archive directory under the cache: apt checks the suite's
signature against the host's ``debian-archive-keyring`` and the package's hash against the
signed index, so nothing unverified is installed. The host's own apt configuration and
package database are not touched; only ``usr/bin/runsc`` is unpacked into the cache.

Why backports and not ``sid``: the same gVisor release is built there with Go 1.22, which it
was written for; sid's build (Go 1.26) panics in the Sentry ("running on goroutine …")
as soon as a sandbox forks and reads files, because gVisor reads the goroutine id from
Go runtime internals that changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine import paths
from engine.errors import VmError

SUITE = "bookworm-backports"
MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
INSTALL_HINT = (
    "run `make setup` (fetches Debian's runsc into ~/.cache/msb/bin), install gVisor "
    "(https://gvisor.dev/docs/user_guide/install/), or point MSB_RUNSC at a runsc binary"
)


def cached_runsc(cache_dir: Path | None = None) -> Path:
    return (cache_dir or paths.cache_dir()) / "bin" / "runsc"


def find_runsc(cache_dir: Path | None = None) -> str:
    """Return the runsc binary to use.

    Raises:
        VmError: none found (the hint says how to get one).
    """
    override = os.environ.get("MSB_RUNSC")
    if override:
        if not os.access(override, os.X_OK):
            raise VmError(f"MSB_RUNSC={override} is not an executable", hint=INSTALL_HINT)
        return override
    found = shutil.which("runsc")
    if found:
        return found
    cached = cached_runsc(cache_dir)
    if os.access(cached, os.X_OK):
        return str(cached)
    raise VmError("gVisor's runsc is not installed", hint=INSTALL_HINT)


def runsc_version(runsc: str) -> str:
    """``runsc --version``'s first line, e.g. ``runsc version 0.0~20240729.0``.

    Raises:
        VmError: the binary does not run.
    """
    try:
        out = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise VmError(f"{runsc} --version failed: {exc}", hint=INSTALL_HINT) from exc
    first = out.strip().splitlines()[0] if out.strip() else "unknown"
    return first.removeprefix("runsc version ").strip()[:80]


def _apt_options(work: Path) -> list[str]:
    sources = work / "sources.list"
    sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n")
    (work / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    opts = {
        "Dir::Etc::SourceList": str(sources),
        "Dir::Etc::SourceParts": str(work / "no-parts"),
        "Dir::State::Lists": str(work / "lists"),
        "Dir::Cache::archives": str(work / "archives"),
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
        "APT::Sandbox::User": "root",
        "Debug::NoLocking": "1",
    }
    return [f"-o{k}={v}" for k, v in opts.items()]


def _apt(argv: list[str], cwd: Path) -> None:
    env = dict(os.environ, LC_ALL="C", LANG="C", DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise VmError(f"fetching runsc: `{' '.join(argv[:1] + argv[-2:])}` failed:\n{tail}", hint=INSTALL_HINT)


def fetch_runsc(cache_dir: Path | None = None) -> Path:
    """Download Debian's ``runsc`` package (signature- and hash-checked by apt) and unpack the
    binary into the cache.

    Raises:
        VmError: apt or dpkg-deb is missing, the mirror is unreachable, or the package has no
            runsc binary.
    """
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise VmError(f"fetching runsc needs `{tool}` (Debian/Ubuntu hosts)", hint=INSTALL_HINT)
    if not KEYRING.is_file():
        raise VmError(f"fetching runsc needs Debian's archive keyring ({KEYRING})",
                      hint="apt-get install debian-archive-keyring, or " + INSTALL_HINT)  # fmt: skip
    dest = cached_runsc(cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="msb-runsc-", dir=dest.parent) as tmp:
        work = Path(tmp)
        opts = _apt_options(work)
        _apt(["apt-get", "-qq", *opts, "update"], work)
        _apt(["apt-get", "-qq", *opts, "download", "runsc"], work)
        debs = sorted(work.glob("runsc_*.deb"))
        if not debs:
            raise VmError("apt reported success but left no runsc package", hint=INSTALL_HINT)
        _apt(["dpkg-deb", "-x", str(debs[-1]), str(work / "x")], work)
        binary = work / "x" / "usr" / "bin" / "runsc"
        if not binary.is_file():
            raise VmError(f"{debs[-1].name} holds no usr/bin/runsc", hint=INSTALL_HINT)
        binary.chmod(0o755)
        os.replace(binary, dest)
    return dest


def ensure_runsc(cache_dir: Path | None = None) -> str:
    """The runsc to use, fetched into the cache first if the host has none."""
    try:
        return find_runsc(cache_dir)
    except VmError:
        return str(fetch_runsc(cache_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.vm.runsc", description=__doc__.splitlines()[0])
    parser.add_argument("--ensure", action="store_true", help="fetch runsc into the cache if none is found")
    args = parser.parse_args(argv)
    try:
        path = ensure_runsc() if args.ensure else find_runsc()
        print(f"{path} ({runsc_version(path)})")
    except VmError as exc:
        print(f"msb: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
