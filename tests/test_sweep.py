"""Experiment files, the local process-pool sweep with resume, and the Ray backend on a local instance."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nested_ac.experiments import EXPERIMENTS
from nested_ac.sweep import load_experiment, run_status
from tests.conftest import read_scalars

TINY = """
name: tiny
steps: 512
seeds: [0, 1]
base:
  env: {id: nested_ac/PermutedCartPole-v0, n_envs: 2, schedule: {every: 256}}
  ppo: {n_steps: 64, batch_size: 64, n_epochs: 1}
  checkpoint: {every: 0}
variants:
  - name: adam
  - name: nested
    agent: nested-ppo
    set: {nested.levels: 2}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_experiment_expands_variants_times_seeds(tmp_path):
    experiment = load_experiment(write(tmp_path, TINY), tmp_path / "sweep")
    assert [(r.variant, r.seed) for r in experiment.runs] == [
        ("adam", 0),
        ("adam", 1),
        ("nested", 0),
        ("nested", 1),
    ]
    adam, nested = experiment.runs[0].config, experiment.runs[3].config
    assert (adam.agent, nested.agent, nested.seed, nested.steps) == ("ppo", "nested-ppo", 1, 512)
    assert nested.env.schedule.every == 256 and nested.ppo.n_steps == 64
    assert experiment.runs[3].run_dir == tmp_path / "sweep" / "nested" / "seed1"


SUITE = TINY.replace(
    "variants:",
    """worlds:
  - name: cartpole
  - name: acrobot
    set: {env.id: nested_ac/PermutedAcrobot-v0, env.schedule.every: 128, ppo.n_steps: 32}
variants:""",
)


def test_an_experiment_with_worlds_runs_every_variant_in_every_world(tmp_path):
    experiment = load_experiment(write(tmp_path, SUITE), tmp_path / "sweep")
    assert [(r.variant, r.seed) for r in experiment.runs] == [
        (f"{world}/{variant}", seed)
        for world in ("cartpole", "acrobot")
        for variant in ("adam", "nested")
        for seed in (0, 1)
    ]
    runs = {(r.variant, r.seed): r for r in experiment.runs}
    cartpole, acrobot = runs["cartpole/nested", 1], runs["acrobot/nested", 1]
    assert cartpole.config.env.id == "nested_ac/PermutedCartPole-v0"
    assert cartpole.config.env.schedule.every == 256
    # the world's keys replace the base's; the variant's own keys apply on top, the same in every world
    assert acrobot.config.env.id == "nested_ac/PermutedAcrobot-v0"
    assert acrobot.config.env.schedule.every == 128
    assert acrobot.config.ppo.n_steps == 32 and acrobot.config.ppo.batch_size == 64
    assert acrobot.config.agent == cartpole.config.agent == "nested-ppo"
    assert acrobot.config.nested.levels == cartpole.config.nested.levels == 2
    assert acrobot.run_dir == tmp_path / "sweep" / "acrobot" / "nested" / "seed1"


