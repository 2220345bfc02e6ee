"""From a Sandboxfile entry to engine inputs: volume mounts, port maps, the environment, the
keyword overrides for :meth:`engine.images.resolve.ResolvedRoot.spec`, and the command that
``msb run NAME[~SCRIPT] [-- ARGS]`` runs.

Used by the CLI runtime and by the server (which passes ``confine=True``: there the volume
host paths come from API clients and must stay inside the namespace's volume area).
"""

from __future__ import annotations

import errno
import os
import posixpath
import shlex
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.images.rootfs import ImageDefaults
from engine.project.schema import SandboxEntry, SyntaxProblem, split_env, split_port, split_volume
from engine.sandbox.host_ca import GUEST_DIR as HOST_CA_DIR
from engine.sandbox.host_ca import default_bundle, host_ca_env, stage_bundle
from engine.sandbox.spec import PortMap, VolumeMount
from engine.vm.safepath import first_symlink, open_beneath

DEFAULT_MEMORY_MIB = 512
DEFAULT_SHELL = "/bin/sh"
DEFAULT_SCOPE = "public"
PROJECT_STATE = ".menv"
"""The project's state directory beside its Sandboxfile (engine.project.runtime)."""


def parse_volume(text: str, base_dir: Path, *, confine: bool = False) -> VolumeMount:
    """``"host:guest[:ro|:rw]"`` → a mount; the host path is relative to ``base_dir`` (the
    Sandboxfile's directory, or a server namespace's volume area).

    A relative host path that stays inside ``base_dir`` is walked one component at a time
    without following any symlink: a sandbox with a writable volume there could have made
    one, and it must not redirect another sandbox's volume anywhere on the host. A path that
    leaves ``base_dir`` (absolute, ``~``, ``../``) is the user's own words and is resolved;
    with ``confine`` (the server: paths come from API clients) it is refused.

    Args:
        confine: the host directory must be ``base_dir`` or below it, named relatively.

    Raises:
        ConfigError: bad syntax, a host directory that does not exist (or is a file), a
            symlink inside ``base_dir``, or a path outside ``base_dir`` when confined.
    """
    try:
        host, guest, readonly = split_volume(text)
    except SyntaxProblem as exc:
        raise ConfigError(f"volume {exc.detail}", hint=exc.hint) from None
    base = base_dir.resolve()
    rel = posixpath.normpath(host)
    outside = host.startswith(("/", "~")) or rel == ".." or rel.startswith("../")
    if outside and confine:
        raise ConfigError(f"volume {text!r}: the host path must be relative to the namespace's volume area",
                          hint="name a directory inside it, e.g. \"data:/data\" or \".:/work\"")  # fmt: skip
    if outside:
        path = (base / Path(host).expanduser()).resolve()
    else:
        path = base / rel if rel != "." else base
        _check_no_symlinks(base, rel, text)
    if not path.exists():
        raise ConfigError(f"volume {text!r}: host directory {path} does not exist",
                          hint=f"create it (mkdir -p {shlex.quote(str(path))}) or fix the path")  # fmt: skip
    if not path.is_dir():
        raise ConfigError(f"volume {text!r}: {path} is not a directory",
                          hint="only directories can be shared; mount the directory that holds the file")  # fmt: skip
    return VolumeMount(host=path, guest=guest.rstrip("/"), readonly=readonly)


def _check_no_symlinks(base: Path, rel: str, text: str) -> None:
    """Resolve ``rel`` beneath ``base`` following no symlink; a missing component is left for
    the caller to report.

    Raises:
        ConfigError: a component is a symlink.
    """
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(open_beneath(fd, rel, os.O_PATH))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            return
        link = first_symlink(str(base / rel))
        raise ConfigError(f"volume {text!r}: {link or rel} is a symlink, and volume paths inside {base} are never "
                          "followed through symlinks (a sandbox could have made it)",
                          hint="name the real directory (an absolute path on the CLI)") from None  # fmt: skip
    finally:
        os.close(fd)


def parse_port(text: str) -> PortMap:
    """``"8000:8000"``, ``"127.0.0.1:8000:80"``, ``"5353:53/udp"`` → a port map (host
    address 127.0.0.1 unless one is given).

    Raises:
        ConfigError: bad syntax, a port outside 1–65535, a bad IP address.
    """
    try:
        ip, host_port, guest_port, proto = split_port(text)
    except SyntaxProblem as exc:
        raise ConfigError(f"port {exc.detail}", hint=exc.hint) from None
    return PortMap(host_port=host_port, guest_port=guest_port, host_ip=ip, protocol=proto)  # type: ignore[arg-type]


def parse_envs(items: list[str]) -> dict[str, str]:
    """``["K=V", …]`` → ``{K: V}`` (a later K wins).

    Raises:
        ConfigError: an item without ``=`` or with an empty name.
    """
    env: dict[str, str] = {}
    for item in items:
        try:
            key, value = split_env(item)
        except SyntaxProblem as exc:
            raise ConfigError(f"env {exc.detail}", hint=exc.hint) from None
        env[key] = value
    return env


