"""Name → builder tables behind ``--agent``, ``--optimizer``, the plasticity tools and ``nested-ac list``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nested_ac.errors import unknown_choice

if TYPE_CHECKING:
    from nested_ac.hooks import Tool

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


@dataclass(frozen=True)
class AgentSpec:
    """A registered agent: its class, and its constructor's keyword arguments for a run configuration
    (``kwargs(config)``; a ConfigError if they are out of range)."""

    cls: type
    kwargs: Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class ToolSpec(Generic[T]):
    """A registered plasticity tool: the config section it reads and how to build it from that section.

    ``section``: the section's key in the run configuration (``cbp``, ``redo`` …); ``config``: its
    dataclass (the section's keys and defaults; a section that the run configuration does not define itself
    becomes one of its top-level sections when the tool is registered); ``enabled(section)``: whether the
    run uses the tool; ``build(section)``: the tool (a ValueError for out-of-range settings);
    ``tool``: the class ``build`` returns. ``charts``: the TensorBoard custom-scalars charts of the tool's
    tags (chart title → tag regex), shown under *plasticity and interventions*: a ``plasticity`` tool's
    (the diagnostics) first, then the gradient norm, then the ``interventions``' (``category``).
    ``changes_training``: False for a tool that only observes (diagnostics): a run with it alone still
    counts as a baseline. (A tool that resets units says so itself, ``Tool.restarts_entry_state``: the
    agent then keeps one step count per weight.)
    """

    section: str
    config: type[T]
    tool: type[Tool]
    enabled: Callable[[T], bool]
    build: Callable[[T], Tool]
    charts: Mapping[str, str] = field(default_factory=dict)
    category: str = "interventions"
    changes_training: bool = True


AGENTS: Registry[AgentSpec] = Registry("agent")
OPTIMIZERS: Registry[Any] = Registry("optimizer")
# Plasticity tools, in the order their hooks run (a tool registered later runs after the ones before it).
TOOLS: Registry[ToolSpec[Any]] = Registry("plasticity tool")
