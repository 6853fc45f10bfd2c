"""The pipeline under real DVC, in a temporary git repository copied from this one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bench.harness.project import REPO, default_params, merged
from tests.conftest import STAGES, TINY, stage_env

pytestmark = pytest.mark.slow

# What a user's clone holds: code, pipeline and params; no data, no outputs, no lock file.
COPIED = [
    "stages",
    "notebooks",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]


def make_repo(root: Path, **params: dict) -> Path:
    """A git repository holding this project's pipeline, with `params` over the defaults."""
    repo = root / "repo"
    repo.mkdir()
    for name in COPIED:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    if params:
        text = yaml.safe_dump(merged(default_params(), params), allow_unicode=True)
        (repo / "params.yaml").write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    return repo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def run_dvc(repo: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["dvc", *args],
        cwd=repo,
        env=stage_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def dvc(repo: Path, cache: Path, *args: str) -> str:
    """What `dvc <args>` printed; it must succeed."""
    result = run_dvc(repo, cache, *args)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_repro_caches_and_an_experiment_reruns_only_what_changed(tmp_path):
    repo, cache = make_repo(tmp_path), tmp_path / "cache"

    first = dvc(repo, cache, "repro", "resize_pokemon_images")
    assert ran(first) == [
        "check_params",
        "download_pokemon_stats",
        "scrape_pokemon_images",
        "resize_pokemon_images",
    ]
    metadata = (repo / "data/processed/images/metadata.jsonl").read_text().splitlines()
    assert len(metadata) == 540
    first_image = repo / "data/processed/images" / json.loads(metadata[0])["file_name"]
    assert Image.open(first_image).size == (64, 64)
    git(repo, "add", "-A")
    tracked = git(repo, "ls-files", "data").split()
    assert tracked and all(path.endswith(".gitignore") for path in tracked)  # DVC's, not git's

    second = dvc(repo, cache, "repro", "resize_pokemon_images")
    assert ran(second) == []
    assert "didn't change, skipping" in second or "Data and pipelines are up to date" in second

    git(repo, "commit", "-qm", "first run")
    experiment = dvc(repo, cache, "exp", "run", "resize_pokemon_images", "-S", "resize.size=32")
    assert ran(experiment) == ["check_params", "resize_pokemon_images"]
    images = sorted((repo / "data/processed/images").glob("*.png"))
    assert len(images) == 540 and Image.open(images[0]).size == (32, 32)
    lock = (repo / "dvc.lock").read_text()
    assert "size: 32" in lock
    shown = json.loads(dvc(repo, cache, "exp", "show", "--json"))
    experiments = [e for commit in shown for e in (commit.get("experiments") or [])]
    assert any(
        rev["data"]["params"]["params.yaml"]["data"]["resize"]["size"] == 32
        for e in experiments
        for rev in e["revs"]
    )


def exp_names(repo: Path, cache: Path) -> dict[str, dict]:
    """Experiment name -> its data in `dvc exp show --json`."""
    shown = json.loads(dvc(repo, cache, "exp", "show", "--json"))
    return {
        e["name"]: rev["data"]
        for commit in shown
        for e in commit.get("experiments") or []
        for rev in e["revs"]
        if e.get("name")
    }


def test_whole_pipeline_then_two_experiments_compared_by_dvc_metrics_and_plots(tmp_path):
    repo, cache = make_repo(tmp_path, **TINY), tmp_path / "cache"
    first = dvc(repo, cache, "repro")
    assert sorted(ran(first)) == sorted(["check_params", *STAGES, "report"])
    assert (repo / "outputs/generated/grid.png").is_file()
    assert (repo / "outputs/report/report.html").is_file()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")

    experiment = dvc(repo, cache, "exp", "run", "-n", "rank-8", "-S", "train_lora.rank=8")
    assert ran(experiment) == [
        "check_params",
        "train_lora",
        "generate_text_to_image",
        "evaluate",
        "report",
    ]
    dvc(repo, cache, "exp", "run", "-n", "rank-2", "-S", "train_lora.rank=2")
    experiments = exp_names(repo, cache)
    ranks = {
        name: data["params"]["params.yaml"]["data"]["train_lora"]["rank"]
        for name, data in experiments.items()
    }
    assert ranks == {"rank-8": 8, "rank-2": 2}
    lift = experiments["rank-8"]["metrics"]["outputs/evaluate/metrics.json"]["data"]["lift"]
    assert -1 <= lift <= 1

    diff = json.loads(dvc(repo, cache, "metrics", "diff", "rank-8", "rank-2", "--json"))
    changed = diff["outputs/train_lora/metrics.json"]
    assert changed["final_loss"]["old"] != changed["final_loss"]["new"]

    plots = json.loads(
        dvc(repo, cache, "plots", "diff", "rank-8", "rank-2", "--json", "-o", str(tmp_path / "p"))
    )["data"]
    loss = plots["outputs/train_lora/plots/metrics/loss.tsv"][0]["content"]["data"]["values"]
    assert {point["rev"] for point in loss} == {"rank-8", "rank-2"}
    images = plots["outputs/generated/lora/a-pkmnlora-pokemon/seed-0.png"]
    assert {image["revisions"][0] for image in images} == {"rank-8", "rank-2"}
    confusion = plots["outputs/train_classifier/plots/sklearn/confusion_matrix.json"][0]
    assert confusion["type"] == "vega"

    # The dashboard on this real pipeline: both experiments' curves, Pokémon and confusion.
    from dashboard.app import Dashboard

    app = Dashboard(repo, watch=False)
    panels = app.panels
    assert panels.header.banner.layout.display == "none", panels.header.banner.value
    app.pick(["rank-8", "rank-2"])
    assert "train_lora" in panels.curves.choice.value and "loss" in panels.curves.choice.value
    traces = {t.name for t in panels.curves.plot.figure.data if t.showlegend is not False}
    assert traces == {"rank-8", "rank-2"}
    # the base model's images are the same for both: shown once
    gallery = panels.gallery.gallery
    labels = [c["label"] for c in gallery.columns]
    assert labels == ["rank-8 · base", "rank-8 · LoRA", "rank-2 · LoRA"]
    assert "the same for rank-2" in gallery.columns[0]["detail"]
    prompts, seeds = TINY["generate"]["prompts"], TINY["generate"]["seeds"]
    assert len(gallery.rows) == len(prompts) * len(seeds)
    assert all("src" in cell for row in gallery.rows for cell in row["cells"])
    assert "rank=8" in gallery.columns[1]["detail"]
    confusion = panels.classifier.confusion.figure.data
    assert len([t for t in confusion if t.type == "heatmap"]) == 2
