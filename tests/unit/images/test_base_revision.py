"""Base-image recipe revisions: a stored build of an older recipe is rebuilt on its next use
(``microsandbox/python`` without ``python`` must not stay in a store forever), while pulled
images and builds under other tags are left alone. Runs the Debian path with a fake mmdebstrap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.images import resolve
from engine.images.build import BASE_IMAGES, RECIPE_LABEL, outdated_base_image
from engine.images.resolve import ResolvedRoot, build_offline, resolve_root
from engine.images.store import ImageRecord, ImageStore
from tests.unit.images.test_build import fake_mmdebstrap, read_image  # noqa: F401  (fixture)

PY = "docker.io/microsandbox/python:latest"


@pytest.fixture
def store(tmp_path: Path, fake_mmdebstrap: Path) -> ImageStore:  # noqa: F811
    return ImageStore(tmp_path / "store")


def build(store: ImageStore, tag: str | None = None) -> ImageRecord:
    return build_offline("microsandbox/python", store, mirror="http://mirror.local/debian", tag=tag)


def test_the_python_recipe_has_python_and_pip() -> None:
    py = BASE_IMAGES["microsandbox/python"]
    assert {"python-is-python3", "python3-pip"} <= set(py.packages)
    assert py.revision >= 2  # revision 1 had no `python`
    assert "usr/lib/python3*/EXTERNALLY-MANAGED" in py.drop  # plain `pip install` works (PEP 668)


def test_a_build_is_labelled_with_its_recipe_revision(store: ImageStore) -> None:
    record = build(store)
    labels = store.config(record).config.labels or {}
    assert labels[RECIPE_LABEL] == str(BASE_IMAGES["microsandbox/python"].revision)
    assert not outdated_base_image(store, record)


def test_an_older_revision_is_outdated(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    record = build(store)
    recipe = BASE_IMAGES["microsandbox/python"]
    monkeypatch.setitem(BASE_IMAGES, recipe.name, recipe.model_copy(update={"revision": recipe.revision + 1}))
    assert outdated_base_image(store, record)


def test_pulled_images_and_other_tags_are_never_outdated(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build(store)
    mine = build(store, tag="docker.io/microsandbox/python:mine")
    recipe = BASE_IMAGES["microsandbox/python"]
    monkeypatch.setitem(BASE_IMAGES, recipe.name, recipe.model_copy(update={"revision": recipe.revision + 1}))
    assert not outdated_base_image(store, built.model_copy(update={"source": "pull"}))
    assert not outdated_base_image(store, mine)


def test_resolve_rebuilds_an_outdated_build_once(store: ImageStore, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    old = build(store)
    recipe = BASE_IMAGES["microsandbox/python"]
    monkeypatch.setitem(BASE_IMAGES, recipe.name, recipe.model_copy(update={"revision": recipe.revision + 1}))
    builds: list[str] = []

    def counting_build(name: str, st: ImageStore, log: Any = None, **kw: Any) -> ImageRecord:
        builds.append(name)
        return build_offline(name, st, log, mirror="http://mirror.local/debian", **kw)

    async def finish(record: ImageRecord, *_: Any) -> ResolvedRoot:
        return ResolvedRoot(rootfs=tmp_path, record=record)  # the rootfs cache is tested elsewhere

    monkeypatch.setattr(resolve, "build_offline", counting_build)
    monkeypatch.setattr(resolve, "_finish", finish)

    async def twice() -> list[ResolvedRoot]:
        return list(await asyncio.gather(*(resolve_root("microsandbox/python", store=store) for _ in range(2))))

    roots = asyncio.run(twice())
    assert builds == ["microsandbox/python"]
    new = store.get(PY)
    assert new is not None and new.manifest != old.manifest
    assert [r.record.manifest for r in roots if r.record] == [new.manifest, new.manifest]
    assert not outdated_base_image(store, new)
    asyncio.run(resolve_root("microsandbox/python", store=store))
    assert builds == ["microsandbox/python"]  # current now: used as it is
