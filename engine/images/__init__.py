"""OCI images: references, a registry client on ``oras``, a content-addressed store, safe layer
application and the VM root filesystems built from images.

Modules:

- :mod:`engine.images.reference` — Docker-style image references, normalised and validated.
- :mod:`engine.images.oci` — pydantic models of manifests, indexes, configs; media types.
- :mod:`engine.images.layout` — reading and writing OCI image layout directories.
- :mod:`engine.images.store` — blobs by digest and the SQLite image index.
- :mod:`engine.images.registry` — the registry seam (Protocol) and the oras client;
  :mod:`engine.images.fake_registry` the fake beside it.
- :mod:`engine.images.pull` / :mod:`engine.images.push` — moving images between the two.
- :mod:`engine.images.layers` — applying layer tars safely (whiteouts, hostile entries), on
  :mod:`engine.images.tarstream` (bounded, hashed decompression) and
  :mod:`engine.images.fsops` (fd-relative, never-follow filesystem operations).
- :mod:`engine.images.archive` — import/export of OCI layouts and ``docker save`` tarballs.
- :mod:`engine.images.rootfs` — per-image root filesystems the VMM boots, cached by digest.
- :mod:`engine.images.build` — offline base images built from Debian packages
  (:mod:`engine.images.debsources`, :mod:`engine.images.busybox`).
- :mod:`engine.images.resolve` — an IMAGE argument (reference or directory) → a sandbox spec.
- :mod:`engine.images.credentials` — ``msb registry login`` and Docker's config.json.
"""
