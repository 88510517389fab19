"""Shared fixtures: a CLI runner and a reader of TensorBoard scalars."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nested_ac.cli import main

torch.set_num_threads(1)

# A few thousand steps of PPO: small rollouts and few epochs, and no report of its own, keep each test run
# to a few seconds.
FAST = [
    "--no-progress",
    "--set",
    "ppo.n_steps=128",
    "--set",
    "ppo.batch_size=128",
    "--set",
    "ppo.n_epochs=2",
    "--set",
    "report=false",
]


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run ``nested-ac ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's TensorBoard event files, read in name (= creation) order and joined,
    as (step, value) lists: what TensorBoard shows for the run."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(
                (event.step, event.value) for event in accumulator.Scalars(tag)
            )
    return scalars
