"""Black-box attacks on the real server process and real sandboxes (issue 15): a hostile API
client with a key for namespace t1, and hostile guests it starts.

- the host's own directories as images (``config.image: "/"`` booted the host's root: its
  shadow file and the server's signing secret were one ``cat`` away);
- volumes that reach server state, and symlinks a guest plants in its volume for host code
  to follow (``.menv/sandboxes/b/upper`` → a host directory: sandbox b's files were written
  there as root);
- server state readable by other host users;
- one namespace's key acting on another namespace.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.security.server_proc import ServerProc, is_error, loose_dirs, running, sh, uniq
from tests.security.server_proc import sandbox_start as start
from tests.security.server_proc import sandbox_stop as stop

pytestmark = pytest.mark.vm


def peek(srv: ServerProc, key: str, name: str, script: str) -> str:
    """What ``/bin/sh -c script`` prints in t1's sandbox ``name`` (or the error): evidence for a
    failure message when an attack got through."""
    doc = srv.rpc("sandbox.command.run", {"namespace": "t1", "sandbox": name, "command": "/bin/sh",
                                          "args": ["-c", script]}, key)  # fmt: skip
    return repr(doc["result"]["stdout"]) if "result" in doc else f"(could not run: {doc.get('error')})"


# --- 1. directory images ----------------------------------------------------------------------

HOSTILE_IMAGES = ["/", "/etc", "..", "../..", "~", "./x", "~root", ".", "/tmp/../"]


@pytest.mark.parametrize("image", HOSTILE_IMAGES)
def test_host_directory_as_image_is_refused(srv: ServerProc, t1: str, image: str) -> None:
    """Attack: ``sandbox.start`` with ``config.image`` a host directory ("/", "/etc", "..", "~" …)
    boots the host's own tree as the guest's root; then ``head /etc/shadow; cat server.key``."""
    name = uniq("img")
    doc = start(srv, t1, "t1", name, image=image, ephemeral=True)
    if not is_error(doc):
        leak = peek(srv, t1, name, f"head -3 /etc/shadow; cat {srv.state}/server.key; ls -a {srv.state}")
        stop(srv, t1, "t1", name)
        pytest.fail(f"image {image!r} booted; the guest read: {leak}")
    assert name not in running(srv, t1, "t1")


def test_host_directory_as_image_is_refused_over_mcp(srv: ServerProc, t1: str) -> None:
    """Attack: the same through MCP's ``sandbox_start`` tool (the other front door)."""
    name = uniq("mcpimg")
    config = {"image": "/", "ephemeral": True}
    doc = srv.mcp_tool("sandbox_start", {"namespace": "t1", "sandbox": name, "config": config}, t1)
    refused = doc["_status"] >= 400 or "error" in doc or doc["result"].get("isError") is True
    if not refused:
        leak = peek(srv, t1, name, "head -3 /etc/shadow")
        stop(srv, t1, "t1", name)
        pytest.fail(f"image '/' booted through MCP; the guest read: {leak}")


def test_directory_beside_an_allowed_one_is_refused(srv: ServerProc, t1: str, allowed_rootfs: Path) -> None:
    """Attack: the operator allows one directory; the client names its parent, or climbs out of
    it with ``..`` (``<allowed>/..``, ``<allowed>/../rootfs/..``)."""
    for image in (str(allowed_rootfs.parent), f"{allowed_rootfs}/..", f"{allowed_rootfs}/../rootfs/.."):
        name = uniq("near")
        doc = start(srv, t1, "t1", name, image=image, ephemeral=True)
        if not is_error(doc):
            stop(srv, t1, "t1", name)
            pytest.fail(f"image {image!r} outside the allowed {allowed_rootfs} booted")


def test_operator_allowed_directory_works(srv: ServerProc, t1: str, allowed_rootfs: Path) -> None:
    """Not an attack: a directory the operator allowed (``MSB_ALLOWED_IMAGE_DIRS``) boots."""
    name = uniq("allowed")
    doc = start(srv, t1, "t1", name, image=str(allowed_rootfs), ephemeral=True)
    assert "result" in doc, f"{doc}\n{srv.log_tail()}"
    try:
        assert sh(srv, t1, "t1", name, "cat /etc/os-release-msb")["stdout"] == "msb-busybox\n"
    finally:
        stop(srv, t1, "t1", name)


# --- 2. volumes ---------------------------------------------------------------------------------

HOSTILE_VOLUMES = [
    "/:/host",
    "/etc:/e",
    "../:/x",
    "../../:/x",
    "~:/h",
    "..:/x",
    "./../:/x",
    "/tmp:/t",
    "../t2:/x",
    "a/../../t2:/x",
]


