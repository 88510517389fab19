"""The table of every configuration key, generated from :mod:`nested_ac.config`: each key's type (its
annotation), default (as YAML, the way ``--set`` and config files write it) and meaning (the docstring
under its field). ``docs/config-keys.md`` is this module's output, so it cannot drift from the code; a test
checks that it is current. Remake it with ``.venv/bin/python -m nested_ac.config_keys > docs/config-keys.md``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from typing import Any, NamedTuple

import yaml

from nested_ac import config
from nested_ac.config import RunConfig


class Key(NamedTuple):
    """One configuration key: its dotted name, type, default (YAML) and meaning."""

    name: str
    type: str
    default: str
    meaning: str


def field_docs() -> dict[str, dict[str, str]]:
    """Class name → field name → the docstring written under the field in :mod:`nested_ac.config`."""
    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(inspect.getsource(config)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = docs.setdefault(node.name, {})
        for statement, after in zip(node.body, node.body[1:], strict=False):
            documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if isinstance(statement, ast.AnnAssign) and documented and isinstance(after.value.value, str):
                fields[statement.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000).strip()
    return text.removesuffix("...").strip()


def _type(annotation: str) -> str:
    """``int | None`` as ```int`` or ``null``` (no ``|`` in a table cell), in Markdown."""
    return " or ".join("`null`" if part == "None" else f"`{part}`" for part in annotation.split(" | "))


def _markdown(docstring: str) -> str:
    """A docstring's reStructuredText literals as Markdown code, ``|`` escaped for a table cell."""
    return re.sub(r"``([^`]+)``", r"`\1`", docstring).replace("|", "\\|")


def keys(cls: type = RunConfig, prefix: str = "") -> list[Key]:
    """Every key of ``cls`` and its sections, in the order the dataclasses declare them; a ValueError
    names a key without a docstring."""
    docs = field_docs()
    found = []
    for item in dataclasses.fields(cls):
        if item.metadata.get("internal"):
            continue
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        if dataclasses.is_dataclass(default):
            found += keys(type(default), f"{prefix}{item.name}.")
            continue
        meaning = docs.get(cls.__name__, {}).get(item.name)
        if meaning is None:
            raise ValueError(f"config key {prefix}{item.name} has no docstring in nested_ac/config.py")
        found.append(Key(prefix + item.name, _type(str(item.type)), _yaml(default), _markdown(meaning)))
    return found


def page() -> str:
    """docs/config-keys.md: one table per section, the top-level keys first."""
    sections: dict[str, list[Key]] = {"": []}  # the top-level keys first
    for key in keys():
        section = key.name.split(".")[0] if "." in key.name else ""
        sections.setdefault(section, []).append(key)
    lines = [
        "# Every configuration key",
        "",
        "<!-- Generated from nested_ac/config.py by `.venv/bin/python -m nested_ac.config_keys > "
        "docs/config-keys.md`; a test checks that it is current: edit the docstrings there. -->",
        "",
        "Every key of a run's configuration, with its type, default and meaning, generated from the "
        "docstrings of `nested_ac/config.py`. Set a key with `--set KEY=VALUE` (the value is read as YAML), "
        "in a `--config` file, or in a sweep's `base:` or `set:`; precedence, and the flags that set keys: "
        "[Command line and configuration](cli-and-config.md). A plug-in tool adds its own section "
        "([Write your own tool](write-your-own-tool.md)).",
    ]
    for section, rows in sections.items():
        if section:
            title, summary = f"`{section}`", inspect.cleandoc(type(RunConfig().section(section)).__doc__)
        else:
            title, summary = "Top level", "The keys outside any section."
        lines += ["", f"## {title}", "", _markdown(" ".join(summary.split())), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += [f"| `{k.name}` | {k.type} | `{k.default}` | {k.meaning} |" for k in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(page(), end="")
