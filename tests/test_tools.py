"""The plasticity-tool registry: the built-in tools as registered, the networks tools may change, the
report's baseline, and docs/write-your-own-tool.md's worked example run verbatim from a fresh folder."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import layout_pb2

from nested_ac import build
from nested_ac.agents import ContinualPPO
from nested_ac.config import RunConfig
from nested_ac.dashboard import LAYOUT_TAG
from nested_ac.diagnostics import Diagnostics, UtilityLogger
from nested_ac.forgetting import GradientProjection, NaturalContinualLearning, SoftMasking
from nested_ac.plasticity import ContinualBackprop, L2Init, ReDo, ShrinkPerturb
from nested_ac.registry import TOOLS
from nested_ac.report import _is_baseline
from nested_ac.train import make_env
from tests.conftest import read_scalars
from tests.test_packaging import SCRIPT, _run

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "write-your-own-tool.md"


def everything_on() -> RunConfig:
    config = RunConfig()
    config.optimizer.name = "upgd"
    config.cbp.enabled = config.redo.enabled = True
    config.shrink_perturb.mode, config.l2_init.coef = "step", 1e-3
    config.spg.enabled = config.projection.enabled = config.ncl.enabled = True
    return config


def test_every_built_in_tool_is_registered_and_built_in_hook_order():
    assert [type(tool) for tool in build.build_tools(everything_on())] == [
        Diagnostics,
        UtilityLogger,
        ContinualBackprop,
        ShrinkPerturb,
        L2Init,
        ReDo,
        SoftMasking,
        GradientProjection,
        NaturalContinualLearning,
    ]
    assert [type(tool) for tool in build.build_tools(RunConfig())] == [Diagnostics]
    assert {entry.target.section for entry in TOOLS} >= {"cbp", "shrink_perturb", "l2_init", "redo", "ncl"}


def test_the_report_asks_the_registry_which_runs_are_baselines():
    assert _is_baseline(RunConfig())  # diagnostics observe only
    config = RunConfig()
    config.spg.enabled = True
    assert not _is_baseline(config)
    config = RunConfig()
    config.diagnostics.every = 0
    assert _is_baseline(config)


def test_trainable_networks_name_the_actor_and_critic_and_leave_log_std_out():
    config = RunConfig(seed=0)
    config.env.id, config.env.n_envs, config.diagnostics.every = "Pendulum-v1", 1, 0
    model = build.build_agent(config, make_env(config))
    networks = model.trainable_networks()
    assert list(networks) == ["actor", "critic"]
    touched = {id(p) for network in networks.values() for p in network.parameters()}
    assert id(model.policy.log_std) not in touched
    assert touched | {id(model.policy.log_std)} == {id(p) for p in model.policy.parameters()}


def test_frozen_outer_critics_are_not_trainable():
    config = RunConfig(seed=0, steps=256, agent="nested-ppo")
    config.env.n_envs, config.ppo.n_steps, config.ppo.batch_size, config.ppo.n_epochs = 2, 64, 64, 1
    config.nested.levels, config.nested.freeze_outer_after = 3, 128
    model = build.build_agent(config, make_env(config))
    assert list(model.trainable_networks()) == ["actor", "critic_1", "critic_2", "critic_3"]
    model.learn(256)
    assert list(model.trainable_networks()) == ["actor", "critic_1"]


def _block(language: str, first_line: str) -> str:
    for block in re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), re.DOTALL):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no {language} block starting with {first_line!r} in {PAGE.name}")


def _layout(run_dir: Path) -> dict[str, list[str]]:
    """The run's custom-scalars layout: category title → chart titles."""
    for event_file in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(event_file)).Load():
            for value in event.summary.value:
                if value.tag == LAYOUT_TAG:
                    layout = layout_pb2.Layout.FromString(value.tensor.string_val[0])
                    return {c.title: [chart.title for chart in c.chart] for c in layout.category}
    raise AssertionError(f"no layout in {run_dir}")


def test_the_pages_worked_example_trains_with_its_tool_from_a_fresh_folder(tmp_path):
    (tmp_path / "weight_clip.py").write_text(_block("python", '"""Weight clipping'))
    command = shlex.split(_block("bash", "nested-ac train"))
    assert command[:2] == ["nested-ac", "train"]
    result = _run([SCRIPT, *command[1:]], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs" / "clipped"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["plugins"] == ["weight_clip"] and saved["weight_clip"] == {"max_abs": 0.5}
    scalars = read_scalars(run_dir)
    for network in ("actor", "critic"):
        fractions = [value for _, value in scalars[f"weight_clip/{network}/clipped"]]
        assert fractions and all(0.0 <= value <= 1.0 for value in fractions)
    assert "weight clip: fraction of weights clipped" in _layout(run_dir)["plasticity and interventions"]
    model = ContinualPPO.load(run_dir / "model.zip", device="cpu")
    weights = [p for network in model.trainable_networks().values() for p in network.parameters()]
    assert max(float(w.detach().abs().max()) for w in weights) <= 0.5
    assert any(float(w.detach().abs().max()) == 0.5 for w in weights)  # the clip bound was reached: it acted
    bad = _run([SCRIPT, *command[1:], "--set", "weight_clip.max_abs=[1]"], tmp_path)
    assert bad.returncode == 2 and "weight_clip.max_abs" in bad.stderr


def test_a_plugin_module_that_does_not_exist_is_a_clear_error(cli):
    code, _, err = cli("train", "--steps", "64", "--set", "plugins=[no_such_tools_module]")
    assert code == 2 and "cannot import plug-in module 'no_such_tools_module'" in err


def test_list_tools_names_every_registered_tool(cli):
    code, out, _ = cli("list", "tools")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[: len(list(TOOLS))]] == [e.name for e in TOOLS]
