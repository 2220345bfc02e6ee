"""Sandboxfile: loading, byte-preserving edits, start order, finding the file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.project.sandboxfile import SandboxEntry, Sandboxfile, entry_from_dict

ORIGINAL = """\
# My project  (odd spacing kept)
meta:   {owner: "me",  version: 2}   # meta comment
modules: ~
sandboxes:
    # the api server
    api:
        image: 'python:3.11-slim'     # single quotes kept
        memory: 1024
        ports: [ "8000:8000" ]
        flavour: spicy                # an unknown key
        scripts:
            start: |
                python3 -m http.server

                # a line inside the block scalar
            test: "pytest -q"

    # the database
    db:
        image: busybox
        depends_on: ["api"]   # after the api

builds:   {x: [1, 2,   3]}
groups:
    - g1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Sandboxfile"
    path.write_text(text)
    return path


def lines_outside(text: str, first: str, last: str) -> tuple[str, str]:
    """The text before the line starting with ``first`` and from the line ``last`` on."""
    return text[: text.index(first)], text[text.index(last) :]


def test_round_trip_without_edits_is_identical(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL)
    sbf = Sandboxfile.load(path)
    assert sbf.names() == ["api", "db"]
    sbf.save()
    assert path.read_text() == ORIGINAL


def test_update_touches_only_that_entry(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL)
    sbf = Sandboxfile.load(path)
    api = sbf.get("api")
    assert api is not None and api.model_extra == {"flavour": "spicy"}
    sbf.set_sandbox("api", api.model_copy(update={"memory": 2048, "envs": ["A=1"]}))
    sbf.save()
    text = path.read_text()
    edited = ("    api:", "    # the database")
    assert lines_outside(text, *edited) == lines_outside(ORIGINAL, *edited)
    assert "memory: 2048" in text and 'envs: ["A=1"]' in text
    assert "'python:3.11-slim'     # single quotes kept" in text and "flavour: spicy" in text
    assert "# a line inside the block scalar" in text
    again = Sandboxfile.load(path).get("api")
    assert again is not None and again.memory == 2048 and again.scripts["test"] == "pytest -q"


def test_add_appends_keeping_everything_else(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL)
    sbf = Sandboxfile.load(path)
    sbf.set_sandbox("web", SandboxEntry(image="microsandbox/python", ports=["8080:8000"], scripts={"start": "x"}))
    sbf.save()
    text = path.read_text()
    head, tail = text.split("    web:\n")
    assert ORIGINAL.startswith(head.rstrip("\n"))
    assert tail.endswith(ORIGINAL[ORIGINAL.index("\nbuilds:") :])
    assert '        ports: ["8080:8000"]\n' in tail  # the file's own 4-space indentation
    assert Sandboxfile.load(path).start_order(["web"]) == ["web"]


def test_remove_takes_the_entry_and_its_comment(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL)
    sbf = Sandboxfile.load(path, validate=False)
    assert sbf.remove("db") and not sbf.remove("db")
    sbf.save()
    text = path.read_text()
    assert "# the database" not in text and "db:" not in text
    assert text.startswith(ORIGINAL[: ORIGINAL.index("    # the database")].rstrip("\n"))
    assert text.endswith(ORIGINAL[ORIGINAL.index("builds:") :])


def test_remove_all_then_add_again(tmp_path: Path) -> None:
    path = write(tmp_path, "# c\nsandboxes:\n  a:\n    image: busybox\nother: 1   # kept\n")
    sbf = Sandboxfile.load(path)
    sbf.remove("a")
    sbf.save()
    assert path.read_text() == "# c\nsandboxes:\nother: 1   # kept\n"
    sbf = Sandboxfile.load(path)
    assert sbf.names() == []
    sbf.set_sandbox("b", SandboxEntry(image="busybox"))
    sbf.save()
    assert path.read_text() == "# c\nsandboxes:\n  b:\n    image: busybox\nother: 1   # kept\n"


def test_create_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="msb init"):
        Sandboxfile.load(tmp_path / "Sandboxfile")
    sbf = Sandboxfile.load(tmp_path, create=True)
    sbf.set_sandbox("a", SandboxEntry(image="busybox", memory=256))
    sbf.save()
    assert (tmp_path / "Sandboxfile").read_text() == "sandboxes:\n  a:\n    image: busybox\n    memory: 256\n"


def test_set_sandbox_drops_cleared_keys_but_not_unknown_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "sandboxes:\n  a:\n    image: busybox\n    cpus: 2  # two\n    x-note: hi\n")
    sbf = Sandboxfile.load(path)
    sbf.set_sandbox("a", SandboxEntry(image="busybox"))
    sbf.save()
    assert path.read_text() == "sandboxes:\n  a:\n    image: busybox\n    x-note: hi\n"


