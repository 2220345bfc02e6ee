"""A real local OCI registry (distribution's ``docker-registry``) and skopeo helpers for tests.

``LocalRegistry`` serves plain HTTP on 127.0.0.1 with filesystem storage in its own directory,
either anonymous or behind htpasswd basic auth. ``push_layout``, ``skopeo_inspect`` and
``skopeo_pull`` drive skopeo against it hermetically: credentials are always explicit
(``--creds`` or ``--no-creds``, never a stored auth file) and no trust policy is consulted.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support import InfraError

START_TIMEOUT_S = 10.0
"""How long ``LocalRegistry.start`` waits for ``GET /v2/`` to answer."""
STOP_TIMEOUT_S = 5.0
"""How long ``stop`` waits after SIGTERM before it kills the registry."""
SKOPEO_TIMEOUT_S = 600.0
"""Upper bound for one skopeo run (the 100 MB benchmark image included)."""
REALM = "msb-test"
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 30
_CREDS_FLAGS = ("--creds", "--src-creds", "--dest-creds")
# urllib would honour http_proxy for 127.0.0.1; the registry is always local.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryStartError(InfraError):
    """docker-registry exited or did not answer ``GET /v2/`` in time."""


class SkopeoError(InfraError):
    """skopeo exited non-zero. ``stderr`` holds what it said."""

    def __init__(self, message: str, stderr: str) -> None:
        self.stderr = stderr
        super().__init__(message)


class LocalRegistry:
    """One ``docker-registry serve`` process on 127.0.0.1, plain HTTP, deletes enabled.

    Use it as a context manager (``with LocalRegistry(auth=True) as reg:``) or call
    ``start()`` / ``stop()``. The log (stdout and stderr) goes to ``workdir/registry.log``.
    """

    def __init__(
        self,
        *,
        auth: bool = False,
        workdir: Path | None = None,
        username: str = "msb-test",
        password: str | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        """Args:
        auth: require htpasswd basic auth (``username`` / ``password``).
        workdir: where config, storage, htpasswd and log live; a private temporary
            directory (removed by ``stop``) when omitted.
        password: the password in auth mode; random when omitted.
        extra_config: top-level keys merged over the generated config (e.g. to break it).
        """
        self.auth = auth
        self.username: str | None = username if auth else None
        self.password: str | None = (password or secrets.token_urlsafe(12)) if auth else None
        self._owns_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="msb-registry-"))
        self.log_path = self.workdir / "registry.log"
        self.port = 0
        self._extra = extra_config or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: weakref.finalize[[subprocess.Popen[bytes], IO[bytes]], LocalRegistry] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def creds(self) -> str | None:
        """``user:password`` as skopeo's ``--creds`` takes it (None when anonymous)."""
        return f"{self.username}:{self.password}" if self.auth else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> LocalRegistry:
        """Start the registry and wait until ``GET /v2/`` answers 200 (anonymous) or 401 (auth).

        Returns:
            self, so ``reg = LocalRegistry().start()`` reads naturally.

        Raises:
            InfraError: docker-registry (or htpasswd, in auth mode) is not installed.
            RegistryStartError: it exited or did not answer within ``START_TIMEOUT_S``; the
                message carries the tail of its log.
        """
        binary = shutil.which("docker-registry")
        if binary is None:
            raise InfraError("docker-registry is not installed: run `make setup` (Debian package docker-registry)")
        try:
            if self.auth:
                self._write_htpasswd()
            for attempt in range(_PORT_ATTEMPTS):
                self.port = _free_port()
                self._launch(binary)
                try:
                    self._wait_ready()
                    return self
                except RegistryStartError:
                    # Another process may have taken the port between our probe and the bind.
                    raced = "address already in use" in self.log_tail()
                    self._reap()
                    if not raced or attempt == _PORT_ATTEMPTS - 1:
                        raise
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()  # the error already carries the log tail
            raise

    def stop(self) -> None:
        """Terminate the registry (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``); idempotent."""
        self._reap()
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret silences distribution's "No HTTP secret provided" warning.
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.auth:
            cfg["auth"] = {"htpasswd": {"realm": REALM, "path": str(self.workdir / "htpasswd")}}
        return {**cfg, **self._extra}

    def _write_htpasswd(self) -> None:
        tool = shutil.which("htpasswd")
        if tool is None:
            raise InfraError("htpasswd is not installed: run `make setup` (Debian package apache2-utils)")
        assert self.username is not None and self.password is not None
        # -B: bcrypt, the only hash distribution's htpasswd backend accepts.
        out = subprocess.run([tool, "-Bbn", self.username, self.password], capture_output=True, text=True,
                             timeout=30, check=False)  # fmt: skip
        if out.returncode != 0:
            raise InfraError(f"htpasswd failed: {out.stderr.strip()}")
        (self.workdir / "htpasswd").write_text(out.stdout.strip() + "\n")

    def _launch(self, binary: str) -> None:
        config = self.workdir / "config.yml"
        config.write_text(json.dumps(self._config(), indent=2))  # JSON is YAML; no PyYAML needed
        # distribution reads REGISTRY_* variables as config overrides; skopeo's
        # REGISTRY_AUTH_FILE would become auth.file. Start from a clean slate.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by _reap
        try:
            proc = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=self.workdir)  # fmt: skip
        except BaseException:
            log.close()
            raise
        self._proc = proc
        # Reaps the process even if a test forgets stop() (at garbage collection or exit).
        self._reaper = weakref.finalize(self, _terminate, proc, log)

    def _wait_ready(self) -> None:
        proc = self._proc
        assert proc is not None
        want = 401 if self.auth else 200
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        while True:
            last = probe(f"{self.url}/v2/")
            if last == str(want):
                return
            if proc.poll() is not None:
                raise RegistryStartError(self._failure(f"docker-registry exited with status {proc.returncode}"))
            if time.monotonic() >= deadline:
                raise RegistryStartError(self._failure(
                    f"docker-registry did not answer GET /v2/ with {want} within {START_TIMEOUT_S:.0f} s "
                    f"(last: {last})"
                ))  # fmt: skip
            try:  # the poll interval; returns early if the registry dies
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass

    def _failure(self, what: str) -> str:
        return f"{what} on {self.host}\n--- {self.log_path} (last lines) ---\n{self.log_tail()}"

    def _reap(self) -> None:
        if self._reaper is not None:
            self._reaper()  # runs _terminate once, then the finalizer is dead
            self._reaper = None
        self._proc = None


