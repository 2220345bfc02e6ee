"""msb-tui: the Textual workbench on top of ``engine``."""