def _unique(kind: str, keys: list[Any], texts: list[str]) -> None:
    seen: dict[Any, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key in seen:
            raise ConfigError(f"{kind} {text!r} clashes with {seen[key]!r}", hint=f"use each {kind} once")
        seen[key] = text


def spec_overrides(entry: SandboxEntry, base_dir: Path, *, confine: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``ResolvedRoot.spec(name, **overrides)``: ``env``, ``workdir``,
    ``cpus``, ``memory_mib`` (512 if unset), ``volumes``, ``ports``, ``network`` (``public``
    if unset). ``None`` values mean "the image's default" (``spec`` drops them).

    Args:
        base_dir: the Sandboxfile's directory (volume host paths are relative to it).
        confine: volume host paths must resolve inside ``base_dir`` (the server).

    Raises:
        ConfigError: a bad volume, port or env; two volumes on one guest path; two ports on
            one host address and port.
    """
    volumes = [parse_volume(v, base_dir, confine=confine) for v in entry.volumes]
    if not confine:
        refuse_writable_state(volumes, entry.volumes, base_dir.resolve() / PROJECT_STATE)
    ports = [parse_port(p) for p in entry.ports]
    _unique("volume", [v.guest for v in volumes], entry.volumes)
    _unique("port", [(p.host_ip, p.host_port, p.protocol) for p in ports], entry.ports)
    env = parse_envs(entry.envs)
    if entry.host_ca and not confine:  # the server's operator decides host CA trust, not a namespace's file
        if HOST_CA_DIR in (v.guest.rstrip("/") for v in volumes):
            raise ConfigError(f"a volume at {HOST_CA_DIR} clashes with host_ca: true", hint="mount it elsewhere")
        volumes.append(VolumeMount(host=stage_bundle(default_bundle()), guest=HOST_CA_DIR, readonly=True))
        env = {**host_ca_env(), **env}
    return {
        "env": env,
        "workdir": entry.workdir,
        "cpus": entry.cpus,
        "memory_mib": entry.memory or DEFAULT_MEMORY_MIB,
        "volumes": tuple(volumes),
        "ports": tuple(ports),
        "network": entry.scope or DEFAULT_SCOPE,
    }


def refuse_writable_state(volumes: list[VolumeMount], texts: list[str], state: Path | None = None) -> None:
    """A project's ``.menv`` holds what msb trusts (persistent layers, run state, sockets): a
    sandbox must not be able to write it through a volume — neither its own project's
    (``state``) nor one sitting directly in a volume's directory (``msb exe -v .:/work`` run
    in a project).

    Raises:
        ConfigError: a read-write volume is such a ``.menv`` or one of its parents.
    """
    for vol, text in zip(volumes, texts, strict=True):
        if vol.readonly:
            continue
        inside = vol.host / PROJECT_STATE
        exposed = state if state is not None and state.is_relative_to(vol.host) else None
        if exposed is None and os.path.isdir(inside):
            exposed = inside
        if exposed is not None:
            raise ConfigError(f"volume {text!r} would let the sandbox write {exposed}, where msb keeps a project's "
                              "sandboxes (their files, run state and sockets)",
                              hint=f"mount a subdirectory instead (e.g. ./src:{vol.guest}), or add :ro")  # fmt: skip


def command_for(entry: SandboxEntry, defaults: ImageDefaults, script: str | None, args: list[str]) -> list[str] | None:
    """The argv ``msb run NAME[~SCRIPT] [-- ARGS]`` runs.

    - ``~SCRIPT``: the script's body through the entry's shell (``shell -c BODY``); ARGS
      become the script's ``"$@"`` (``$0`` is the script name).
    - no script, ARGS given: ARGS replace the command (no shell, no image Entrypoint).
    - neither: ``scripts.start`` if defined, else the image's Entrypoint + Cmd, else ``None``
      (the caller opens an interactive shell).

    Raises:
        ConfigError: ``SCRIPT`` is not defined (the message lists the defined ones).
    """
    shell = entry.shell or DEFAULT_SHELL
    if script is not None:
        body = entry.scripts.get(script)
        if body is None:
            defined = ", ".join(sorted(entry.scripts)) or "none"
            raise ConfigError(f"no script {script!r} in this sandbox (defined: {defined})",
                              hint="add it under `scripts:` in the Sandboxfile, or use `msb add NAME --script "
                                   f"{script}=COMMAND`")  # fmt: skip
        return [shell, "-c", body, script, *args] if args else [shell, "-c", body]
    if args:
        return list(args)
    if "start" in entry.scripts:
        return [shell, "-c", entry.scripts["start"]]
    return defaults.command() or None
