"""bench/gpu_strength.sh: its CPU smoke test (--tiny) writes the table and every run's files; no CUDA, one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_strength.sh"
ATTACKS = ("na", "loss", "pia", "pian", "secmi", "sima")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIA_BIN": str(Path(sys.executable).parent)}  # this interpreter's environment
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False)


@pytest.mark.slow  # about a minute of CPU: a tiny training and six attack runs, each a fresh process
def test_tiny_run_writes_one_table_and_each_runs_metrics(tmp_path: Path):
    done = _run("--tiny", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    table = (out / "table.txt").read_text().splitlines()
    assert table[0].startswith("gpu_strength on ") and "16 members vs 16 non-members, 4 steps" in table[0]
    assert table[1].split()[:2] == ["attack", "auc"]
    assert sorted(line.split()[0] for line in table[2:]) == sorted([*ATTACKS, "na"])  # NA under both readings
    assert any(line.startswith("na (injection=absolute, σ=0.1)") for line in table[2:])
    assert done.stdout.splitlines()[-len(table):] == table  # printed as written
    for attack in ATTACKS:
        metrics = json.loads((out / "metrics" / f"{attack}.json").read_text())
        assert metrics["attack"] == attack and metrics["n_members"] == metrics["n_nonmembers"] == 16
    absolute = json.loads((out / "metrics" / "na_absolute.json").read_text())
    assert absolute["attack"] == "na" and absolute["settings"]["injection"] == "absolute"
    assert json.loads((out / "training.json").read_text())["steps"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_stops_at_once_in_one_line(tmp_path: Path):
    done = _run(str(tmp_path / "out"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no CUDA device" in done.stderr and "--tiny" in done.stderr
    assert not (tmp_path / "out").exists()


def test_without_an_output_folder_it_says_how_to_call_it():
    done = _run("--tiny")
    assert done.returncode == 2 and done.stderr.startswith("usage: bench/gpu_strength.sh")
