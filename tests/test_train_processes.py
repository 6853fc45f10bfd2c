"""train_lora on accelerate's launcher, for real: two CPU processes (gloo) through `dvc repro`,
against one process with the same global batch (in `make test`: the tiny settings, 30 steps of a
batch of 4); a two-process run stopped by Ctrl-C resumes in one process (`make test-slow`)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.common import launch
from stages.common.params import TrainLoraParams
from tests.conftest import STAGES, TINY, Workdir, stage_env, wait_until
from tests.test_pipeline_dvc import dvc, make_repo, ran

STEPS = 30
TRAIN = {**TINY["train_lora"], "max_steps": STEPS, "checkpoint_every": 0, "validation_every": 0}


def curve(folder: Path) -> list[tuple[int, float]]:
    """(step, loss) of every row of the run's dvclive curve."""
    with (folder / "outputs/train_lora/plots/metrics/loss.tsv").open() as file:
        return [
            (int(row["step"]), float(row["loss"])) for row in csv.DictReader(file, delimiter="\t")
        ]


def lora_files(folder: Path) -> set[str]:
    lora = folder / "outputs/lora"
    return {p.relative_to(lora).as_posix() for p in lora.rglob("*")}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "outputs/lora/pytorch_lora_weights.safetensors")


def test_two_processes_through_dvc_repro_train_as_one_does(tmp_path):
    """`train_lora.num_processes: 2` under `dvc repro`: the stage runs itself under `accelerate
    launch`, two processes each train on half of every batch, and the main one alone writes one
    LoRA and one curve; `dvc exp run -S train_lora.num_processes=1` trains the same LoRA."""
    repo = make_repo(tmp_path, **{**TINY, "train_lora": {**TRAIN, "num_processes": 2}})
    cache = tmp_path / "cache"
    said = dvc(repo, cache, "repro", "train_lora")
    assert ran(said)[-1] == "train_lora"
    assert f"train_lora: {STEPS} steps" in said and "images/s, 2 processes)" in said
    timing = json.loads((repo / "outputs/train_lora/timing.json").read_text())
    assert timing["processes"] == 2
    two = curve(repo)
    assert [step for step, _ in two] == list(range(STEPS))  # one curve: each step once
    files = lora_files(repo)
    assert {"pytorch_lora_weights.safetensors", "pokemon_lora.safetensors", "README.md"} <= files
    two_weights = weights(repo)

    said = dvc(repo, cache, "exp", "run", "train_lora", "-S", "train_lora.num_processes=1")
    assert ran(said) == ["check_params", "train_lora"], said
    assert json.loads((repo / "outputs/train_lora/timing.json").read_text())["processes"] == 1
    one = curve(repo)
    gap = max(abs(a - b) for (_, a), (_, b) in zip(one, two, strict=True))
    print(f"largest gap between the two loss curves: {gap:.3g} (losses {one[0][1]:.3f}..)")
    assert gap < 1e-4
    assert lora_files(repo) == files  # the same LoRA folder: the main process wrote it alone
    one_weights = weights(repo)
    assert one_weights.keys() == two_weights.keys()
    for key, value in one_weights.items():
        torch.testing.assert_close(two_weights[key], value, rtol=1e-3, atol=1e-5)


@pytest.fixture
def trained_base(tmp_path) -> Workdir:
    work = Workdir(tmp_path / "work", tmp_path / "cache")
    work.path.mkdir()
    work.write_params(**TINY)
    for stage in STAGES[: STAGES.index("train_lora")]:
        work.run(stage)
    return work


@pytest.mark.slow  # 75 s: with the resume tests of test_diffusion_stages.py
def test_ctrl_c_stops_two_processes_after_one_step_and_one_process_resumes(trained_base):
    """Ctrl-C reaches the stage, the launcher and both training processes (the terminal's
    process group): they stop after the same step, the main one saves a checkpoint, nothing
    hangs; the run resumes from that step with one process and gives one continuous curve."""
    work, steps = trained_base, 400
    work.write_params(**{**TINY, "train_lora": {**TRAIN, "max_steps": steps, "num_processes": 2}})
    process = subprocess.Popen(
        work.command("train_lora"),
        cwd=work.path,
        env=stage_env(work.cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal's foreground job
    )
    loss = work.path / "outputs/train_lora/plots/metrics/loss.tsv"
    wait_until(lambda: loss.exists() and len(loss.read_text().splitlines()) > 20, process, 240)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.count("interrupted after step ") == 1, stderr  # the main process says it
    stopped = int(stderr.split("interrupted after step ")[1].split()[0])
    assert 20 <= stopped < steps
    assert "Traceback" not in stderr, stderr

    work.write_params(**{**TINY, "train_lora": {**TRAIN, "max_steps": steps, "num_processes": 1}})
    result = work.run("train_lora")
    assert f"resuming from the checkpoint at step {stopped}" in result.stderr
    assert [step for step, _ in curve(work.path)] == list(range(steps))


def test_the_launcher_command_follows_the_params(tmp_path, monkeypatch):
    """Two processes on this machine by default; an accelerate config file decides the rest;
    a missing file is an error that says how to write one."""
    monkeypatch.chdir(tmp_path)
    cmd = launch.command(TrainLoraParams(num_processes=2), "stages.train_lora")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-2:] == ["-m", "stages.train_lora"]
    (tmp_path / "nodes.yaml").write_text("num_machines: 2\nnum_processes: 16\n")
    cmd = launch.command(TrainLoraParams(accelerate_config="nodes.yaml"), "stages.train_lora")
    assert cmd[cmd.index("--config_file") + 1] == "nodes.yaml"
    assert "--num_processes" not in cmd and "--multi_gpu" not in cmd  # the file's
    with pytest.raises(launch.StageError, match=r"accelerate config --config_file gpus\.yaml"):
        launch.command(TrainLoraParams(accelerate_config="gpus.yaml"), "stages.train_lora")
    with pytest.raises(ValueError, match="does not split evenly among num_processes 3"):
        TrainLoraParams(batch_size=8, num_processes=3)
