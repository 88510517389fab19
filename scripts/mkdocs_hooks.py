"""MkDocs hooks (mkdocs.yml's ``hooks:``) for the documentation site.

pyproject.toml installs the folders ``envs/`` and ``agents/`` as ``nested_ac.envs`` and
``nested_ac.agents`` (setuptools' package-dir); griffe, which reads the source instead of importing it,
looks for them inside ``nested_ac/``. When mkdocs starts, before mkdocstrings reads its configuration,
:func:`on_startup` lays out ``build/api/nested_ac/`` as the installed package looks (links to every entry
of ``nested_ac/``, plus ``envs`` and ``agents``); mkdocs.yml points mkdocstrings' search path there.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As pyproject.toml's [tool.setuptools.package-dir] maps them.
PACKAGE_DIRS = {"envs": ROOT / "envs", "agents": ROOT / "agents"}
SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc):(?=<code>)")


def on_startup(**kwargs) -> None:
    package = ROOT / "build" / "api" / "nested_ac"
    shutil.rmtree(package.parent, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in (ROOT / "nested_ac").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_DIRS.items():
        (package / name).symlink_to(folder)


def on_page_content(html: str, **kwargs) -> str:
    """The docstrings name objects with Sphinx roles (``:class:`Name```); drop the role, keep the code."""
    return SPHINX_ROLE.sub("", html)
