"""msb: self-hosted microVM sandboxes — the headless engine (no textual/rich here)."""