@pytest.mark.parametrize(
    "change, message",
    [
        (("  - name: acrobot\n", "  - name: cartpole\n"), "duplicate world name 'cartpole'"),
        (("  - name: acrobot\n", "  - nam: acrobot\n"), "world #2 needs a 'name'"),
        ((SUITE[SUITE.index("worlds:") : SUITE.index("variants:")], "worlds: []\n"), "'worlds' must be"),
        (("env.schedule.every: 128", "env.schedule.evry: 128"), "unknown config key 'env.schedule.evry'"),
    ],
)
def test_bad_worlds_name_the_problem(tmp_path, cli, change, message):
    path = write(tmp_path, SUITE.replace(*change))
    code, _, err = cli("sweep", str(path), "--sweep-dir", str(tmp_path / "sweep"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (("    agent: nested-ppo", "    agent: nested-ppp"), "variant 'nested': unknown agent 'nested-ppp'"),
        (("seeds: [0, 1]", "seeds: []"), "'seeds' must be a non-empty list of integers"),
        (("seeds: [0, 1]\n", ""), "'seeds' must be a non-empty list of integers"),
        (("seeds: [0, 1]", "seeds: [1, 1]"), "'seeds' has duplicates"),
        (("  - name: nested", "  - name: adam"), "duplicate variant name 'adam'"),
        (("    set: {nested.levels: 2}", "    set: {nested.levls: 2}"), "unknown config key 'nested.levls'"),
        (("    agent: nested-ppo", "    agnt: nested-ppo"), "variant 'nested' has unknown keys ['agnt']"),
        (("name: tiny", "nme: tiny"), "unknown experiment keys ['nme']"),
        (("  - name: nested\n", "  - name: nested\n    preset: upgd\n"), "unknown preset 'upgd'"),
        (("seeds: [0, 1]", "seeds: [-1]"), "'seeds' must be a non-empty list of integers in 0 … 4294967295"),
        (("seeds: [0, 1]", "seeds: [true]"), "'seeds' must be a non-empty list of integers"),
        (("  - name: nested", "  - name: ../escape"), "a variant's name must be a single directory name"),
        (("  - name: nested", "  - name: a/b"), "a variant's name must be a single directory name"),
        (("name: tiny", "name: ../escape"), "the experiment's name must be a single directory name"),
    ],
)
def test_bad_experiment_files_name_the_problem(tmp_path, cli, change, message):
    path = write(tmp_path, TINY.replace(*change))
    code, _, err = cli("sweep", str(path), "--sweep-dir", str(tmp_path / "sweep"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["experiment.yaml"]  # nothing, anywhere


def test_an_experiment_name_cannot_escape_from_runs(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, TINY.replace("name: tiny", "name: ../../escape"))
    code, _, err = cli("sweep", "experiment.yaml")
    assert code == 2 and "the experiment's name must be a single directory name" in err
    assert sorted(p.name for p in tmp_path.parent.rglob("*escape*")) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["experiment.yaml"]


def test_sweep_runs_everything_then_skips_finished_runs(tmp_path, cli):
    path = write(tmp_path, TINY)
    code, out, err = cli("sweep", str(path), "--sweep-dir", str(tmp_path / "sweep"), "--workers", "2")
    assert code == 0, err
    assert "4 runs, 0 already finished, 4 to run" in out
    experiment = load_experiment(path, tmp_path / "sweep")
    assert all(run_status(spec) == "done" for spec in experiment.runs)
    marker = experiment.runs[0].run_dir / "model.zip"
    before = marker.stat().st_mtime_ns
    code, out, _ = cli("sweep", str(path), "--sweep-dir", str(tmp_path / "sweep"))
    assert code == 0 and "4 runs, 4 already finished, 0 to run" in out
    assert marker.stat().st_mtime_ns == before
    assert sorted(p.name for p in (tmp_path / "sweep" / "adam").iterdir()) == ["seed0", "seed1"]


def test_a_sweep_over_worlds_reports_on_every_world_in_its_own_directory(tmp_path, cli):
    from nested_ac.dashboard import EXPERIMENT_TAG, written_tags

    sweep = tmp_path / "sweep"
    code, out, err = cli("sweep", str(write(tmp_path, SUITE)), "--sweep-dir", str(sweep), "--workers", "2")
    assert code == 0, err
    assert f"report written to {sweep / 'report' / 'report.md'}" in out
    report = (sweep / "report" / "report.md").read_text()
    sections = {line for line in report.splitlines() if line.startswith("## ")}
    assert sections == {"## PermutedCartPole-v0", "## PermutedAcrobot-v0", "## Across worlds"}
    assert EXPERIMENT_TAG in written_tags(sweep) and not (sweep / "cartpole" / "report").exists()
    assert not any(sweep.glob("cartpole/events.out.tfevents.*"))


def test_sweep_resumes_an_interrupted_run(tmp_path, cli):
    path = write(tmp_path, TINY.replace("checkpoint: {every: 0}", "checkpoint: {every: 256}"))
    spec = load_experiment(path, tmp_path / "sweep").runs[0]
    from nested_ac.train import train

    train(spec.config)
    (spec.run_dir / "model.zip").unlink()  # as if the run had died after its checkpoints
    assert run_status(spec) == "resume"
    code, out, err = cli("sweep", str(path), "--sweep-dir", str(tmp_path / "sweep"), "--workers", "1")
    assert code == 0, err
    assert "3 already finished" not in out and run_status(spec) == "done"
    assert sorted(p.name for p in spec.run_dir.parent.iterdir()) == ["seed0", "seed1"]


@pytest.mark.parametrize(
    "signum, to_group",
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM-to-the-sweep-process", "Ctrl-C-to-the-terminal-group"],
)
def test_a_signal_stops_the_whole_sweep_and_leaves_its_runs_resumable(tmp_path, signum, to_group):
    long = TINY.replace("steps: 512", "steps: 200_000").replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
    path = write(tmp_path, long.replace("checkpoint: {every: 0}", "checkpoint: {every: 1024}"))
    command = [sys.executable, "-m", "nested_ac.cli", "sweep", str(path), "--sweep-dir", str(tmp_path / "s")]
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job: a group signal spares pytest
    )
    runs = load_experiment(path, tmp_path / "s").runs
    deadline = time.monotonic() + 120
    while not all(run_status(spec) == "resume" for spec in runs[:2]) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (os.killpg if to_group else os.kill)(process.pid, signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "sweep interrupted" in err and "run the same command again" in err
    assert out.count("checkpoint written") == 2 and "FAILED" not in out
    assert [run_status(spec) for spec in runs[:2]] == ["resume", "resume"]
    assert not any(spec.run_dir.exists() for spec in runs[2:])  # no run started after the signal
    assert not processes_mentioning(str(tmp_path / "s"))  # no worker left behind


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (pool workers share their parent's)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def test_ray_backend_on_a_local_instance(tmp_path, cli):
    path = write(tmp_path, TINY.replace("seeds: [0, 1]", "seeds: [0]"))
    code, out, err = cli(
        "sweep", str(path), "--sweep-dir", str(tmp_path / "sweep"), "--backend", "ray", "--workers", "2"
    )
    assert code == 0, err + out
    assert all(run_status(spec) == "done" for spec in load_experiment(path, tmp_path / "sweep").runs)


def test_unknown_backend(tmp_path, cli):
    code, _, err = cli(
        "sweep", str(write(tmp_path, TINY)), "--sweep-dir", str(tmp_path / "s"), "--backend", "k8s"
    )
    assert code == 2 and "unknown backend 'k8s'; valid choices: local, ray" in err


def test_a_variant_starts_from_its_preset_then_base_and_set_override_it(tmp_path):
    text = TINY.replace(
        "  - name: adam\n", "  - name: adam\n    preset: upgd-ppo\n    set: {ppo.learning_rate: 1.0e-3}\n"
    )
    text = text.replace("ppo: {n_steps: 64,", "ppo: {n_steps: 64, learning_rate: 5.0e-4,")
    adam, _, nested, _ = (run.config for run in load_experiment(write(tmp_path, text), tmp_path / "s").runs)
    assert adam.optimizer.name == "upgd" and adam.optimizer.weight_decay == 1.0e-3  # from the preset
    assert adam.ppo.learning_rate == 1.0e-3 and nested.ppo.learning_rate == 5.0e-4  # set > base > preset
    assert nested.optimizer.name == "adam"


def test_shipped_experiments_are_listed_and_run_by_name(tmp_path, cli, monkeypatch):
    code, out, _ = cli("list", "experiments")
    assert code == 0
    for name in ("collapse", "slippery-ant"):
        assert name in EXPERIMENTS.names() and f"{name}  " in out
    monkeypatch.chdir(tmp_path)
    experiment = load_experiment("collapse")
    assert experiment.runs[0].run_dir == Path("runs/collapse/ppo-adam/seed0")
    code, _, err = cli("sweep", "colapse")
    assert code == 2 and "unknown experiment 'colapse'; valid choices: collapse" in err
    code, _, err = cli("sweep", "missing.yaml")
    assert code == 2 and "no experiment file 'missing.yaml'; shipped experiments: collapse" in err


# What each variant of a shipped experiment may change relative to its first variant (PPO with Adam):
# its own intervention (with its tuned settings) and nothing else; and the experiment's seeds.
SLIPPERY_ANT_INTERVENTIONS = {
    "ppo-proper-adam": ("optimizer.betas",),
    "ppo-l2": ("optimizer.betas", "optimizer.l2"),
    "ppo-cbp": ("cbp.", "optimizer.betas", "optimizer.l2"),
    "ppo-upgd": ("optimizer.", "ppo.learning_rate"),  # UPGD's settings; its lr is the shared lr x 2
}
SHIPPED = {
    "collapse": (
        set(range(10)),
        {
            "ppo-cbp": ("cbp.",),
            "ppo-upgd": ("optimizer.", "ppo.learning_rate"),
            "nested-ppo": ("agent", "nested."),
            "ppo-shrink-perturb": ("shrink_perturb.",),
            "ppo-l2-init": ("l2_init.",),
        },
    ),
    "slippery-ant": (set(range(5)), SLIPPERY_ANT_INTERVENTIONS),
}


def _flat(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "kwargs":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_experiment_variants_differ_only_in_their_intervention(name, tmp_path):
    experiment = load_experiment(name, tmp_path)
    seeds, interventions = SHIPPED[name]
    assert {run.seed for run in experiment.runs} == seeds
    by_variant = {run.variant: run.config for run in experiment.runs if run.seed == 0}
    assert list(by_variant) == ["ppo-adam", *interventions]
    baseline = _flat(by_variant["ppo-adam"].to_dict())
    assert baseline["agent"] == "ppo" and baseline["optimizer.name"] == "adam"
    for variant, allowed in interventions.items():
        config = _flat(by_variant[variant].to_dict())
        changed = {key for key in config if config[key] != baseline[key] and key not in ("run_dir",)}
        assert changed, f"{variant} is the baseline"
        assert all(key.startswith(allowed) for key in changed), f"{variant} also changes {changed}"
    upgd = by_variant["ppo-upgd"]
    assert upgd.ppo.learning_rate == 2 * by_variant["ppo-adam"].ppo.learning_rate


def test_the_suite_runs_collapses_variants_exactly_in_every_world(tmp_path):
    # One setting per intervention across the suite: each world's run differs from collapse's only in the env.
    collapse_runs = load_experiment("collapse", tmp_path).runs
    collapse = {(run.variant, run.seed): _flat(run.config.to_dict()) for run in collapse_runs}
    suite = load_experiment("collapse-suite", tmp_path).runs
    worlds = {"PermutedCartPole", "RemappedCartPole", "RemappedAcrobot"}
    assert {run.variant.split("/")[0] for run in suite} == worlds
    assert len(suite) == len(worlds) * len(collapse)
    for run in suite:
        world, variant = run.variant.split("/")
        config = _flat(run.config.to_dict())
        original = collapse[(variant, run.seed)]
        changed = {key for key in config if config[key] != original[key]} - {"run_dir"}
        assert changed <= {"env.id"}, f"{run.variant}: {changed}"
        assert config["env.id"] == f"nested_ac/{world}-v0"


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "path",
    [
        *sorted((REPO / "examples").glob("*.yaml")),
        *sorted((REPO / "bench" / "collapse_search").glob("*.yaml")),
        *sorted((REPO / "bench" / "headline_tuning").glob("*.yaml")),
        *sorted((REPO / "bench" / "suite_search").glob("*.yaml")),
    ],  # bench/world_search's files need its plug-in worlds, which would stay registered in this process
    ids=lambda path: f"{path.parent.name}/{path.name}",
)
def test_experiment_files_in_the_repository_are_valid(path, tmp_path):
    assert load_experiment(path, tmp_path).runs


def test_world_search_files_are_valid_with_their_plugin_worlds(tmp_path):
    # In a child process, as the folder's README runs them (PYTHONPATH=bench/world_search).
    folder = REPO / "bench" / "world_search"
    check = "; ".join(
        [
            "import sys",
            "from nested_ac.sweep import load_experiment",
            "print(sum(len(load_experiment(p, sys.argv[1]).runs) for p in sys.argv[2:]))",
        ]
    )
    files = sorted(str(p) for p in folder.glob("*.yaml"))
    env = {**os.environ, "PYTHONPATH": str(folder)}
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path), *files], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert len(files) == 2 and int(done.stdout) == 8 + 4  # search-1: 4 worlds x 2 seeds; search-2: 4 seeds


def start_sweep(path: Path, sweep_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "nested_ac.cli", "sweep", str(path), "--sweep-dir", str(sweep_dir)]
    return subprocess.Popen(
        [*command, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    "signum, to_worker, code",
    [(signal.SIGHUP, False, 129), (signal.SIGKILL, False, -signal.SIGKILL), (signal.SIGKILL, True, 1)],
    ids=["SIGHUP-to-the-sweep", "SIGKILL-to-the-sweep", "SIGKILL-to-a-worker"],
)
def test_a_hangup_or_a_killed_process_leaves_no_worker_and_a_rerun_finishes_every_run_once(
    tmp_path, cli, signum, to_worker, code
):
    text = TINY.replace("steps: 512", "steps: 4096").replace(
        "checkpoint: {every: 0}", "checkpoint: {every: 512}"
    )
    path, sweep_dir = write(tmp_path, text), tmp_path / "s"
    runs = load_experiment(path, sweep_dir).runs
    process = start_sweep(path, sweep_dir)
    deadline = time.monotonic() + 120
    while not all(run_status(spec) == "resume" for spec in runs[:2]) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [pid for pid in processes_mentioning(str(sweep_dir)) if pid != process.pid]
    os.kill(workers[0] if to_worker else process.pid, signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    if to_worker:
        assert "a worker process of the sweep died" in err
    deadline = time.monotonic() + 10
    while processes_mentioning(str(sweep_dir)):  # the workers checkpoint and stop, then exit
        assert time.monotonic() < deadline, "a worker outlived its sweep"
        time.sleep(0.05)
    assert [run_status(spec) for spec in runs[:2]] == ["resume", "resume"]

    code, out, err = cli("sweep", str(path), "--sweep-dir", str(sweep_dir), "--workers", "2")
    assert code == 0, err
    assert all(run_status(spec) == "done" for spec in runs)
    for spec in runs:
        scalars = read_scalars(spec.run_dir)
        assert scalars["task/index"][-1][0] >= 4096 - 128
        for tag, points in scalars.items():
            steps = [step for step, _ in points]
            assert len(steps) == len(set(steps)), f"{spec.run_dir}: {tag} has a step twice"


HOLD = """
import sys, time
from nested_ac.rundir import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_sweep_lists_runs_held_elsewhere_and_does_not_start_them(tmp_path, cli):
    path, sweep_dir = write(tmp_path, TINY.replace("seeds: [0, 1]", "seeds: [0]")), tmp_path / "s"
    held = load_experiment(path, sweep_dir).runs[0]
    held.run_dir.mkdir(parents=True)
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(held.run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline() == "held\n"
        code, out, err = cli("sweep", str(path), "--sweep-dir", str(sweep_dir), "--workers", "1")
    finally:
        other.kill()
        other.wait()
    assert code == 1
    assert "2 runs, 0 already finished, 1 running elsewhere, 1 to run" in out
    assert f"run not finished: {held.run_dir}: running elsewhere (process {other.pid}); not started" in err
    assert [p.name for p in held.run_dir.iterdir()] == [".lock"]  # nothing written
    code, out, err = cli("sweep", str(path), "--sweep-dir", str(sweep_dir))
    assert code == 0 and "2 runs, 1 already finished, 1 to run" in out, err


def test_closing_the_terminal_stops_the_sweep_like_sighup_and_leaves_no_worker(tmp_path):
    text = TINY.replace("steps: 512", "steps: 200_000").replace(
        "checkpoint: {every: 0}", "checkpoint: {every: 512}"
    )
    path, sweep_dir = write(tmp_path, text), tmp_path / "s"
    runs = load_experiment(path, sweep_dir).runs
    terminal, side = pty.openpty()

    def own_session_on_the_terminal() -> None:  # like a login shell's job: the pty is its terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    command = [sys.executable, "-m", "nested_ac.cli", "sweep", str(path), "--sweep-dir", str(sweep_dir)]
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        stdin=side,
        stdout=side,
        stderr=side,
        preexec_fn=own_session_on_the_terminal,
    )
    os.close(side)
    hang_up = threading.Event()

    def terminal_window() -> None:  # shows the output, until the window is closed
        while not hang_up.is_set():
            if select.select([terminal], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    os.read(terminal, 65536)
        os.close(terminal)

    window = threading.Thread(target=terminal_window)
    window.start()
    deadline = time.monotonic() + 120
    while not all(run_status(spec) == "resume" for spec in runs[:2]) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    hang_up.set()
    window.join()
    assert process.wait(timeout=60) == 129
    deadline = time.monotonic() + 10
    while processes_mentioning(str(sweep_dir)):
        assert time.monotonic() < deadline, "a worker outlived its sweep"
        time.sleep(0.05)
    assert [run_status(spec) for spec in runs[:2]] == ["resume", "resume"]
