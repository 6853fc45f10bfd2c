"""The committed dvc.lock is the truth: `dvc repro` from nothing, in a copy of this checkout,
gives every output the md5 that dvc.lock records, and leaves `git status` clean.

Float results are bit-identical on machines whose CPU matches outputs/lock_machine.json (the
same model and torch kernel dispatch, the same torch, the same thread count). Elsewhere the last
bits of float sums may differ, so only the data stages are held to their md5s there and the
model stages to their metrics, within the tolerances below; the test says which it did.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from bench.harness.project import REPO
from stages.common.determinism import lock_machine
from tests.test_pipeline_dvc import dvc, git

pytestmark = pytest.mark.slow

MACHINE_NOTE = "outputs/lock_machine.json"
# Integer and PIL arithmetic only: the same bits on every CPU.
DATA_STAGES = ("download_pokemon_stats", "scrape_pokemon_images", "resize_pokemon_images")
# On another CPU family: metric -> largest difference allowed from the committed value.
TOLERANCES = {
    "outputs/evaluate/metrics.json": {"type_fidelity_base": 0.15, "type_fidelity_lora": 0.15},
    "outputs/train_classifier/metrics.json": {"accuracy": 0.05, "f1": 0.1},
    "outputs/train_lora/metrics.json": {"final_loss": 0.02},
}


def copy_checkout(target):
    """This checkout as a fresh clone of it would have it (committed and new files, nothing
    that git ignores), committed in a new repository."""
    listed = git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git(target, "init", "-q", "-b", "main")
    git(target, "config", "user.email", "test@example.com")
    git(target, "config", "user.name", "test")
    git(target, "add", "-A")
    git(target, "commit", "-qm", "clone")


def outs(lock: dict) -> dict[str, str]:
    return {
        f"{stage}: {out['path']}": out["md5"]
        for stage, entry in lock["stages"].items()
        for out in entry.get("outs", [])
    }


def committed_steps(repo) -> int:
    return json.loads((repo / "outputs/train_lora/metrics.json").read_text())["steps"]


def test_dvc_repro_from_nothing_reproduces_the_committed_lock(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    copy_checkout(repo)
    committed = yaml.safe_load((repo / "dvc.lock").read_text())
    note = json.loads((repo / MACHINE_NOTE).read_text())
    metrics_before = {name: json.loads((repo / name).read_text()) for name in TOLERANCES}

    # a clone reads the committed figures and curves without a pull: they are in git
    shown = dvc(repo, tmp_path / "cache", "metrics", "show", "--json")
    assert "failed" not in shown.lower() and '"error"' not in shown
    assert '"type_fidelity_lora"' in shown and '"f1"' in shown
    curve = (repo / "outputs/train_lora/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(curve) == committed_steps(repo) + 1  # the committed curve: a header, every step

    output = dvc(repo, tmp_path / "cache", "repro")
    assert "Running stage 'train_lora'" in output  # it ran, from nothing
    produced = yaml.safe_load((repo / "dvc.lock").read_text())
    expected, found = outs(committed), outs(produced)
    assert expected.keys() == found.keys()

    here = lock_machine()
    if here == note:
        print(f"same machine kind as the lock ({note}): every output compared bit for bit")
        changed = {
            name: (md5, found[name]) for name, md5 in expected.items() if found[name] != md5
        }
        assert not changed, f"outputs differ from the committed dvc.lock: {changed}"
        status = git(repo, "status", "--porcelain")
        assert status == "", f"dvc repro changed committed files:\n{status}"
        return

    print(
        f"this machine ({here}) differs from the lock's ({note}): the data stages are compared "
        f"bit for bit, the model stages by their metrics within {TOLERANCES}"
    )
    for name, md5 in expected.items():
        if name.split(":")[0] in DATA_STAGES:
            assert found[name] == md5, f"{name} differs from the committed dvc.lock"
    for name, limits in TOLERANCES.items():
        after = json.loads((repo / name).read_text())
        for key, limit in limits.items():
            difference = abs(after[key] - metrics_before[name][key])
            assert difference <= limit, (
                f"{name} {key}: {after[key]} against the committed {metrics_before[name][key]}"
                f" (more than {limit} apart)"
            )