def test_flow_style_sandboxes_falls_back_to_a_full_dump(tmp_path: Path) -> None:
    path = write(tmp_path, "# keep\nsandboxes: {a: {image: busybox}}\n")
    sbf = Sandboxfile.load(path)
    sbf.set_sandbox("b", SandboxEntry(image="busybox"))
    sbf.save()
    text = path.read_text()
    assert text.startswith("# keep\n") and Sandboxfile.load(path).names() == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("sandboxes:\n  api:\n    image: x\n\n    memory: \"lots\"\n", "Sandboxfile:5:13",
         "sandboxes.api.memory must be an integer number of MiB (got 'lots')"),
        ("sandboxes:\n  api:\n    image: x\n    memory: 32\n", "Sandboxfile:4:13", "between 64 and"),
        ("sandboxes:\n  api:\n    image: x\n    cpus: 0\n", "Sandboxfile:4:11",
         "sandboxes.api.cpus must be an integer"),
        ("sandboxes:\n  api:\n    image: ''\n", "Sandboxfile:3:12", "sandboxes.api.image must be a non-empty string"),
        ("sandboxes:\n  api:\n    memory: 512\n", "Sandboxfile:2:3", "sandboxes.api has no image"),
        ("sandboxes:\n  api:\n    image: x\n    volumes: [\"./a:/b\", \"nope\"]\n", "Sandboxfile:4:25",
         'sandboxes.api.volumes[1] must be "host:guest"'),
        ("sandboxes:\n  api:\n    image: x\n    volumes: [\"./a:b\"]\n", "Sandboxfile:4:15", "guest path 'b'"),
        ("sandboxes:\n  api:\n    image: x\n    ports:\n      - \"80:80\"\n      - \"99999:1\"\n", "Sandboxfile:6:9",
         "sandboxes.api.ports[1] ports must be 1–65535"),
        ("sandboxes:\n  api:\n    image: x\n    ports: [\"1.2.3:80:80\"]\n", "Sandboxfile:4:13", "not an IP address"),
        ("sandboxes:\n  api:\n    image: x\n    ports: [\"80:80/sctp\"]\n", "Sandboxfile:4:13", '"/tcp" or "/udp"'),
        ("sandboxes:\n  api:\n    image: x\n    envs: [\"NOEQUALS\"]\n", "Sandboxfile:4:12", '"NAME=value"'),
        ("sandboxes:\n  api:\n    image: x\n    envs: \"A=1\"\n", "Sandboxfile:4:11", "must be a list of"),
        ("sandboxes:\n  api:\n    image: x\n    scope: internet\n", "Sandboxfile:4:12",
         "sandboxes.api.scope must be one of none, group, public, any (got 'internet')"),
        ("sandboxes:\n  api:\n    image: x\n    backend: docker\n", "Sandboxfile:4:14",
         "sandboxes.api.backend must be one of auto, qemu, gvisor, krun (got 'docker')"),
        ("sandboxes:\n  api:\n    image: x\n    backend: gVisor\n", "Sandboxfile:4:14", "(got 'gVisor')"),
        ("sandboxes:\n  api:\n    image: x\n    scripts:\n      start: 42\n", "Sandboxfile:5:14",
         "sandboxes.api.scripts.start must be a string"),
        ("sandboxes:\n  api:\n    image: x\n    scripts: [a]\n", "Sandboxfile:4:14", "must be a mapping"),
        ("sandboxes:\n  api:\n    image: x\n    workdir: app\n", "Sandboxfile:4:14", "absolute path"),
        ("sandboxes:\n  api:\n    image: x\n    depends_on: [db]\n", "Sandboxfile:4:18",
         "sandboxes.api.depends_on[0] names 'db', which this file does not define"),
        ("sandboxes:\n  -bad:\n    image: x\n", "Sandboxfile:2:3", "sandbox name '-bad' is not valid"),
        ("sandboxes:\n  api: busybox\n", "Sandboxfile:2:8", "sandboxes.api must be a mapping of settings"),
        ("sandboxes: [a, b]\n", "Sandboxfile:1:12", "sandboxes must be a mapping"),
        ("- a\n- b\n", "Sandboxfile:1:1", "top level must be a mapping"),
        ("sandboxes:\n  api:\n    image: x\n   memory: 1\n", "Sandboxfile:4:4", "not valid YAML"),
        ("sandboxes:\n  api:\n    image: x\n    image: y\n", "Sandboxfile:4:5", "duplicate key"),
        ("sandboxes:\n  a:\n    image: \"x\n", "Sandboxfile:", "not valid YAML"),
    ],
)  # fmt: skip
def test_validation_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, where: str,
                             message: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Sandboxfile.load(Path("Sandboxfile"))
    assert info.value.message.startswith(where + (":" if where.count(":") == 2 else "")), info.value.message
    assert message in info.value.message
    assert info.value.hint


