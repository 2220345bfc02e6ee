"""Byte-preserving splices of edited Sandboxfile entries, on layouts ruamel would reformat."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine.project.sandboxfile import SandboxEntry, Sandboxfile
from engine.project.yamltext import entry_span, splice

Edit = Callable[[Sandboxfile], None]


def update(name: str, **changes: object) -> Edit:
    def edit(sbf: Sandboxfile) -> None:
        entry = sbf.get(name)
        assert entry is not None
        sbf.set_sandbox(name, entry.model_copy(update=changes))

    return edit


def add(name: str, **fields: object) -> Edit:
    return lambda sbf: sbf.set_sandbox(name, SandboxEntry.model_validate(fields))


CASES: list[tuple[str, str, Edit, str]] = [
    (
        "four-space indentation, no final newline",
        'sandboxes:\n    api:\n        image: x\n        volumes:\n            - "./a:/a"\n'
        "        memory: 256   # eol\n    # about db\n    db:\n        image: y",
        update("api", memory=512, cpus=2, volumes=["./b:/b"]),
        'sandboxes:\n    api:\n        image: x\n        volumes:\n            - "./b:/b"\n'
        "        memory: 512   # eol\n        cpus: 2\n    # about db\n    db:\n        image: y",
    ),
    (
        "a comment at the key's column inside the entry",
        "sandboxes:\n  a:\n    image: x\n  # was: memory: 5\n    cpus: 2\n  b:\n    image: y\n",
        update("a", memory=300),
        "sandboxes:\n  a:\n    image: x\n  # was: memory: 5\n    memory: 300\n    cpus: 2\n  b:\n    image: y\n",
    ),
    (
        "anchors and merge keys",
        "x-base: &base\n  image: busybox\n  memory: 128\n"
        "sandboxes:\n  a:\n    <<: *base\n    cpus: 1\n  b:\n    image: y\n",
        update("a", cpus=2),
        "x-base: &base\n  image: busybox\n  memory: 128\n"
        "sandboxes:\n  a:\n    <<: *base\n    cpus: 2\n  b:\n    image: y\n",
    ),
    (
        "a flow-style entry",
        "sandboxes:\n  a: {image: x, memory: 128}   # flow\n  b:\n    image: y\n",
        update("a", memory=300),
        "sandboxes:\n  a: {image: x, memory: 300}   # flow\n  b:\n    image: y\n",
    ),
    (
        "an empty sandboxes key with a comment",
        "sandboxes:   # none yet\nother: ~\n",
        add("n", image="busybox"),
        "sandboxes:   # none yet\n  n:\n    image: busybox\nother: ~\n",
    ),
    (
        "no sandboxes key",
        "meta: ~   # m\n",
        add("n", image="busybox"),
        "meta: ~   # m\nsandboxes:\n  n:\n    image: busybox\n",
    ),
    (
        "a script added next to commented ones",
        "sandboxes:\n  a:\n    image: x\n    scripts:\n      start: echo  # go\n      # inner\n",
        update("a", scripts={"start": "echo", "test": "pytest"}),
        "sandboxes:\n  a:\n    image: x\n    scripts:\n      start: echo  # go\n      # inner\n      test: pytest\n",
    ),
    (
        "blank lines between entries are kept for a new one",
        "sandboxes:\n  a:\n    image: x\n\n  b:\n    image: y\n\n# end\n",
        add("c", image="z"),
        "sandboxes:\n  a:\n    image: x\n\n  b:\n    image: y\n\n  c:\n    image: z\n\n# end\n",
    ),
    (
        "a multi-line script becomes a literal block",
        "sandboxes:\n  a:\n    image: x\n",
        update("a", scripts={"start": "echo one\necho two\n"}),
        "sandboxes:\n  a:\n    image: x\n    scripts:\n      start: |\n        echo one\n        echo two\n",
    ),
    (
        "a replaced list keeps its quoting and block style",
        "sandboxes:\n  a:\n    image: x\n    envs:\n      - 'A=1'\n",
        update("a", envs=["A=2", "B=3"]),
        "sandboxes:\n  a:\n    image: x\n    envs:\n      - 'A=2'\n      - 'B=3'\n",
    ),
]


@pytest.mark.parametrize(("label", "before", "edit", "after"), CASES, ids=[c[0] for c in CASES])
def test_splice(tmp_path: Path, label: str, before: str, edit: Edit, after: str) -> None:
    path = tmp_path / "Sandboxfile"
    path.write_text(before)
    sbf = Sandboxfile.load(path, validate=False)
    edit(sbf)
    assert splice(before, sbf.doc) is not None, "expected a splice, not a full dump"
    sbf.save()
    assert path.read_text() == after


def test_entry_span_stops_at_gap_comments() -> None:
    lines = ["s:\n", "  a:\n", "    x: 1\n", "    # mine\n", "\n", "  # theirs\n", "  b:\n"]
    assert entry_span(lines, 1, 2) == (1, 4)


def test_splice_refuses_other_top_level_changes(tmp_path: Path) -> None:
    sbf = Sandboxfile.load(tmp_path, create=True)
    sbf.doc["meta"] = 1
    assert splice("sandboxes:\n", sbf.doc) is None
