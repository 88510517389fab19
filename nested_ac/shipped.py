"""YAML files shipped inside the package (presets, experiments), found by name.

Each file starts with a comment paragraph (up to the first line that is a bare ``#`` or no comment): the
description ``nested-ac list`` prints, whole.
"""

from __future__ import annotations

from pathlib import Path

from nested_ac.errors import unknown_choice


class ShippedFiles:
    """The ``*.yaml`` files of one package directory, each named by its stem."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory

    def names(self) -> list[str]:
        return sorted(path.stem for path in self.directory.glob("*.yaml"))

    def path(self, name: str) -> Path:
        """The file of ``name``; a ConfigError listing the valid names if there is none."""
        if name not in self.names():
            raise unknown_choice(self.kind, name, self.names())
        return self.directory / f"{name}.yaml"

    def description(self, name: str) -> str:
        """The file's first comment paragraph, its lines joined."""
        lines = []
        for line in self.path(name).read_text().splitlines():
            text = line.lstrip("#").strip()
            if not line.startswith("#") or not text:
                break
            lines.append(text)
        return " ".join(lines)
