"""The guest agent's libkrun mode reads its boot parameters from the environment.

``msb-agent --krun --dry-run`` parses MSB_PORT, MSB_HOSTNAME, MSB_SYNC and MSB_VOLn exactly as
``--krun`` does in the VM (engine/guest/agent/krun.c), prints the result and exits, so the
parsing is checked against the real binary without vsock. The environment the engine builds
(engine/vm/krun.py) is fed through it too, so both sides agree on the names and formats.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine import paths
from engine.sandbox.spec import VolumeMount
from engine.vm.backend import VmSpec
from engine.vm.krun import krun_plan

AGENT = paths.agent_path()
pytestmark = pytest.mark.skipif(not AGENT.is_file(), reason=f"guest agent not built at {AGENT}: run `make agent`")


def dry_run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AGENT), "--krun", "--dry-run"], env=env, capture_output=True, text=True, timeout=30)


def parsed(env: dict[str, str]) -> list[str]:
    r = dry_run(env)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_parses_every_parameter() -> None:
    env = {"MSB_PORT": "vsock:10000", "MSB_HOSTNAME": "demo", "MSB_SYNC": "1",
           "MSB_VOL0": "msbvol0:ro:/data", "MSB_VOL1": "msbvol1:rw:/srv/my%20files/%C3%A9t%C3%A9"}  # fmt: skip
    assert parsed(env) == [
        "port vsock:10000",
        "hostname demo",
        "sync 1",
        "volume msbvol0 ro /data",
        "volume msbvol1 rw /srv/my files/été",
    ]


def test_defaults_and_the_inherited_socket_form() -> None:
    assert parsed({"MSB_PORT": "fd:5"}) == ["port fd:5", "hostname localhost", "sync 0"]


def test_the_environment_the_engine_builds_parses_back(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    spec = VmSpec(name="x" * 80, kernel=Path(os.devnull), initrd=Path(os.devnull), root_image=tmp_path,
                  upper_image=tmp_path / "upper", run_dir=tmp_path, network="none",
                  volumes=(VolumeMount(host=share, guest="/mnt/a b", readonly=True),))  # fmt: skip
    plan = krun_plan(spec, root_dir=tmp_path, agent_socket=tmp_path / "a.sock", agent_port=4242)
    exec_call = plan[-1]
    assert exec_call.name == "krun_set_exec" and exec_call.args[1] == ("--krun",)
    env_list = exec_call.args[2]
    assert isinstance(env_list, tuple)
    env = dict(item.split("=", 1) for item in env_list)
    assert parsed(env) == ["port vsock:4242", f"hostname {'x' * 63}", "sync 1", "volume msbvol0 ro /mnt/a b"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MSB_PORT is not set"),
        ({"MSB_PORT": "vsock:"}, "MSB_PORT=vsock: is malformed"),
        ({"MSB_PORT": "vsock:0"}, "MSB_PORT=vsock:0 is malformed"),
        ({"MSB_PORT": "vsock:12x"}, "MSB_PORT=vsock:12x is malformed"),
        ({"MSB_PORT": "vsock:4294967295"}, "is malformed"),  # VMADDR_PORT_ANY
        ({"MSB_PORT": "tcp:80"}, "MSB_PORT=tcp:80 is malformed"),
        ({"MSB_PORT": "fd:1"}, "MSB_PORT=fd:1 is malformed"),  # stdio is never the channel
        ({"MSB_HOSTNAME": "h" * 65}, "MSB_HOSTNAME is longer than 64 bytes"),
        ({"MSB_VOL0": "msbvol0"}, "malformed MSB_VOL0=msbvol0 (want TAG:ro|rw:PATH)"),
        ({"MSB_VOL0": "msbvol0:rx:/d"}, "(mode must be ro or rw)"),
        ({"MSB_VOL0": "msbvol0:ro:data"}, "(path must be absolute and %XX-encoded)"),
        ({"MSB_VOL0": "msbvol0:ro:/a%00b"}, "(path must be absolute and %XX-encoded)"),
        ({"MSB_VOL0": "msbvol0:ro:/a%G1"}, "(path must be absolute and %XX-encoded)"),
        ({"MSB_VOL1": "msbvol1:ro:/d"}, "numbered 0 to N-1 without gaps (1 set, 0 in order)"),
        ({f"MSB_VOL{i}": f"msbvol{i}:ro:/d{i}" for i in range(17)}, "more than 16 volumes (MSB_VOL16 is set)"),
    ],
)
def test_malformed_parameters_stop_the_boot_with_the_reason(env: dict[str, str], message: str) -> None:
    # Every case but the first has a valid port, so the error is the one the case is about.
    r = dry_run(env if not env or "MSB_PORT" in env else {"MSB_PORT": "vsock:10000", **env})
    assert r.returncode == 1
    assert message in r.stderr
    assert r.stdout == ""
