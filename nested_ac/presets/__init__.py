"""Presets: YAML files of config keys shipped with the package, the base of a run (``--preset NAME``).

Each file's first line is a comment: the one-line description ``nested-ac list presets`` prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nested_ac.config import load_yaml
from nested_ac.errors import unknown_choice

PRESET_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def preset_description(name: str) -> str:
    first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("#").strip()


def load_preset(name: str) -> dict[str, Any]:
    """The config mapping of preset ``name``; a ConfigError listing the presets if there is none."""
    if name not in preset_names():
        raise unknown_choice("preset", name, preset_names())
    return load_yaml(PRESET_DIR / f"{name}.yaml")
