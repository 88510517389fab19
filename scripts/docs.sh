#!/usr/bin/env bash
# Set-up, then build the documentation site (MkDocs, Material theme, API pages from the docstrings) into
# site/ with --strict: a warning (a broken link or anchor, a page missing from the nav, an API page that
# cannot be built) fails the build. `.venv/bin/mkdocs serve` shows the site while you edit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
NO_MKDOCS_2_WARNING=1 exec .venv/bin/mkdocs build --strict "$@"