def test_unknown_keys_are_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "extra: 1\nsandboxes:\n  a:\n    image: busybox\n    colour: red\n")
    with caplog.at_level(logging.WARNING):
        entry = Sandboxfile.load(path).get("a")
    assert entry is not None and entry.unknown_keys() == ["colour"]
    text = caplog.text
    assert "1:1: unknown top-level key 'extra'" in text and "5:5: sandboxes.a.colour is not a known key" in text


def test_known_top_level_keys_are_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "meta: {}\nmodules: []\nbuilds: {}\ngroups: {}\nsandboxes:\n")
    with caplog.at_level(logging.WARNING):
        assert Sandboxfile.load(path).names() == []
    assert caplog.text == ""


def test_start_order_and_cycles(tmp_path: Path) -> None:
    path = write(tmp_path, "sandboxes:\n  web: {image: x, depends_on: [api, cache]}\n"
                           "  api: {image: x, depends_on: [db]}\n  db: {image: x}\n"
                           "  cache: {image: x, depends_on: [db]}\n")  # fmt: skip
    sbf = Sandboxfile.load(path)
    assert sbf.start_order(["web"]) == ["db", "api", "cache", "web"]
    assert sbf.start_order(["cache", "web", "db"]) == ["db", "cache", "api", "web"]
    with pytest.raises(ConfigError, match="defines no sandbox 'nope'"):
        sbf.start_order(["nope"])
    write(tmp_path, "sandboxes:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n"
                    "  c: {image: x, depends_on: [a]}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="dependency cycle: a → b → c → a"):
        Sandboxfile.load(path)
    write(tmp_path, "sandboxes:\n  a: {image: x, depends_on: [a]}\n")
    with pytest.raises(ConfigError, match="dependency cycle: a → a"):
        Sandboxfile.load(path)


def test_long_dependency_chain_has_no_recursion_limit(tmp_path: Path) -> None:
    body = "".join(f"  s{i}: {{image: x, depends_on: [s{i + 1}]}}\n" for i in range(3000)) + "  s3000: {image: x}\n"
    sbf = Sandboxfile.load(write(tmp_path, "sandboxes:\n" + body))
    order = sbf.start_order(["s0"])
    assert order[0] == "s3000" and order[-1] == "s0" and len(order) == 3001


def test_find_walks_up(tmp_path: Path) -> None:
    write(tmp_path, "sandboxes:\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert Sandboxfile.find(deep) == tmp_path / "Sandboxfile"
    (deep / "Sandboxfile").mkdir()  # a directory of that name is not a Sandboxfile
    assert Sandboxfile.find(deep) == tmp_path / "Sandboxfile"


def test_find_none_says_msb_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Sandboxfile.find(tmp_path)
    assert "no Sandboxfile" in info.value.message and "msb init" in (info.value.hint or "")


def test_too_large(tmp_path: Path) -> None:
    path = write(tmp_path, "#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="at most"):
        Sandboxfile.load(path)


def test_entry_from_dict_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"ports\[0\] must be"):
        entry_from_dict({"image": "x", "ports": ["x"]})
    assert entry_from_dict({"image": "x", "memory": 128}).memory == 128


def test_bad_name_on_set(tmp_path: Path) -> None:
    sbf = Sandboxfile.load(tmp_path, create=True)
    with pytest.raises(ConfigError, match="not valid"):
        sbf.set_sandbox("a/b", SandboxEntry(image="x"))


def test_repository_sandboxfile_is_valid() -> None:
    root = Path(__file__).resolve().parents[3]
    sbf = Sandboxfile.load(root / "Sandboxfile")
    assert {"hello", "py", "web"} <= set(sbf.names())
    assert any(e.scope == "none" for e in sbf.entries().values())


def test_backend_key_is_read_and_the_allowed_values_are_the_selectors(tmp_path: Path) -> None:
    from engine.project.schema import BACKENDS
    from engine.vm.select import BACKEND_NAMES

    assert ("auto", *BACKEND_NAMES) == BACKENDS
    path = write(tmp_path, "sandboxes:\n  a:\n    image: busybox\n    backend: gvisor  # why: untrusted\n")
    sbf = Sandboxfile.load(path)
    entry = sbf.get("a")
    assert entry is not None and entry.backend == "gvisor" and entry.unknown_keys() == []
    sbf.set_sandbox("a", entry_from_dict({**entry.model_dump(exclude_defaults=True), "backend": "qemu"}))
    sbf.save()
    assert "backend: qemu    # why: untrusted" in path.read_text()  # the comment keeps its column
