"""OCI images: references, a registry client on ``oras``, a content-addressed store, safe layer
application and the VM root filesystems built from images.

Modules:

- :mod:`engine.images.reference` — Docker-style image references, normalised and validated.
- :mod:`engine.images.oci` — pydantic models of manifests, indexes, configs; media types.
- :mod:`engine.images.layout` — reading and writing OCI image layout directories.
- :mod:`engine.images.store` — blobs by digest and the SQLite image index.
- :mod:`engine.images.registry` — the registry seam (Protocol), the oras client, a fake.
- :mod:`engine.images.pull` / :mod:`engine.images.push` — moving images between the two.
- :mod:`engine.images.layers` — applying layer tars safely (whiteouts, hostile entries).
- :mod:`engine.images.rootfs` — per-image root filesystems the VMM boots, cached by digest.
- :mod:`engine.images.build` — offline base images built from Debian packages.
"""