@pytest.mark.parametrize("volume", HOSTILE_VOLUMES)
def test_volume_outside_the_data_area_is_refused(srv: ServerProc, t1: str, busybox: str, volume: str) -> None:
    """Attack: a volume whose host part names a host directory (absolute, ``~``, ``..``)."""
    name = uniq("vol")
    doc = start(srv, t1, "t1", name, image=busybox, ephemeral=True, volumes=[volume])
    if not is_error(doc):
        guest = volume.split(":")[1]
        leak = peek(srv, t1, name, f"ls -a {guest} | head -40")
        stop(srv, t1, "t1", name)
        pytest.fail(f"volume {volume!r} was mounted; the guest sees: {leak}")


def test_data_area_holds_no_server_state(srv: ServerProc, t2: str, busybox: str) -> None:
    """Attack: mount the namespace's data area (``.:/ns``) after persistent sandboxes exist in
    it and in t2, and look for server state: the key, Sandboxfiles, ``.menv``, other
    namespaces, any sandbox's layer or definition. (A fresh namespace, so that no other
    test's guest has written there.)"""
    key, ns = srv.keygen("*"), uniq("area")
    mine, theirs, name = uniq("defined"), uniq("other"), uniq("look")
    for k, n, sb in ((key, ns, mine), (t2, "t2", theirs)):
        assert "result" in start(srv, k, n, sb, image=busybox)
        sh(srv, k, n, sb, f"echo secret > /root/{sb}.txt")
    try:
        doc = start(srv, key, ns, name, image=busybox, ephemeral=True, volumes=[".:/ns"])
        assert "result" in doc, f"the data area cannot be mounted: {doc}\n{srv.log_tail()}"
        seen = sh(srv, key, ns, name, "ls -la /ns; find /ns | head -200")["stdout"]
        stop(srv, key, ns, name)
    finally:
        stop(srv, key, ns, mine)
        stop(srv, t2, "t2", theirs)
    for secret in ("server.key", "Sandboxfile", ".menv", "sandbox.json", "upper", "t2", mine, theirs):
        assert secret not in seen, f"the data area shows {secret!r}:\n{seen}"


def test_planted_layer_symlink_is_not_followed(
    srv: ServerProc, t1: str, t1_used: str, busybox: str, tmp_path: Path
) -> None:
    """Attack (issue 15, hole 2): with ``.:/ns`` mounted, the guest plants
    ``/ns/.menv/sandboxes/b/upper -> <host dir>``; then persistent sandbox b is started and
    writes a file. Root on the host must not write b's files into that host directory."""
    target = tmp_path / "host-dir"
    target.mkdir()
    planter, victim = uniq("plant"), uniq("b")
    assert "result" in start(srv, t1, "t1", planter, image=busybox, ephemeral=True, volumes=[".:/ns"])
    try:
        for layer in (f"/ns/.menv/sandboxes/{victim}", f"/ns/sandboxes/{victim}", f"/ns/{victim}"):
            sh(srv, t1, "t1", planter, f"mkdir -p {layer} && ln -s {target} {layer}/upper")
    finally:
        stop(srv, t1, "t1", planter)
    doc = start(srv, t1, "t1", victim, image=busybox)
    if "result" in doc:
        sh(srv, t1, "t1", victim, "echo pwned > /pwned; mkdir -p /root/d; sync")
        stop(srv, t1, "t1", victim)
    assert sorted(os.listdir(target)) == [], f"the host directory was written through the planted link: {doc}"


LINKS = [("/", "root", ""), ("/etc", "etc2", ""), ("/etc", "deep", "/ssl"), ("/", "sub/l", ""), ("../t2", "rel", ""),
         ("..", "up", "")]  # fmt: skip
"""(what the guest's link points at, the link's path in the data area, what the volume adds)"""


@pytest.mark.parametrize("target, link, under", LINKS)
def test_symlink_in_data_area_is_not_followed(
    srv: ServerProc, t1: str, t1_used: str, busybox: str, target: str, link: str, under: str
) -> None:
    """Attack: a guest with the data area mounted makes ``root -> /``, ``etc2 -> /etc``,
    ``deep -> /etc`` (then the volume names ``deep/ssl``), ``sub/l -> /``, ``rel -> ../t2`` or
    ``up -> ..``; another sandbox names it as a volume, hoping the host follows the link to its
    own directories or another namespace's."""
    planter, name = uniq("plant"), uniq("follow")
    link = f"{link}{planter[-6:]}"
    volume = f"{link}{under}:/r"
    assert "result" in start(srv, t1, "t1", planter, image=busybox, ephemeral=True, volumes=[".:/ns"])
    try:
        sh(srv, t1, "t1", planter, f"mkdir -p /ns/$(dirname {link}) && ln -s {target} /ns/{link}")
    finally:
        stop(srv, t1, "t1", planter)
    doc = start(srv, t1, "t1", name, image=busybox, ephemeral=True, volumes=[volume])
    if not is_error(doc):
        leak = peek(srv, t1, name, "ls -a /r | head -40")
        stop(srv, t1, "t1", name)
        pytest.fail(f"volume {volume!r} followed the guest's link to {target}: {leak}")


