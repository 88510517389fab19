"""The ``nested-ac`` command line: ``train`` and ``list``."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nested_ac.errors import ConfigError
from nested_ac.rundir import REPORT_DIR

LIST_TOPICS = ("envs", "agents", "optimizers", "tools", "presets", "experiments")
NUMERICAL_FAULT_EXIT = 3
DISK_FULL_EXIT = 4

# Command-line flag → dotted config key; each flag is validated by the config's own type checks.
TRAIN_FLAGS = {
    "env": "env.id",
    "agent": "agent",
    "optimizer": "optimizer.name",
    "steps": "steps",
    "seed": "seed",
    "n_envs": "env.n_envs",
    "run_dir": "run_dir",
    "name": "name",
}


class _Formatter(argparse.HelpFormatter):
    """argparse's help text, wrapped without breaking a word at its hyphens (docs/cli-and-config.md stays
    one piece)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit code 2, and whose help keeps paths whole."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=_Formatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nested-ac", description="Continual RL on non-stationary Gymnasium environments.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train",
        help="train one agent",
        description="Train one agent. Every flag and the run directory: docs/cli-and-config.md; every config "
        "key (--set KEY=VALUE), with its type, default and meaning: docs/config-keys.md.",
    )
    train.add_argument("--env", help="Gymnasium id or module:EnvId (default nested_ac/PermutedCartPole-v0)")
    train.add_argument("--agent", help="agent name (nested-ac list agents; default ppo)")
    train.add_argument("--optimizer", help="optimizer name (nested-ac list optimizers; default adam)")
    train.add_argument("--steps", help="environment steps in total, over all copies")
    train.add_argument("--seed", help="run seed: networks, environments and tasks")
    train.add_argument("--n-envs", dest="n_envs", help="parallel environment copies")
    train.add_argument("--run-dir", dest="run_dir", help="parent directory of the run (default runs)")
    train.add_argument("--name", help="run name (default <agent>-<optimizer>-<env>-s<seed>)")
    train.add_argument("--preset", help="a shipped configuration to start from (nested-ac list presets)")
    train.add_argument("--config", help="YAML file with any subset of the configuration")
    train.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set ppo.n_epochs=4 (repeatable)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--cbp", action="store_true", help="continual backprop on (cbp.* keys under --set)")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its config.yaml (no other options)",
    )

    sweep = commands.add_parser(
        "sweep",
        help="run every (variant, seed) of an experiment",
        description="Run every (variant, seed) of an experiment file, then report on them: docs/sweeps.md.",
    )
    sweep.add_argument(
        "experiment",
        help="experiment YAML file (format: nested_ac/sweep.py) or the name of a shipped one "
        "(nested-ac list experiments)",
    )
    sweep.add_argument("--workers", type=int, help="parallel runs (default: the number of cores)")
    sweep.add_argument("--backend", default="local", help="local (process pool, default) or ray")
    sweep.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    sweep.add_argument("--sweep-dir", dest="sweep_dir", help="where the runs go (default runs/<name>)")

    report = commands.add_parser(
        "report",
        help="tables and plots of many runs",
        description="Report on runs or sweeps; what the table and figures show: docs/metrics-and-reports.md.",
    )
    report.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    report.add_argument("--out", help="output directory (default: <first path>/report)")
    report.add_argument("--reference", help="the group whose R_1 is R_ref (default: PPO with Adam)")
    report.add_argument(
        "--reps", type=int, default=10_000, help="bootstrap resamples per interval (default: 10000)"
    )

    listing = commands.add_parser(
        "list",
        help="list the available choices",
        description="List the available choices; your own envs, tools and agents: docs/environments.md, "
        "docs/write-your-own-tool.md.",
    )
    listing.add_argument("topic", choices=LIST_TOPICS)
    return parser


def _train(args: argparse.Namespace) -> int:
    from nested_ac.config import resolve_config
    from nested_ac.faults import NumericalFault
    from nested_ac.interrupts import TrainingInterrupted
    from nested_ac.presets import load_preset
    from nested_ac.rundir import DiskFull
    from nested_ac.train import resume, train

    overrides = {
        key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None
    }
    if args.no_progress:
        overrides["progress_bar"] = False
    if args.cbp:
        overrides["cbp.enabled"] = True
    preset = load_preset(args.preset) if args.preset is not None else None
    if args.resume is not None and (overrides or args.config or args.assignments or preset):
        raise ConfigError("--resume takes no other options: the run continues with its own config.yaml")
    try:
        result = (
            resume(args.resume)
            if args.resume is not None
            else train(resolve_config(args.config, overrides, args.assignments, preset))
        )
    except TrainingInterrupted as interrupt:
        print(f"nested-ac: {interrupt}", file=sys.stderr)
        return interrupt.exit_code
    except NumericalFault as fault:
        kept = f"; last good checkpoint: {fault.last_checkpoint}" if fault.last_checkpoint else ""
        print(f"nested-ac: numerical fault: {fault}{kept}", file=sys.stderr)
        return NUMERICAL_FAULT_EXIT
    except DiskFull as full:
        print(f"nested-ac: {full}", file=sys.stderr)
        return DISK_FULL_EXIT
    config = result.config
    past = (
        f" ({config.steps:,} asked; PPO trains whole rollouts of {config.ppo.n_steps * config.env.n_envs:,})"
        if result.steps != config.steps
        else ""
    )
    for note in result.summary["notes"]:
        print(f"nested-ac: note: {note}", file=sys.stderr)
    print(f"trained {result.steps:,} steps{past} in {result.seconds:.0f} s")
    print(learned(result.summary))
    if "windows" in result.summary:
        print(learned_windows(result.summary["windows"]))
    view = f"{tensorboard_command()} --logdir {result.run_dir.parent}"
    report = f", its report to {result.run_dir / REPORT_DIR / 'report.md'}" if config.report else ""
    print(f"run written to {result.run_dir}{report}  (view: {view})")
    return 0


