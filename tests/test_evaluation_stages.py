"""train_classifier, evaluate and the papermill report stage, on the shared tiny run."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.harness.project import REPO
from stages.evaluate import difference_interval, fidelity_metrics, wilson_interval
from tests.conftest import TINY, Workdir, stage_env


def read(work: Workdir, path: str):
    return json.loads((work.path / path).read_text())


def test_classifier_is_scored_on_held_out_images_only(pipeline_run):
    config = read(pipeline_run, "outputs/classifier/config.json")
    metrics = read(pipeline_run, "outputs/train_classifier/metrics.json")
    images = len((pipeline_run.path / "data/processed/images/metadata.jsonl").read_text().split())
    assert metrics["test_images"] == len(config["test_files"]) == len(set(config["test_files"]))
    assert metrics["train_images"] + metrics["test_images"] == TINY["data"]["synthetic_count"]
    assert images > 0
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0 <= metrics[key] <= 1
    assert config["pokemon_type"] == "Water" and config["metrics"]["f1"] == metrics["f1"]
    assert (pipeline_run.path / "outputs/classifier/model.safetensors").is_file()


def test_history_per_epoch_and_a_confusion_matrix_dvc_can_draw(pipeline_run):
    history = pipeline_run.path / "outputs/train_classifier/plots/metrics"
    for split in ("train", "test"):
        for metric in ("loss", "accuracy"):
            frame = pd.read_csv(history / split / f"{metric}.tsv", sep="\t")
            assert list(frame.columns) == ["step", metric]
            assert frame["step"].tolist() == list(range(TINY["classifier"]["epochs"]))
    confusion = read(pipeline_run, "outputs/train_classifier/plots/sklearn/confusion_matrix.json")
    metrics = read(pipeline_run, "outputs/train_classifier/metrics.json")
    assert len(confusion) == metrics["test_images"]
    assert all(set(row) == {"actual", "predicted"} for row in confusion)
    assert {row["actual"] for row in confusion} == {"Water", "not Water"}
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train_classifier"]
    confusion_plot = next(p for p in stage["plots"] if "confusion" in json.dumps(p))
    definition = confusion_plot["outputs/train_classifier/plots/sklearn/confusion_matrix.json"]
    assert definition["template"] == "confusion"
    assert (definition["x"], definition["y"]) == ("actual", "predicted")


def test_evaluate_scores_every_generated_image(pipeline_run):
    metrics = read(pipeline_run, "outputs/evaluate/metrics.json")
    predictions = pd.read_csv(pipeline_run.path / "outputs/evaluate/predictions.csv")
    pairs = len(TINY["generate"]["prompts"]) * len(TINY["generate"]["seeds"])
    assert len(predictions) == 2 * pairs == 2 * metrics["images"]
    for variant in ("base", "lora"):
        rows = predictions[predictions["variant"] == variant]
        share = metrics[f"type_fidelity_{variant}"]
        assert share == pytest.approx(rows["is_water"].mean(), abs=1e-4)
        low, high = (
            metrics[f"type_fidelity_{variant}_low"],
            metrics[f"type_fidelity_{variant}_high"],
        )
        assert 0 <= low <= share <= high <= 1 and high - low > 0.1  # 4 images: a wide interval
        assert 0 <= metrics[f"diversity_{variant}"] <= 1
    lift = metrics["type_fidelity_lora"] - metrics["type_fidelity_base"]
    assert metrics["lift"] == pytest.approx(lift, abs=1e-4)
    assert -1 <= metrics["lift_low"] <= metrics["lift"] <= metrics["lift_high"] <= 1
    assert predictions["probability"].between(0, 1).all()


def test_intervals_match_newcombes_published_examples():
    """Newcombe (1998): Wilson 81/263 is 0.2553 to 0.3662 (Statistics in Medicine 17: 857);
    the hybrid score interval of 56/70 - 48/80 is 0.0524 to 0.3339 (ibid. 873, method 10)."""
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    first, second = wilson_interval(56, 70), wilson_interval(48, 80)
    assert difference_interval(56 / 70, first, 48 / 80, second) == pytest.approx(
        (0.0524, 0.3339), abs=1e-4
    )


def test_fidelity_metrics_tell_a_real_lift_from_noise():
    clear = fidelity_metrics(
        {"base": np.array([1] * 4 + [0] * 44), "lora": np.array([1] * 32 + [0] * 16)}
    )
    assert clear["lift"] == pytest.approx(28 / 48, abs=1e-4) and clear["lift_low"] > 0.3
    assert clear["type_fidelity_base_high"] < clear["type_fidelity_lora_low"]
    noise = fidelity_metrics(
        {"base": np.array([1] * 2 + [0] * 2), "lora": np.array([1] * 3 + [0])}
    )
    assert noise["lift_low"] < 0 < noise["lift_high"]


def report_command(work: Workdir) -> str:
    """The report stage's cmd from dvc.yaml, with ${section.key} filled in as DVC does."""
    params = yaml.safe_load((work.path / "params.yaml").read_text())
    command = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]["cmd"]

    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", value, command)


def run_report(work: Workdir) -> subprocess.CompletedProcess:
    """The report stage's command, run in `work` as DVC would run it."""
    return subprocess.run(
        report_command(work),
        shell=True,
        cwd=work.path,
        env=stage_env(work.cache),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def test_report_notebook_runs_with_the_injected_params(pipeline_run):
    work = pipeline_run
    (work.path / "notebooks").mkdir(exist_ok=True)
    (work.path / "notebooks/report.ipynb").write_bytes(
        (REPO / "notebooks/report.ipynb").read_bytes()
    )
    work.write_params(**{**TINY, "train_lora": {**TINY["train_lora"], "rank": 3}})
    result = run_report(work)
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = read(work, "outputs/report/report.ipynb")
    injected = next(
        c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
    )
    source = "".join(injected["source"])
    assert "rank = 3" in source and 'pokemon_type = "Water"' in source
    outputs = [o for c in notebook["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = (work.path / "outputs/report/report.html").read_text()
    assert "LoRA training loss" in html and "Base and LoRA, from the same noise" in html
    assert "data:image/png;base64" in html  # the grid is embedded: the file opens on its own
    # no wall clock in the outputs: a second run writes the same bytes
    assert "start_time" not in json.dumps(notebook) and '"execution"' not in json.dumps(notebook)
    first = {p.name: p.read_bytes() for p in (work.path / "outputs/report").iterdir()}
    again = run_report(work)
    assert again.returncode == 0, again.stderr[-3000:]
    second = {p.name: p.read_bytes() for p in (work.path / "outputs/report").iterdir()}
    assert first.keys() == second.keys() == {"report.ipynb", "report.html"}
    assert all(first[name] == second[name] for name in first)
    work.write_params(**TINY)