def test_planted_definition_is_ignored(srv: ServerProc, t1: str, t1_used: str, busybox: str) -> None:
    """Attack: a guest with the data area mounted writes sandbox definitions where the server
    kept or might keep them (``Sandboxfile``, ``<name>/sandbox.json``, ``sandboxes/t1/<name>/…``)
    giving sandbox ``victim`` an environment it chose; the client then starts ``victim`` by
    name. The server must not trust a definition a guest wrote."""
    planter, victim = uniq("plant"), uniq("victim")
    sandboxfile = f"sandboxes:\\n  {victim}:\\n    image: busybox\\n    envs: [PLANTED=1]\\n"
    definition = '{"image": "busybox", "envs": ["PLANTED=1"]}'
    script = (
        f"printf '{sandboxfile}' > /ns/Sandboxfile; for d in /ns/{victim} /ns/sandboxes/t1/{victim} "
        f"/ns/.menv/sandboxes/{victim}; do mkdir -p $d; echo '{definition}' > $d/sandbox.json; done"
    )
    assert "result" in start(srv, t1, "t1", planter, image=busybox, ephemeral=True, volumes=[".:/ns"])
    try:
        sh(srv, t1, "t1", planter, script)
    finally:
        stop(srv, t1, "t1", planter)
    doc = srv.rpc("sandbox.start", {"namespace": "t1", "sandbox": victim}, t1)
    if "result" in doc:
        env = sh(srv, t1, "t1", victim, "env")["stdout"]
        stop(srv, t1, "t1", victim)
        assert "PLANTED" not in env, f"the server started {victim} from a definition its guest wrote: {env}"


def test_volume_swapped_for_a_symlink_while_starting(srv: ServerProc, t1: str, t1_used: str, busybox: str) -> None:
    """Attack (a race): a guest turns ``race/d`` from a directory into a symlink to ``/`` and
    back as fast as it can while the client starts sandboxes with the volume ``race/d:/r``. A
    host that checks the path and then mounts the path string mounts the host's root the
    moment the swap lands between the two; mounts made on an fd opened without following
    links never do. (Probabilistic: on the old code the first or second successful mount
    showed the host's root in each of 3 runs; the fixed server refuses, or fails the boot.)"""
    planter = uniq("swap")
    assert "result" in start(srv, t1, "t1", planter, image=busybox, ephemeral=True, volumes=[".:/ns"])
    flip = "mkdir -p /ns/race; cd /ns/race; timeout 30 sh -c 'while :; do mkdir d; rmdir d; ln -s / d; rm d; done'"
    escaped: list[str] = []
    mounted = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flipping = pool.submit(srv.rpc, "sandbox.command.run", {"namespace": "t1", "sandbox": planter,
                                                                "command": "sh", "args": ["-c", flip]}, t1)  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and mounted < 6 and not escaped:
            name = uniq("race")
            if "result" in start(srv, t1, "t1", name, image=busybox, ephemeral=True, volumes=["race/d:/r"]):
                mounted += 1
                seen = peek(srv, t1, name, "ls /r")
                stop(srv, t1, "t1", name)
                if "etc" in seen or "proc" in seen:
                    escaped.append(seen)
        stop(srv, t1, "t1", planter)  # ends the flipping command too
        flipping.result(timeout=60)
    assert not escaped, f"mount {mounted} of race/d followed the guest's swapped-in link to the host's root: {escaped}"


# --- 3. server state on the host ------------------------------------------------------------------


def test_server_state_is_private(srv: ServerProc, t1: str, busybox: str) -> None:
    """Attack (from another host user): read server state. Every directory the server keeps
    outside ``volumes/`` is 0700 or stricter (a sandbox's directory, the one holding its layer
    ``upper``/``upper.ext4``, is checked, not the guest's files below it) and ``server.key`` is 0600."""
    name = uniq("perm")
    assert "result" in start(srv, t1, "t1", name, image=busybox)
    sh(srv, t1, "t1", name, "echo x > /root/marker")
    stop(srv, t1, "t1", name)
    loose = loose_dirs(srv.state)
    assert loose == [], "server directories open to other users:\n" + "\n".join(loose)
    assert stat.S_IMODE(os.stat(srv.state / "server.key").st_mode) == 0o600


