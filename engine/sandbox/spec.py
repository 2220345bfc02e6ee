"""What a sandbox is made of: the spec the engine starts it from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""Sandbox and namespace names: 1–63 of ``[A-Za-z0-9_-]``, first alphanumeric."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NetScope = Literal["none", "group", "public", "any"]
"""Network reach of a sandbox: ``none`` = no network device; ``group`` = a device with no
outbound reach (published ports only); ``public`` = outbound internet, but nothing in the
host's loopback, private or link-local ranges; ``any`` = everything the host reaches."""


class VolumeMount(BaseModel):
    """A host directory shared into the guest."""

    model_config = ConfigDict(frozen=True)

    host: Path
    """Absolute, resolved host directory (must exist)."""
    guest: str
    """Absolute mount point in the guest."""
    readonly: bool = False

    @field_validator("host")
    @classmethod
    def _host_absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("volume host path must be absolute (resolve it against the Sandboxfile first)")
        return v

    @field_validator("guest")
    @classmethod
    def _guest_absolute(cls, v: str) -> str:
        if not v.startswith("/") or v == "/" or "\x00" in v or ".." in v.split("/"):
            raise ValueError(f"volume guest path {v!r} must be an absolute directory other than / (no '..')")
        return v


class PortMap(BaseModel):
    """A guest port published on the host."""

    model_config = ConfigDict(frozen=True)

    host_port: int = Field(ge=1, le=65535)
    guest_port: int = Field(ge=1, le=65535)
    host_ip: str = "127.0.0.1"
    """Host address to listen on (loopback unless asked otherwise)."""
    protocol: Literal["tcp", "udp"] = "tcp"


class SandboxSpec(BaseModel):
    """A sandbox to start."""

    model_config = ConfigDict(frozen=True)

    name: Name
    rootfs: Path
    """Directory holding the guest's root filesystem (read-only lower layer)."""
    root_image: Path | None = None
    """A prebuilt ext4 image of ``rootfs`` (images from the store have one); skips the
    fingerprint-and-build step."""
    uid: int | None = Field(default=None, ge=0, le=(1 << 32) - 2)
    """User commands run as by default (an image's ``User``); ``None`` = root."""
    gid: int | None = Field(default=None, ge=0, le=(1 << 32) - 2)
    cpus: int = Field(default=1, ge=1, le=64)
    memory_mib: int = Field(default=512, ge=64, le=1 << 20)
    """Guest RAM in MiB."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment every command starts with (on top of PATH/HOME defaults)."""
    workdir: str = "/"
    """Default working directory of commands, in the guest."""
    persist_dir: Path | None = None
    """Directory for the persistent writable layer; ``None`` = ephemeral (tmpfs)."""
    disk_mib: int = Field(default=4096, ge=64)
    """Size limit of the persistent writable layer in MiB (sparse on the host)."""
    volumes: tuple[VolumeMount, ...] = ()
    ports: tuple[PortMap, ...] = ()
    network: NetScope = "public"
    boot_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds to wait for the guest agent before the start fails."""

    @field_validator("cpus")
    @classmethod
    def _cpus_fit_host(cls, v: int) -> int:
        host = os.cpu_count() or 1
        if v > host:
            raise ValueError(f"cpus={v} but this host has {host} CPUs")
        return v

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("workdir must be an absolute path in the guest")
        return v

    def base_env(self) -> dict[str, str]:
        """The environment a command starts from."""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": self.name}
        env.update(self.env)
        return env
