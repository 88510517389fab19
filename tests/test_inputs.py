"""Bad inputs found on the way: each is one line on stderr and exit code 2, and nothing is written."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAST

EXPERIMENT = """name: tiny
steps: 512
seeds: [0]
base:
  env: {id: nested_ac/PermutedCartPole-v0, n_envs: 2, schedule: {every: 256}}
  ppo: {n_steps: 64, batch_size: 64, n_epochs: 1}
variants:
  - name: adam
"""


def _refused(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("nested-ac: error: "), err
    assert expected in err, err


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("banana", "device must be a torch device such as cpu, cuda or cuda:0, got 'banana'"),
        ("cuda", "finds no CUDA device on this machine"),
        ("cuda:1", "finds no CUDA device on this machine"),
    ],
)
def test_a_device_this_machine_lacks_is_refused_before_training(cli, tmp_path, monkeypatch, device, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    code, out, err = cli(
        "train", "--steps", "512", "--run-dir", str(tmp_path), *FAST, "--set", f"device={device}"
    )
    _refused(code, err, expected)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_an_unreachable_ray_address_is_refused_before_the_sweep_writes(cli, tmp_path):
    pytest.importorskip("ray")
    (tmp_path / "tiny.yaml").write_text(EXPERIMENT)
    sweep_dir = tmp_path / "sweep"
    code, _, err = cli(
        "sweep",
        str(tmp_path / "tiny.yaml"),
        "--sweep-dir",
        str(sweep_dir),
        "--backend",
        "ray",
        "--address",
        "127.0.0.1:1",
    )
    _refused(code, err, "cannot reach the Ray cluster at --address 127.0.0.1:1")
    assert not sweep_dir.exists()
