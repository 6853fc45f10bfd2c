"""Outputs appear whole or not at all, even when a stage is killed."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, save

from stages.common.fsutil import atomic_dir, atomic_write_json, stable_safetensors
from tests.conftest import wait_until


def test_atomic_dir_replaces_the_old_folder_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("the stage failed half-way")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # fails while serialising
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_killed_stage_leaves_no_half_written_output_and_the_next_run_cleans_up(workdir):
    workdir.write_params(data={"synthetic_count": 3000})
    workdir.run("download_pokemon_stats")
    process = workdir.start("scrape_pokemon_images")
    external = workdir.path / "data/external"

    def half_written() -> bool:
        partial = list(external.glob(".images.tmp-*"))
        return bool(partial) and len(os.listdir(partial[0])) > 50

    wait_until(half_written, process, timeout=60)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (external / "images").exists()  # nothing that DVC could take for an output
    workdir.write_params(data={"synthetic_count": 20})
    workdir.run("download_pokemon_stats")
    workdir.run("scrape_pokemon_images")
    assert len(list((external / "images").iterdir())) == 20
    assert not list(external.glob(".images.tmp-*"))  # the leftover was cleared


def test_a_safetensors_file_of_the_same_tensors_and_metadata_is_the_same_bytes(tmp_path):
    """safetensors keeps its header in a hash map whose order changes from call to call: with
    more than one metadata key, the same file came out in other bytes (DVC saw a new output)."""
    tensors = {
        "up": torch.arange(6.0).reshape(2, 3),
        "down": torch.ones(3, 2),
        "alpha": torch.tensor(4.0),
    }
    metadata = {f"ss_key_{i}": f"välue {i}" for i in range(30)}
    written = {stable_safetensors(save(tensors, metadata=metadata)) for _ in range(20)}
    assert len(written) == 1
    (raw,) = written
    back = load(raw)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    with safe_open(path, "pt") as file:
        assert file.metadata() == metadata
