"""Persistent REPLs inside sandboxes: one long-lived interpreter per language per sandbox.

The drivers (``drivers/python_driver.py``, ``drivers/node_driver.js``) are shipped into the VM
by the engine when first needed, so any image with ``python3`` / ``node`` works.
"""
