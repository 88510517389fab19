"""Presets: YAML files of config keys shipped with the package, the base of a run (``--preset NAME``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nested_ac.config import load_yaml
from nested_ac.shipped import ShippedFiles

PRESETS = ShippedFiles("preset", Path(__file__).parent)


def load_preset(name: str) -> dict[str, Any]:
    """The config mapping of preset ``name``; a ConfigError listing the presets if there is none."""
    return load_yaml(PRESETS.path(name))
