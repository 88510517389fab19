"""The installed package as a user meets it: one namespace in site-packages, the console script run from
the user's own folders, and the documented plug-in example (docs/environments.md) copied verbatim into a
fresh folder."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).parent / "nested-ac")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)


def test_only_nested_ac_is_installed(tmp_path):
    assert importlib.metadata.distribution("nested-ac").read_text("top_level.txt").split() == ["nested_ac"]
    for name in ("envs", "agents"):
        result = _run([sys.executable, "-c", f"import {name}"], tmp_path)
        assert result.returncode == 1 and f"No module named '{name}'" in result.stderr
    result = _run([sys.executable, "-c", "import nested_ac.envs, nested_ac.agents"], tmp_path)
    assert result.returncode == 0, result.stderr


def locked_versions() -> dict[str, str]:
    """requirements.lock as {canonical package name: version}."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    return {_canonical(name): version for name, version in pins}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_installed_versions_equal_the_lock():
    locked = locked_versions()
    assert {"torch", "stable-baselines3", "numpy", "gymnasium", "rliable", "pandas", "mkdocs"} <= set(locked)
    installed = {
        _canonical(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()
    }
    differ = {
        name: (version, installed.get(name))
        for name, version in locked.items()
        if installed.get(name) != version
    }
    assert not differ, f"installed versions differ from requirements.lock (locked, installed): {differ}"


def test_a_folder_with_its_own_envs_and_agents_packages(tmp_path):
    for name in ("envs", "agents"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise RuntimeError('the user\\'s own {name} ran')\n")
    listing = _run([SCRIPT, "list", "envs"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "nested_ac/PermutedCartPole-v0" in listing.stdout
    args = ["train", "--steps", "256", "--n-envs", "2", "--run-dir", "runs", "--name", "mine", *FAST]
    training = _run([SCRIPT, *args], tmp_path)
    assert training.returncode == 0, training.stderr
    assert (tmp_path / "runs" / "mine" / "model.zip").is_file()
    versions = json.loads((tmp_path / "runs" / "mine" / "versions.json").read_text())
    locked = locked_versions()
    assert {name: versions[name] for name in versions if name in locked} == {
        name: locked[name] for name in versions if name in locked
    }
    assert set(versions) - set(locked) == {"python", "nested-ac", "cpu"}


PLUGIN_PAGE = ROOT / "docs" / "environments.md"


def _doc_block(language: str, first_line: str) -> str:
    """The plug-in page's fenced ``language`` block that starts with ``first_line``."""
    for block in re.findall(rf"```{language}\n(.*?)```", PLUGIN_PAGE.read_text(), re.DOTALL):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no {language} block starting with {first_line!r} in {PLUGIN_PAGE}")


def _commands(block: str) -> list[list[str]]:
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_documented_plugin_example_trains_and_sweeps_from_a_fresh_folder(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "envs.py").write_text(_doc_block("python", "# mypkg/envs.py"))
    (tmp_path / "windy.yaml").write_text(_doc_block("yaml", "# windy.yaml"))
    commands = _commands(_doc_block("bash", "nested-ac train --env mypkg.envs:")) + _commands(
        _doc_block("bash", "nested-ac sweep windy.yaml")
    )
    assert [command[:2] for command in commands] == [["nested-ac", "train"]] * 3 + [["nested-ac", "sweep"]]
    assert commands[3][-2:] == ["--workers", "2"]
    for command in commands:
        result = _run([SCRIPT, *command[1:]], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "nested-ac: note:" not in result.stderr
    assert len(list((tmp_path / "runs").glob("*/model.zip"))) == 3
    (pendulum,) = (tmp_path / "runs").glob("*GravityPendulum*/summary.json")
    summary = json.loads(pendulum.read_text())  # negative returns, measured above the class's floor
    assert summary["R_min"] < summary["R"][0] < 0 and None not in summary["P"] and len(summary["P"]) == 4
    assert sorted(path.parent.name for path in (tmp_path / "runs" / "windy").glob("*/*/model.zip")) == [
        "seed0",
        "seed1",
    ]
