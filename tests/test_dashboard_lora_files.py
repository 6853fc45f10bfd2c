"""The picked row's LoRA files, downloaded from the page as a zip: read at the experiment's
commit from DVC's cache (or from the workspace), on a real git + DVC repository whose
experiments each have their own LoRA."""

from __future__ import annotations

import html
import io
import shutil
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import load

from bench.harness.playground_repo import add_playground_experiment, make_playground_repo
from dashboard.app import Dashboard

pytestmark = pytest.mark.timeout(600)
WEIGHTS = "outputs/lora/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The commit's LoRA has rank 4; the experiment rank-8's, rank 8 (and the workspace's,
    which `dvc exp run` left with the experiment's outputs)."""
    repo = make_playground_repo(tmp_path_factory.mktemp("lora-files") / "repo")
    add_playground_experiment(repo, "rank-8", "train_lora.rank=8")
    return repo


def downloaded(app: Dashboard, monkeypatch, pick: str) -> list[tuple[str, bytes, str]]:
    sent: list[tuple[str, bytes, str]] = []
    monkeypatch.setattr(app.panels.table, "download", lambda *file: sent.append(file))
    app.pick([pick])
    app.panels.actions.lora_button.click()
    return sent


def rank_in(data: bytes, folder: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        tensors = load(archive.read(f"{folder}/pytorch_lora_weights.safetensors"))
    return next(t for k, t in tensors.items() if ".lora.down." in k).shape[0]


def test_the_picked_experiments_lora_files_download_as_a_zip(repo: Path, monkeypatch):
    monkeypatch.chdir(repo / "outputs")  # as Voila's kernel runs in a folder of the repository
    app = Dashboard(repo, watch=False)
    ((name, data, mime),) = downloaded(app, monkeypatch, "rank-8")
    assert (name, mime) == ("pokemon-lora-rank-8.zip", "application/zip")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert "pokemon-lora-rank-8/pytorch_lora_weights.safetensors" in archive.namelist()
    assert rank_in(data, "pokemon-lora-rank-8") == 8  # the experiment's, not the workspace's
    said = html.unescape(app.panels.header.status.value)
    assert "Downloading pokemon-lora-rank-8.zip" in said, said

    frame = app.state.frame
    baseline = frame[frame["kind"] == "baseline"].iloc[0]  # the commit: rank 4
    ((name, data, _),) = downloaded(app, monkeypatch, baseline["id"])
    assert name == f"pokemon-lora-{baseline['name']}.zip"
    assert rank_in(data, name.removesuffix(".zip")) == 4

    ((name, data, _),) = downloaded(app, monkeypatch, "workspace")
    assert name == "pokemon-lora-workspace.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        in_zip = archive.read("pokemon-lora-workspace/pytorch_lora_weights.safetensors")
    assert in_zip == (repo / WEIGHTS).read_bytes()
    again = downloaded(app, monkeypatch, "rank-8")[0][1]
    assert again == downloaded(app, monkeypatch, "rank-8")[0][1]  # the same files, the same zip


def test_a_lora_missing_from_the_cache_is_said_with_how_to_get_it(
    repo: Path, tmp_path: Path, monkeypatch
):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    shutil.rmtree(copy / ".dvc" / "cache")
    app = Dashboard(copy, watch=False)
    assert downloaded(app, monkeypatch, "rank-8") == []
    said = html.unescape(app.panels.header.status.value)
    assert "outputs/lora of rank-8" in said, said
    assert "in this machine's DVC cache" in said and "dvc exp pull" in said, said


def test_a_workspace_lora_that_links_outside_the_repository_is_not_read(
    repo: Path, tmp_path: Path, monkeypatch
):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    private = tmp_path / "private.safetensors"
    private.write_bytes(b"someone's private file")
    (copy / WEIGHTS).unlink()
    (copy / WEIGHTS).symlink_to(private)
    app = Dashboard(copy, watch=False)
    assert downloaded(app, monkeypatch, "workspace") == []
    said = html.unescape(app.panels.header.status.value)
    assert "of the workspace is not read" in said, said
