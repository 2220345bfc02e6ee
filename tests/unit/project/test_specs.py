"""From Sandboxfile entries to engine inputs: volumes, ports, envs, spec overrides, commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.images.resolve import ResolvedRoot
from engine.images.rootfs import ImageDefaults
from engine.project.sandboxfile import SandboxEntry
from engine.project.specs import command_for, parse_envs, parse_port, parse_volume, spec_overrides
from engine.sandbox.spec import PortMap, VolumeMount


def test_parse_volume_relative_to_base(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert parse_volume("./data:/data", tmp_path) == VolumeMount(host=tmp_path.resolve() / "data", guest="/data")
    ro = parse_volume("data:/srv/x/:ro", tmp_path)
    assert ro.readonly and ro.guest == "/srv/x"
    assert not parse_volume(f"{tmp_path}/data:/d:rw", Path("/")).readonly


def test_parse_volume_never_follows_a_symlink_inside_the_project(tmp_path: Path) -> None:
    """A sandbox with a writable volume in the project could have made the link: a volume path
    inside the project goes through no symlink; the user's own absolute path is resolved."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "up").symlink_to("/etc")
    for text in ("link:/x", "link/sub:/x", "real/up:/x", "./real/../link:/x"):
        with pytest.raises(ConfigError, match="is a symlink"):
            parse_volume(text, tmp_path)
    assert parse_volume(f"{tmp_path}/link:/x", tmp_path).host == (tmp_path / "real").resolve()


def test_a_writable_volume_over_the_project_state_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match=r"\.menv") as info:
        spec_overrides(SandboxEntry(image="x", volumes=[".:/app"]), tmp_path)
    assert "subdirectory" in (info.value.hint or "")
    spec_overrides(SandboxEntry(image="x", volumes=[".:/app:ro", "./src:/src"]), tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", 'must be "host:guest"'),
        ("a:/b:rx", 'must be "host:guest"'),
        (":/b", 'must be "host:guest"'),
        ("data:relative", "must be an absolute directory"),
        ("data:/", "must be an absolute directory"),
        ("data:/a/../b", "must be an absolute directory"),
        ("missing:/m", "does not exist"),
        ("file.txt:/f", "is not a directory"),
    ],
)
def test_parse_volume_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match=message) as info:
        parse_volume(text, tmp_path)
    assert info.value.hint


def test_missing_volume_hint_says_create_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_volume("./gone:/g", tmp_path)
    assert "mkdir -p" in (info.value.hint or "")


def test_confine_keeps_volumes_inside_base(tmp_path: Path) -> None:
    base = tmp_path / "ns"
    (base / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (base / "escape").symlink_to(tmp_path / "outside")
    assert parse_volume("inside:/i", base, confine=True).host == (base / "inside").resolve()
    assert parse_volume(".:/i", base, confine=True).host == base.resolve()
    for text in ("../outside:/o", f"{tmp_path}/outside:/o", "/etc:/e", "~:/h", "inside/../..:/o"):
        with pytest.raises(ConfigError, match="relative to the namespace's volume area"):
            parse_volume(text, base, confine=True)
    with pytest.raises(ConfigError, match="is a symlink"):
        parse_volume("escape:/o", base, confine=True)
    assert parse_volume("../outside:/o", base).host == (tmp_path / "outside").resolve()  # unconfined: allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8000:8000", PortMap(host_port=8000, guest_port=8000)),
        ("127.0.0.1:8000:80", PortMap(host_port=8000, guest_port=80)),
        ("0.0.0.0:8080:80/tcp", PortMap(host_port=8080, guest_port=80, host_ip="0.0.0.0")),
        ("5353:53/udp", PortMap(host_port=5353, guest_port=53, protocol="udp")),
        ("[::1]:9000:90", PortMap(host_port=9000, guest_port=90, host_ip="::1")),
    ],
)
def test_parse_port(text: str, expected: PortMap) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["8000", "0:80", "80:65536", "a:80", "80:80/sctp", "host:80:80", ":80:80", "1:2:3:4",
                                  "٣:80"])  # fmt: skip