def _terminate(proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        log.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe(url: str, *, creds: str | None = None) -> str:
    """The HTTP status of ``GET url`` as a string (``"200"``), or why there was none.

    Args:
        creds: ``user:password`` sent as HTTP basic auth.
    """
    req = urllib.request.Request(url)
    if creds:
        req.add_header("Authorization", "Basic " + base64.b64encode(creds.encode()).decode())
    try:
        with _NO_PROXY.open(req, timeout=1.0) as resp:
            return str(resp.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Pushed:
    """An image pushed by ``push_layout``."""

    ref: str
    """``HOST/REPO:TAG`` (what ``skopeo_inspect`` and ``msb pull`` take)."""
    digest: str
    """Digest of the manifest (or index, with ``all_platforms``) as stored in the registry."""

    @property
    def by_digest(self) -> str:
        """``HOST/REPO@sha256:…``."""
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"


def push_layout(
    layout_dir: Path,
    ref_name: str,
    registry: LocalRegistry,
    dest_repo_tag: str,
    *,
    all_platforms: bool = False,
    creds: str | None = None,
) -> Pushed:
    """Copy ``oci:layout_dir:ref_name`` to ``docker://HOST/dest_repo_tag`` with skopeo.

    Without ``all_platforms`` an index is narrowed to this host's platform. Uncompressed
    layers are gzip-compressed on the way (skopeo always compresses for a registry), so their
    digests and media types change; gzip and zstd layers go up byte for byte.

    Args:
        creds: ``user:password``; None pushes anonymously.

    Returns:
        the reference and the manifest digest skopeo reports.

    Raises:
        SkopeoError: skopeo failed (its stderr inside).
    """
    dest = f"{registry.host}/{dest_repo_tag}"
    with tempfile.TemporaryDirectory(prefix="msb-skopeo-") as tmp:
        digest_file = Path(tmp) / "digest"
        args = ["copy", "--dest-tls-verify=false", "--digestfile", str(digest_file)]
        args += ["--all"] if all_platforms else []
        args += _creds_args("--dest-", creds)
        _skopeo([*args, f"oci:{layout_dir}:{ref_name}", f"docker://{dest}"])
        return Pushed(ref=dest, digest=digest_file.read_text().strip())


def skopeo_inspect(ref: str, *, raw: bool = False, config: bool = False, creds: str | None = None) -> dict[str, Any]:
    """``skopeo inspect docker://ref`` as parsed JSON.

    Args:
        ref: ``HOST/REPO:TAG`` or ``HOST/REPO@DIGEST``.
        raw: the manifest (or index) exactly as the registry serves it.
        config: the image config instead of skopeo's summary (with ``raw``: the raw config).
        creds: ``user:password``; None asks anonymously.

    Raises:
        SkopeoError: skopeo failed, e.g. ``unauthorized`` without creds on the auth registry.
    """
    args = ["inspect", "--tls-verify=false", *_creds_args("--", creds)]
    args += ["--raw"] if raw else []
    args += ["--config"] if config else []
    doc = json.loads(_skopeo([*args, f"docker://{ref}"]))
    if not isinstance(doc, dict):
        raise SkopeoError(f"skopeo inspect {ref} printed {type(doc).__name__}, not an object", "")
    return doc


def skopeo_pull(
    src_ref: str,
    dest_dir: Path,
    *,
    ref_name: str = "latest",
    all_platforms: bool = False,
    creds: str | None = None,
) -> Path:
    """Copy ``docker://src_ref`` into the OCI layout ``dest_dir`` (under ``ref_name``), layers untouched.

    The reference pull to compare ours with: read it back with ``LayoutReader``.

    Returns:
        ``dest_dir``.

    Raises:
        SkopeoError: skopeo failed.
    """
    args = ["copy", "--src-tls-verify=false", "--dest-oci-accept-uncompressed-layers"]
    args += ["--all"] if all_platforms else []
    args += _creds_args("--src-", creds)
    _skopeo([*args, f"docker://{src_ref}", f"oci:{dest_dir}:{ref_name}"])
    return dest_dir


def _creds_args(prefix: str, creds: str | None) -> list[str]:
    # Explicit either way, so a developer's stored auth.json never leaks into a test.
    return [f"{prefix}creds", creds] if creds else [f"{prefix}no-creds"]


def _skopeo(args: list[str]) -> str:
    binary = shutil.which("skopeo")
    if binary is None:
        raise InfraError("skopeo is not installed: run `make setup` (Debian package skopeo)")
    # --insecure-policy: no /etc/containers/policy.json needed; these are our own images.
    cmd = [binary, "--insecure-policy", *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=SKOPEO_TIMEOUT_S, check=False,
                             stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise SkopeoError(f"{_shown(args)} ran over {SKOPEO_TIMEOUT_S:.0f} s", str(exc.stderr or "")) from exc
    if out.returncode != 0:
        raise SkopeoError(f"{_shown(args)} failed (exit {out.returncode}):\n{out.stderr.strip()}", out.stderr)
    return out.stdout


def _shown(args: list[str]) -> str:
    """The command line for an error message, with any password blanked."""
    shown = ["skopeo"]
    for prev, arg in zip(["", *args], args, strict=False):
        shown.append(arg.split(":", 1)[0] + ":***" if prev in _CREDS_FLAGS else arg)
    return " ".join(shown)
