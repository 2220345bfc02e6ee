"""Themes: ``themes/*.toml`` files, validated with pydantic, registered as Textual themes.

Styles (``themes/*.tcss``) only use theme variables (``$primary``, ``$error`` …), so a theme
file is all it takes to recolour the app.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from textual.theme import Theme

_PACKAGED = Path(__file__).resolve().parent / "themes"
THEMES_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "themes"
"""``msb_tui/themes`` in an installed wheel, the repository's ``themes/`` in a checkout."""


class ThemeFile(BaseModel):
    """One ``themes/<name>.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dark: bool
    primary: str
    secondary: str | None = None
    accent: str | None = None
    foreground: str | None = None
    background: str | None = None
    surface: str | None = None
    panel: str | None = None
    success: str | None = None
    warning: str | None = None
    error: str | None = None
    variables: dict[str, str] = {}

    def to_theme(self) -> Theme:
        return Theme(**self.model_dump())


def load_themes(directory: Path = THEMES_DIR) -> list[Theme]:
    """Every theme file in ``directory``, sorted by name.

    Raises:
        ValueError: a theme file is not valid TOML or has unknown/missing keys (the file is named).
    """
    themes = []
    for path in sorted(directory.glob("*.toml")):
        try:
            themes.append(ThemeFile.model_validate(tomllib.loads(path.read_text())).to_theme())
        except (tomllib.TOMLDecodeError, ValueError) as exc:
            raise ValueError(f"theme file {path}: {exc}") from exc
    return themes
