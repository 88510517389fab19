"""Experiments shipped with the package: sweep files ``nested-ac sweep NAME`` runs by name."""

from __future__ import annotations

from pathlib import Path

from nested_ac.shipped import ShippedFiles

EXPERIMENTS = ShippedFiles("experiment", Path(__file__).parent)