# --- 4. namespaces --------------------------------------------------------------------------------


def test_t1_key_cannot_touch_t2(srv: ServerProc, t1: str, t2: str, busybox: str) -> None:
    """Attack: a key for t1 calls every JSON-RPC method, every MCP tool and the seed-style MCP
    call with ``namespace: t2`` (a t2 sandbox runs), and metrics/list with ``namespace: "*"``;
    each is refused (HTTP 403, or an MCP ``isError`` result) and the t2 sandbox is untouched."""
    theirs = uniq("t2box")
    assert "result" in start(srv, t2, "t2", theirs, image=busybox, ephemeral=True)
    try:
        calls: list[tuple[str, dict[str, Any]]] = [
            ("sandbox.start", {"sandbox": uniq("x"), "config": {"image": busybox, "ephemeral": True}}),
            ("sandbox.command.run", {"sandbox": theirs, "command": "touch", "args": ["/owned"]}),
            ("sandbox.repl.run", {"sandbox": theirs, "language": "python", "code": "1"}),
            ("sandbox.metrics.get", {"sandbox": theirs}),
            ("sandbox.metrics.get", {}),
            ("sandbox.stop", {"sandbox": theirs}),
        ]
        for method, params in calls:
            doc = srv.rpc(method, {"namespace": "t2", **params}, t1)
            assert doc["_status"] == 403, f"{method} in t2 with a t1 key: {doc}"
        everywhere = srv.rpc("sandbox.metrics.get", {"namespace": "*"}, t1)
        assert everywhere["_status"] == 403, f"metrics of '*' with a t1 key: {everywhere}"
        tools: list[tuple[str, dict[str, Any]]] = [
            ("sandbox_run_command", {"sandbox": theirs, "command": "touch", "args": ["/owned"]}),
            ("sandbox_file_write", {"sandbox": theirs, "path": "/owned", "content": "x"}),
            ("sandbox_file_read", {"sandbox": theirs, "path": "/etc/hostname"}),
            ("sandbox_get_metrics", {"sandbox": theirs}),
            ("sandbox_stop", {"sandbox": theirs}),
        ]
        for tool, args in tools:
            got = srv.mcp_tool(tool, {"namespace": "t2", **args}, t1)
            refused = got["_status"] == 403 or got.get("result", {}).get("isError") is True
            assert refused, f"MCP {tool} in t2 with a t1 key: {got}"
        seed = srv.mcp_seed({"tool_name": "sandbox.command.run", "sandbox_name": theirs, "namespace": "t2",
                             "command": "touch /owned"}, t1)  # fmt: skip
        assert seed["_status"] == 403, f"a seed-style MCP call in t2 with a t1 key: {seed}"
        for ns in ("t2", "*"):
            listed = srv.mcp_tool("sandbox_list", {"namespace": ns}, t1)
            refused = listed["_status"] == 403 or listed.get("result", {}).get("isError") is True
            assert refused and theirs not in str(listed), f"MCP sandbox_list {ns!r} with a t1 key: {listed}"
        assert sh(srv, t2, "t2", theirs, "ls /owned 2>&1; true")["stdout"].endswith("No such file or directory\n")
        assert theirs in running(srv, t2, "t2")
    finally:
        stop(srv, t2, "t2", theirs)


def test_same_name_in_two_namespaces_shares_nothing(srv: ServerProc, t1: str, t2: str, busybox: str) -> None:
    """Attack: t1 names its persistent sandbox like t2's (``same-…``) hoping to get t2's
    persistent files, or to have its own files land in t2's sandbox."""
    name = uniq("same")
    assert "result" in start(srv, t2, "t2", name, image=busybox)
    sh(srv, t2, "t2", name, "echo t2-secret > /root/secret")
    stop(srv, t2, "t2", name)
    assert "result" in start(srv, t1, "t1", name, image=busybox)
    try:
        got = sh(srv, t1, "t1", name, "cat /root/secret 2>&1; echo t1 > /root/mine")["stdout"]
    finally:
        stop(srv, t1, "t1", name)
    assert "t2-secret" not in got, f"t1's sandbox {name} sees t2's persistent file"
    assert "result" in start(srv, t2, "t2", name)
    try:
        got = sh(srv, t2, "t2", name, "cat /root/secret; ls /root")["stdout"]
    finally:
        stop(srv, t2, "t2", name)
    assert got.startswith("t2-secret\n") and "mine" not in got, f"t2's sandbox {name} changed: {got!r}"