def test_parse_port_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="port"):
        parse_port(text)


def test_parse_envs() -> None:
    assert parse_envs(["A=1", "B=x=y", "C=", "A=2"]) == {"A": "2", "B": "x=y", "C": ""}
    for bad in ("NOEQ", "=v"):
        with pytest.raises(ConfigError, match="NAME=value"):
            parse_envs([bad])


def test_spec_overrides_defaults(tmp_path: Path) -> None:
    got = spec_overrides(SandboxEntry(image="busybox"), tmp_path)
    assert got == {"env": {}, "workdir": None, "cpus": None, "memory_mib": 512, "volumes": (), "ports": (),
                   "network": "public"}  # fmt: skip


def test_spec_overrides_feed_resolved_root_spec(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    entry = SandboxEntry(image="x", memory=256, cpus=1, volumes=["./src:/app:ro"], ports=["8080:80"],
                         envs=["A=1"], workdir="/app", scope="none")  # fmt: skip
    root = ResolvedRoot(rootfs=tmp_path, defaults=ImageDefaults(env={"PATH": "/bin", "A": "0"}, workdir="/w"))
    spec = root.spec("demo", **spec_overrides(entry, tmp_path))
    assert spec.memory_mib == 256 and spec.network == "none" and spec.workdir == "/app"
    assert spec.env == {"PATH": "/bin", "A": "1"}
    assert spec.volumes[0].readonly and spec.ports[0].host_port == 8080
    default = root.spec("demo", **spec_overrides(SandboxEntry(image="x"), tmp_path))
    assert default.workdir == "/w" and default.cpus == 1


def test_spec_overrides_rejects_clashes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="clashes"):
        spec_overrides(SandboxEntry(image="x", volumes=["a:/m", "b:/m/"]), tmp_path)
    with pytest.raises(ConfigError, match="clashes"):
        spec_overrides(SandboxEntry(image="x", ports=["80:80", "127.0.0.1:80:81"]), tmp_path)
    spec_overrides(SandboxEntry(image="x", ports=["80:80", "80:80/udp"]), tmp_path)  # tcp and udp: fine


def test_spec_overrides_confine(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "ns").mkdir()
    with pytest.raises(ConfigError, match="relative to the namespace's volume area"):
        spec_overrides(SandboxEntry(image="x", volumes=["../out:/o"]), tmp_path / "ns", confine=True)


IMAGE = ImageDefaults(entrypoint=["/entry"], cmd=["--serve"])


def test_command_for_script() -> None:
    entry = SandboxEntry(image="x", shell="/bin/bash", scripts={"start": "run it", "test": "pytest \"$@\""})
    assert command_for(entry, IMAGE, "test", []) == ["/bin/bash", "-c", 'pytest "$@"']
    assert command_for(entry, IMAGE, "test", ["-k", "x"]) == ["/bin/bash", "-c", 'pytest "$@"', "test", "-k", "x"]
    with pytest.raises(ConfigError, match=r"no script 'lint' in this sandbox \(defined: start, test\)"):
        command_for(entry, IMAGE, "lint", [])


def test_command_for_defaults() -> None:
    with_start = SandboxEntry(image="x", scripts={"start": "python3 app.py"})
    assert command_for(with_start, IMAGE, None, []) == ["/bin/sh", "-c", "python3 app.py"]
    assert command_for(with_start, IMAGE, None, ["ls", "-l"]) == ["ls", "-l"]  # args replace the command
    plain = SandboxEntry(image="x")
    assert command_for(plain, IMAGE, None, []) == ["/entry", "--serve"]
    assert command_for(plain, ImageDefaults(), None, []) is None  # caller opens a shell
    with pytest.raises(ConfigError, match="defined: none"):
        command_for(plain, IMAGE, "start", [])
