"""Sandboxfile projects: the YAML file that declares a project's sandboxes, and its ``.menv/``
state directory beside it."""