SHOWN_TASKS = 8  # a run with more tasks shows the first and last few R_k


def learned(summary: dict) -> str:
    """What a finished run learned, in a line: R_k of each task (of the first and last few when there are
    many) and P_late, from its ``summary.json``."""
    R = ["—" if value is None else f"{value:.1f}" for value in summary["R"]]
    if len(R) == 1:
        return f"return at the end of the run (R_1): {R[0]}"
    if len(R) > SHOWN_TASKS:
        half = SHOWN_TASKS // 2
        R = [*R[:half], "…", *R[-half:]]
    p_late = summary["P_late"]
    tail = f"; P_late {p_late:.2f}" if p_late is not None else "; P_late —"
    return f"return at the end of each of {len(summary['R'])} tasks (R_k): {', '.join(R)}{tail}"


def learned_windows(windows: dict) -> str:
    """The windowed metrics of a finished run in a line: how many windows, P_w's late mean and the slide."""
    late, slide = windows["P_late"], windows["slide"]
    return (
        f"{len(windows['R'])} windows of {windows['window']:,} steps: late P_w "
        f"{'—' if late is None else f'{late:.2f}'} (against the first window), slide "
        f"{'—' if slide is None else f'{slide:.2f}'}"
    )


def tensorboard_command() -> str:
    """The ``tensorboard`` executable beside this Python (the venv's), as a path relative to the current
    directory where it lies below it; plain ``tensorboard`` if there is none."""
    executable = Path(sys.executable).with_name("tensorboard")
    if not executable.is_file():
        return "tensorboard"
    relative = Path(os.path.relpath(executable))
    return str(executable) if relative.parts[0] == ".." else str(relative)


def _sweep(args: argparse.Namespace) -> int:
    from nested_ac.sweep import SweepStopped, load_experiment, run_sweep

    if args.workers is not None and args.workers <= 0:
        raise ConfigError(f"--workers must be a positive integer, got {args.workers}")
    experiment = load_experiment(args.experiment, args.sweep_dir)
    try:
        failures = run_sweep(experiment, args.workers, args.backend, args.address)
    except SweepStopped as stop:
        print(f"nested-ac: {stop}", file=sys.stderr)
        return stop.exit_code
    for line in failures:
        print(f"nested-ac: run not finished: {line}", file=sys.stderr)
    from nested_ac.dashboard import add_report_images

    root = experiment.root
    report = _report_paths([root], None, None)
    add_report_images(root, Path(report))
    print(f"report written to {report}  (view: {tensorboard_command()} --logdir {root})")
    return 1 if failures else 0


def _report_paths(paths: list, out: str | None, reference: str | None, reps: int = 10_000) -> str:
    from nested_ac.report import write_report

    report = write_report(paths, out, reference, reps)
    for note in report.skipped:
        print(f"nested-ac: skipped: {note}", file=sys.stderr)
    for note in report.notes:
        print(f"nested-ac: note: {note}", file=sys.stderr)
    print("\n".join(report.table))
    print("\n".join(report.verdicts))
    return str(report.path)


def _list(topic: str) -> int:
    from nested_ac import (
        build,  # (importing it registers the agents, optimizers and tools)
        envs,
    )
    from nested_ac.experiments import EXPERIMENTS
    from nested_ac.presets import PRESETS
    from nested_ac.registry import AGENTS, OPTIMIZERS, TOOLS

    footer = ""
    if topic == "envs":
        rows = [
            (info.id, f"{info.changes}; {info.describe_schedule()}")
            for info in envs.NONSTATIONARY_ENVS.values()
        ]
        footer = (
            "Any other Gymnasium id (or module:EnvId) trains too; it is stationary unless it has set_task."
        )
    elif topic == "presets":
        rows = [(name, PRESETS.description(name)) for name in PRESETS.names()]
        footer = "Use one with: nested-ac train --preset NAME (flags, --config and --set override it)."
    elif topic == "experiments":
        rows = [(name, EXPERIMENTS.description(name)) for name in EXPERIMENTS.names()]
        footer = (
            "Run one with: nested-ac sweep NAME; the files are in "
            f"{EXPERIMENTS.directory} (copy one to change it)."
        )
    elif topic == "tools":
        rows = [(entry.name, entry.description) for entry in TOOLS]
        activations = ", ".join(build.ACTIVATIONS)
        footer = (
            f"Architectures: network.layer_norm, network.activation ({activations}): docs/architectures.md.\n"
            "Write your own: docs/write-your-own-tool.md (a module with one TOOLS.register call)."
        )
    else:
        registry = AGENTS if topic == "agents" else OPTIMIZERS
        rows = [(entry.name, entry.description) for entry in registry]
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    if footer:
        print(footer)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "report":
            print(f"report written to {_report_paths(args.paths, args.out, args.reference, args.reps)}")
            return 0
        return _sweep(args) if args.command == "sweep" else _list(args.topic)
    except ConfigError as error:
        print(f"nested-ac: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
