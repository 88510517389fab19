"""TensorBoard as the dashboard: a real ``tensorboard`` process serves a small sweep's custom-scalars layout,
HParams experiment and session groups, and report images; a resumed run keeps one layout and one session;
the progress bar stops at its total."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from nested_ac import callbacks, dashboard
from nested_ac.cli import main
from nested_ac.config import resolve_config
from nested_ac.interrupts import TrainingInterrupted
from nested_ac.train import resume, train
from tests.conftest import read_scalars
from tests.test_reliability import interrupt_at, small_config

SWEEP = """
name: dash
steps: 1024
seeds: [0, 1]
base:
  env: {id: nested_ac/PermutedCartPole-v0, n_envs: 2, schedule: {every: 256}}
  ppo: {n_steps: 64, batch_size: 64, n_epochs: 1}
  checkpoint: {every: 0}
  diagnostics: {every: 2}
variants:
  - name: adam
  - name: upgd-cbp
    optimizer: upgd
    set: {cbp.enabled: true, optimizer.log_every: 1}
  - name: nested
    agent: nested-ppo
"""
VARIANTS = {"adam", "upgd-cbp", "nested"}
PLASTICITY = "plasticity and interventions"
TENSORBOARD = Path(sys.executable).with_name("tensorboard")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dash")
    (root / "experiment.yaml").write_text(textwrap.dedent(SWEEP))
    code = main(
        ["sweep", str(root / "experiment.yaml"), "--sweep-dir", str(root / "sweep"), "--workers", "2"]
    )
    assert code == 0
    return root / "sweep"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A ``tensorboard`` process on the loopback interface, read over HTTP."""

    def __init__(self, logdir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        command = [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", port]
        self.process = subprocess.Popen(
            [*command, "--load_fast", "false", "--reload_interval", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def get(self, route: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + route, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def until(self, route: str, body: dict | None, ready, seconds: float = 60) -> dict:
        """The answer of ``route`` once ``ready(answer)``; fails after ``seconds`` (a bounded wait)."""
        deadline, answer = time.monotonic() + seconds, None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read().decode()
            try:
                answer = self.get(route, body)
                if ready(answer):
                    return answer
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"{route} not ready after {seconds} s; last answer: {answer}")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self.process.stderr.close()


@pytest.fixture
def served(sweep_dir):
    server = Server(sweep_dir)
    try:
        yield server
    finally:
        server.close()


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def test_tensorboard_serves_the_sweeps_layout_hparams_and_report_images(served):
    def titles(layout: dict) -> dict[str, list[str]]:
        return {c["title"]: [chart["title"] for chart in c.get("chart", [])] for c in layout["category"]}

    # Ready when every run is loaded: the charts of all three variants' interventions are there.
    interventions = {
        "UPGD: mean scaled utility per network",
        "UPGD: fraction of weights with utility > 0.5",
        "CBP: units replaced per layer",
        "CBP: mean unit age",
        "nested critics: gap to the next critic",
        "nested critics: churn on a fixed probe",
    }
    layout = served.until(
        "/data/plugin/custom_scalars/layout",
        None,
        lambda a: "category" in a and interventions <= set(titles(a).get(PLASTICITY, [])),
    )
    charts = titles(layout)
    assert list(charts) == ["continual", PLASTICITY] and all(charts.values())  # no empty section
    assert any("margin" in chart for category in layout["category"] for chart in category["chart"])
    # Merged over the runs: each intervention appears once, from the variants that use it.
    assert len(charts[PLASTICITY]) == len(set(charts[PLASTICITY]))
    assert "ReDo: units reset per network" not in charts[PLASTICITY]  # no variant uses ReDo
    # Each chart is of one scale: the return alone, the task index alone, P_k with its two lines.
    tags = {chart["title"]: chart for category in layout["category"] for chart in category["chart"]}
    (p_chart,) = [title for title in tags if title.startswith("P_k")]
    assert tags[p_chart]["multiline"]["tag"] == [
        "^continual/P$",
        "^continual/P_late$",
        "^continual/P_collapsed_at$",
        "^continual/P_sustained_at$",
    ]
    return_charts = [chart for title, chart in tags.items() if "episode/return" in json.dumps(chart)]
    assert return_charts and not any(
        "task/" in json.dumps(c) or "continual/" in json.dumps(c) for c in return_charts
    )

    experiment = served.until("/data/plugin/hparams/experiment", {"experimentName": ""}, lambda a: a)
    metrics = {m["name"]["tag"]: m["displayName"] for m in experiment["metricInfos"]}
    assert metrics == {
        "continual/R_1": "R_1",
        "continual/P_late": "P_late",
        "continual/slide": "slide",
        "continual/R_final": "final return",
    }
    columns = {h["name"] for h in experiment["hparamInfos"]}
    assert {"agent", "optimizer.name", "seed", "cbp.enabled", "steps"} <= columns
    assert "run_dir" not in columns and "name" not in columns

    request = {
        "experimentName": "",
        "allowedStatuses": ALL_STATUSES,
        "startIndex": 0,
        "sliceSize": 100,
        "includeMetrics": True,
        "aggregationType": "AGGREGATION_AVG",
    }
    answer = served.until(
        "/data/plugin/hparams/session_groups",
        request,
        lambda a: sum(len(g["sessions"]) for g in a.get("sessionGroups", [])) == 6,
    )
    groups = {g["name"]: g for g in answer["sessionGroups"]}
    assert set(groups) == VARIANTS  # one session group per variant, its seeds inside
    for name, group in groups.items():
        assert sorted(s["name"] for s in group["sessions"]) == [f"{name}/seed0", f"{name}/seed1"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert {"continual/R_1", "continual/P_late", "continual/R_final"} <= set(values)
    assert groups["upgd-cbp"]["hparams"]["optimizer.name"] == "upgd"
    assert groups["upgd-cbp"]["hparams"]["cbp.enabled"] is True
    assert groups["adam"]["hparams"]["cbp.enabled"] is False  # a key any variant changes: in every row
    assert groups["nested"]["hparams"]["agent"] == "nested-ppo"

    images = served.until("/data/plugin/images/tags", None, lambda a: "." in a)
    assert set(images["."]) == {"report/returns", "report/tasks", "report/diagnostics"}


def plugin_summaries(run_dir: Path) -> Counter:
    """How often each plugin summary (layout, HParams, image) occurs in ``run_dir``'s event files."""
    counts: Counter = Counter()
    for event_file in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(event_file)).Load():
            counts.update(v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name)
    return counts


def test_a_rerun_of_a_finished_sweep_writes_no_second_experiment_or_image(sweep_dir):
    before = plugin_summaries(sweep_dir)
    assert before[dashboard.EXPERIMENT_TAG] == 1 and before["report/returns"] == 1
    experiment = sweep_dir.parent / "experiment.yaml"
    assert main(["sweep", str(experiment), "--sweep-dir", str(sweep_dir)]) == 0
    assert plugin_summaries(sweep_dir) == before


def test_a_resumed_run_keeps_one_layout_and_one_hparams_session(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 2000, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        train(small_config(tmp_path, "run"))
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    resume(run_dir)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # the resume wrote its own file
    counts = plugin_summaries(run_dir)
    assert counts[dashboard.LAYOUT_TAG] == 1
    assert counts[dashboard.SESSION_TAG] == 1
    scalars = read_scalars(run_dir)
    for tag in dashboard.METRICS:
        assert len(scalars[tag]) == 1 and scalars[tag][0][0] == 6144, tag


def test_hparams_record_the_changes_from_the_defaults(tmp_path):
    config = resolve_config(overrides={"ppo.n_epochs": 4, "cbp.enabled": True, "run_dir": str(tmp_path)})
    values = dashboard.hparams(config)
    assert values == {
        "agent": "ppo",
        "optimizer.name": "adam",
        "seed": 0.0,
        "ppo.n_epochs": 4.0,
        "cbp.enabled": True,
    }  # the env's own schedule defaults, filled in at training, do not count as changes
    assert dashboard.hparams(config, ["network.actor"])["network.actor"] == "[64, 64]"


def test_a_plain_run_gets_no_intervention_charts_and_no_empty_section(tmp_path):
    from stable_baselines3.common.env_util import make_vec_env

    from nested_ac.build import build_agent

    config = resolve_config(overrides={"diagnostics.every": 0, "run_dir": str(tmp_path)})
    env = make_vec_env("CartPole-v1", n_envs=1)
    layout = dashboard.layout(build_agent(config, env), switching=False)
    env.close()
    assert list(layout) == ["continual", PLASTICITY] and all(layout.values())
    assert not any(title.startswith(("task", "P_k", "run-level")) for title in layout["continual"])
    assert list(layout[PLASTICITY]) == ["gradient norm before clipping"]


def test_a_lone_run_has_its_report_figures_in_its_images_tab_and_p_k_its_lines(tmp_path):
    result = train(small_config(tmp_path, "lone", report=True, **{"checkpoint.every": 0}))
    run_dir = result.run_dir
    counts = plugin_summaries(run_dir)
    assert {tag: counts[tag] for tag in ("report/tasks", "report/returns", "report/diagnostics")} == {
        "report/tasks": 1,
        "report/returns": 1,
        "report/diagnostics": 1,
    }
    assert (run_dir / "report" / "report.md").is_file()
    scalars = read_scalars(run_dir)
    ends = [step for step, _ in scalars["continual/P"]]
    assert len(ends) == 7  # 6144 steps, a task every 1000
    assert scalars["continual/P_collapsed_at"] == [(step, pytest.approx(0.7)) for step in ends]
    assert scalars["continual/P_sustained_at"] == [(step, pytest.approx(0.9)) for step in ends]


def test_the_progress_bar_stops_at_its_total_and_the_final_line_states_the_steps(tmp_path, monkeypatch, cli):
    seen = []
    monkeypatch.setattr(
        callbacks.ProgressBar,
        "_on_training_end",
        lambda self: (seen.append((self.pbar.n, self.pbar.total)), self.pbar.close()),
    )
    result = train(small_config(tmp_path, "bar", steps=300, progress_bar=True))
    assert result.steps == 384  # three whole rollouts of 2 x 64 steps
    assert seen == [(300, 300)]
    code, out, err = cli(
        "train",
        "--no-progress",
        "--steps",
        "300",
        "--n-envs",
        "2",
        "--run-dir",
        str(tmp_path),
        "--name",
        "b",
        "--set",
        "ppo.n_steps=64",
        "--set",
        "ppo.batch_size=64",
        "--set",
        "ppo.n_epochs=1",
    )
    assert code == 0, err
    assert "trained 384 steps (300 asked; PPO trains whole rollouts of 128) in " in out
