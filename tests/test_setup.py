"""scripts/setup.sh without the network: the real script runs in a copy of the repository whose
``.venv/bin/python`` is a stand-in that records each pip command and answers as pip would under a given
pip configuration (the locked CPU torch found locally, or not found, as with a default configuration)."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKED_TORCH = next(
    line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.startswith("torch==")
)
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# The stand-in for .venv/bin/python: appends its arguments to calls.txt; `-m pip install` of a torch
# requirement fails as pip does when no configured index has it, unless the torch requirement is in the
# environment variable FOUND (space-separated) or the command names an index that has it (INDEXES).
STAND_IN = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    here=$(cd "$(dirname "$0")/../.." && pwd)
    echo "$*" >> "$here/calls.txt"
    for arg in "$@"; do
        case "$arg" in
            torch==*)
                for found in $FOUND; do [ "$arg" == "$found" ] && exit 0; done
                for index in $INDEXES; do [[ " $* " == *" --index-url $index "* ]] && exit 0; done
                echo "ERROR: Could not find a version that satisfies the requirement $arg" >&2
                echo "ERROR: No matching distribution found for $arg" >&2
                exit 1;;
        esac
    done
    exit 0
    """
)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the files set-up reads, with a stand-in interpreter already in .venv."""
    for name in ("scripts/setup.sh", "requirements.lock", "pyproject.toml", "scripts/ns-gym-pin.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return tmp_path


def set_up(checkout: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the set-up; its result and the pip commands it ran, one line each (arguments joined)."""
    variables = {key: value for key, value in os.environ.items() if key not in ("TORCH_SPEC", "TORCH_INDEX")}
    result = subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=checkout,
        env={**variables, "FOUND": "", "INDEXES": "", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    calls = checkout / "calls.txt"
    return result, (calls.read_text().splitlines() if calls.exists() else [])


def test_the_locked_cpu_torch_found_where_pip_looks_is_installed_from_there(checkout):
    result, calls = set_up(checkout, FOUND=LOCKED_TORCH)
    assert result.returncode == 0, result.stderr
    assert calls == [
        f"-m pip install --quiet {LOCKED_TORCH}",
        "-m pip install --quiet -r .venv/requirements-without-torch.txt",
        "-m pip install --quiet --no-deps -r scripts/ns-gym-pin.txt",
        "-m pip install --quiet --no-deps -e .",
    ]
    assert "torch==" not in (checkout / ".venv" / "requirements-without-torch.txt").read_text()


def test_with_a_default_pip_configuration_torch_comes_from_pytorchs_cpu_index(checkout):
    result, calls = set_up(checkout, INDEXES=PYTORCH_CPU_INDEX)
    assert result.returncode == 0, result.stderr
    assert calls == [
        f"-m pip install --quiet {LOCKED_TORCH}",
        f"-m pip install --quiet --index-url {PYTORCH_CPU_INDEX} --no-deps {LOCKED_TORCH}",
        "-m pip install --quiet -r .venv/requirements-without-torch.txt",
        "-m pip install --quiet --no-deps -r scripts/ns-gym-pin.txt",
        "-m pip install --quiet --no-deps -e .",
    ]
    assert f"asking PyTorch's CPU index {PYTORCH_CPU_INDEX}" in result.stdout
    assert "No matching distribution" not in result.stderr  # the first lookup's failure is expected


def test_where_no_index_has_it_set_up_fails_with_pips_error(checkout):
    result, calls = set_up(checkout)
    assert result.returncode != 0
    assert f"No matching distribution found for {LOCKED_TORCH}" in result.stderr
    assert len(calls) == 2 and not (checkout / ".venv" / ".nested-ac-installed").exists()
    hint = f"could not install {LOCKED_TORCH} from {PYTORCH_CPU_INDEX} either; set TORCH_INDEX"
    assert hint in result.stdout


def test_a_gpu_override_is_never_fetched_from_the_cpu_index(checkout):
    result, calls = set_up(checkout, TORCH_SPEC="torch==2.13.0", INDEXES=PYTORCH_CPU_INDEX)
    assert result.returncode != 0 and calls == ["-m pip install --quiet torch==2.13.0"]
    result, calls = set_up(checkout, TORCH_SPEC="torch==2.13.0", FOUND="torch==2.13.0")
    assert result.returncode == 0 and calls[-4] == "-m pip install --quiet torch==2.13.0"


def test_each_phase_is_one_line_and_an_installed_venv_is_left_alone(checkout):
    result, _ = set_up(checkout, FOUND=LOCKED_TORCH)
    lines = result.stdout.splitlines()
    assert [line.split(" ")[1] for line in lines] == ["installing"] * 4 + ["done"]
    assert all(line.startswith("set-up: ") for line in lines)
    (checkout / "calls.txt").unlink()
    again, calls = set_up(checkout, FOUND=LOCKED_TORCH)
    assert again.returncode == 0 and again.stdout == "" and calls == []
