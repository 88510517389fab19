"""Name → builder tables behind ``--agent``, ``--optimizer`` and ``nested-ac list``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nested_ac.errors import unknown_choice

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered choice: its name, a one-line description and the object it stands for."""

    name: str
    description: str
    target: T


class Registry(Generic[T]):
    """An ordered table of named choices of one kind (agents, optimizers, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str, target: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, description, target)
        return target

    def get(self, name: str) -> T:
        """The object registered as ``name``; a ConfigError listing the valid names otherwise."""
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries)
        return self._entries[name].target

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())


AGENTS: Registry[Any] = Registry("agent")
OPTIMIZERS: Registry[Any] = Registry("optimizer")
