"""Errors that the command line reports as one clear line (exit code 2) instead of a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A problem with what the user asked for: an unknown name, a bad value, a malformed file."""


def closest_first(name: str, choices: Iterable[str]) -> list[str]:
    """All ``choices``, the ones closest to ``name`` first, the rest in sorted order."""
    ordered = sorted(choices)
    close = difflib.get_close_matches(name, ordered, n=len(ordered), cutoff=0.5)
    return close + [choice for choice in ordered if choice not in close]


def unknown_choice(kind: str, name: str, choices: Iterable[str], limit: int | None = None) -> ConfigError:
    """An error for an unknown ``kind`` called ``name`` that lists the valid choices, closest match first."""
    ordered = closest_first(name, choices)
    shown = ordered if limit is None else ordered[:limit]
    more = f" (and {len(ordered) - len(shown)} more)" if len(shown) < len(ordered) else ""
    return ConfigError(f"unknown {kind} {name!r}; valid choices: {', '.join(shown)}{more}")
