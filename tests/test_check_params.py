"""check_params, the pipeline's first stage, under real DVC: a bad value in params.yaml stops
`dvc repro` before any stage deletes its outputs, whoever runs it; a good change re-runs only
the stages that read it. In `make test`: the data stages on 60 synthetic creatures."""

from __future__ import annotations

import yaml

from bench.harness.project import REPO
from tests.test_pipeline_dvc import dvc, git, make_repo, ran, run_dvc


def test_every_stage_but_the_check_depends_on_its_stamp():
    """A stage without the stamp among its deps would run (and delete its outputs) before the
    check."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["check_params"]["outs"] == ["outputs/params_checked.txt"]
    missing = [
        name
        for name, stage in stages.items()
        if name != "check_params" and "outputs/params_checked.txt" not in stage["deps"]
    ]
    assert missing == []


def test_a_bad_param_stops_the_pipeline_before_any_output_is_deleted(tmp_path):
    """DVC deletes a stage's outputs right before it runs it; a stage that validated its own
    params only once started lost its outputs to a typo. check_params validates the whole
    params.yaml first, so every output stays, and a good change re-runs only its readers."""
    repo, cache = make_repo(tmp_path, data={"synthetic_count": 60}), tmp_path / "cache"
    dvc(repo, cache, "repro", "resize_pokemon_images")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first run")
    outputs = sorted(
        p for folder in ("data", "outputs") for p in (repo / folder).rglob("*") if p.is_file()
    )
    images = [p for p in outputs if p.suffix == ".png"]
    assert len(images) >= 60
    before = {p: p.read_bytes() for p in outputs}

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["resize"]["size"] = -3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    result = run_dvc(repo, cache, "repro")
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert ran(said) == ["check_params"], said
    assert "resize.size = -3 is not allowed" in said
    # Every output as it was, bar the check's own stamp (DVC removes it before the check runs).
    stamp = repo / "outputs" / "params_checked.txt"
    kept = {p: p.read_bytes() for p in outputs if p.is_file()}
    assert {p: b for p, b in before.items() if p != stamp} == {
        p: b for p, b in kept.items() if p != stamp
    }

    params["resize"]["size"] = 32
    (repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    good = dvc(repo, cache, "repro", "resize_pokemon_images")
    assert ran(good) == ["check_params", "resize_pokemon_images"], good
    assert stamp.read_bytes() == before[stamp]  # the same hash: nothing else re-runs for it
