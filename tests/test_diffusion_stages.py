"""set_up_diffusers, train_lora and generate_text_to_image with tiny settings, as subprocesses,
and the LoRA they make loaded back through the real diffusers API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from stages.common.errors import StageError
from stages.models.shipped import SHIPPED, SHIPPED_RECORD, file_hashes, verify
from tests.conftest import TINY, TINY_PIPELINE_SCRIPT, Workdir, stage_env, wait_until


def lora_tensors(work: Workdir) -> dict[str, torch.Tensor]:
    return load_file(work.path / "outputs/lora/pytorch_lora_weights.safetensors")


def loss_steps(work: Workdir) -> list[int]:
    """The steps in the LoRA's loss log; none while the stage has not written it yet."""
    path = work.path / "outputs/train_lora/plots/metrics/loss.tsv"
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(line.split("\t")[0]) for line in lines[1:] if line.strip()]


def test_set_up_diffusers_puts_the_shipped_tiny_model_in_place(pipeline_run):
    out = pipeline_run.path / "outputs/base_model"
    record = json.loads((out / "model.json").read_text())
    assert record["kind"] == "tiny" and record["path"] == "outputs/base_model/pipeline"
    shipped = json.loads(SHIPPED_RECORD.read_text())
    assert record["made_with_code"] == shipped["code"]["commit"]
    # the shipped files, hash-verified, with the float16 tensors upcast exactly
    assert sorted(file_hashes(out / "pipeline")) == sorted(shipped["files"])
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        half, full = load_file(SHIPPED / name), load_file(out / "pipeline" / name)
        assert all(
            full[k].dtype == torch.float32 and torch.equal(full[k], half[k].float()) for k in half
        )
    assert (out / "pipeline/model_index.json").is_file() and (out / "samples.png").is_file()
    assert Image.open(out / "samples.png").size == (5 * 64, 4 * (64 + 12))


def test_a_shipped_file_that_does_not_match_its_record_is_a_clear_error(tmp_path):
    copy = tmp_path / "pretrained"
    shutil.copytree(SHIPPED, copy)
    expected = json.loads(SHIPPED_RECORD.read_text())["files"]
    verify(copy, expected)  # the copy matches
    weights = copy / "unet/diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (copy / "vae/config.json").unlink()
    with pytest.raises(StageError) as error:
        verify(copy, expected)
    message = str(error.value)
    assert "unet/diffusion_pytorch_model.safetensors (sha256" in message
    assert "vae/config.json (missing" in message
    assert "git checkout -- " in message and "python -m stages.pretrain_tiny" in message


def test_tiny_scratch_pretrains_anew_deterministically_by_step_count(tmp_path, workdir):
    """model.base tiny-scratch: the recipe in model.tiny, run twice, gives the same files."""
    workdir.write_params(**{**TINY, "model": {**TINY["model"], "base": "tiny-scratch"}})
    fingerprints = []
    for _ in range(2):
        workdir.run("set_up_diffusers")
        record = json.loads((workdir.path / "outputs/base_model/model.json").read_text())
        assert record["kind"] == "tiny-scratch"
        assert record["pretraining"]["vae_steps"] == 3
        assert record["pretraining"]["unet_steps"] == 3
        fingerprints.append(record["fingerprint"])
    assert fingerprints[0] == fingerprints[1]


def test_train_lora_writes_diffusers_weights_params_and_a_loss_curve(pipeline_run):
    tensors = lora_tensors(pipeline_run)
    assert tensors and all(key.startswith("unet.") for key in tensors)
    assert any("to_q.lora.down" in key for key in tensors)
    assert any("to_out.0.lora.up" in key for key in tensors)
    rank = next(t for k, t in tensors.items() if "lora.down" in k).shape[0]
    assert rank == 4
    saved = json.loads((pipeline_run.path / "outputs/lora/params.json").read_text())
    assert saved["train_lora"]["max_steps"] == 6 and saved["seed"] == 42
    assert loss_steps(pipeline_run) == list(range(6))
    metrics = json.loads((pipeline_run.path / "outputs/train_lora/metrics.json").read_text())
    assert metrics.keys() >= {"steps", "final_loss"} and metrics["steps"] == 6
    assert metrics["final_loss"] > 0
    # the run's speed is beside the outputs, never in them: it differs on every run
    assert not {"seconds", "images_per_second"} & metrics.keys()
    timing = json.loads((pipeline_run.path / "outputs/train_lora/timing.json").read_text())
    assert timing["images_per_second"] > 0 and timing["resumed_from_step"] == 0
    validation = pipeline_run.path / "outputs/train_lora/plots/images/validation"
    assert sorted(p.name for p in validation.iterdir()) == ["step-000003.png", "step-000006.png"]


def test_generate_writes_stable_paths_for_every_prompt_and_seed(pipeline_run):
    out = pipeline_run.path / "outputs/generated"
    for variant in ("base", "lora"):
        names = sorted(
            p.relative_to(out / variant).as_posix() for p in (out / variant).rglob("*.png")
        )
        assert names == [
            "a-fire-type-pokemon/seed-0.png",
            "a-fire-type-pokemon/seed-1.png",
            "a-pkmnlora-pokemon/seed-0.png",
            "a-pkmnlora-pokemon/seed-1.png",
        ]
    index = json.loads((out / "index.json").read_text())
    assert {(e["prompt"], e["seed"]) for e in index} == {
        (p, s) for p in TINY["generate"]["prompts"] for s in (0, 1)
    }
    assert (out / "grid.png").is_file()


LOAD_SCRIPT = (
    TINY_PIPELINE_SCRIPT
    + """
base = draw(3)
pipe.load_lora_weights("outputs/lora")
with_lora = draw(3)
pipe.unload_lora_weights()
again = draw(3)
print(json.dumps({"changed": float((with_lora - base).abs().max()),
                  "restored": float((again - base).abs().max())}))
"""
)


def test_lora_loads_in_a_fresh_process_changes_the_output_and_unloads_exactly(pipeline_run):
    figures = pipeline_run.script(LOAD_SCRIPT)
    assert figures["changed"] > 1e-4
    assert figures["restored"] == 0.0


def lora_files(work: Workdir) -> dict[str, bytes]:
    folder = work.path / "outputs/lora"
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_same_seed_and_params_give_the_same_lora_twice(pipeline_run):
    """Bit for bit, every file of outputs/lora (a DVC output whose hash dvc.lock keeps): the
    weights, their headers (diffusers writes a set of the LoRA config in the order of the
    process's hash seed unless it is sorted), the kohya file, the card and its samples."""
    first = lora_files(pipeline_run)
    pipeline_run.run("train_lora")
    second = lora_files(pipeline_run)
    assert first.keys() == second.keys() and len(first) >= 8
    assert [name for name in first if first[name] != second[name]] == []


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(pipeline_run, tmp_path):
    """Ctrl-C saves a checkpoint at the end of the current step; the next run continues from
    it, no step is done twice, and the LoRA equals an uninterrupted run's."""
    work = pipeline_run
    settings = {**TINY["train_lora"], "max_steps": 400, "validation_every": 0}
    work.write_params(**{**TINY, "train_lora": settings})
    work.run("train_lora")
    uninterrupted = lora_tensors(work)
    shutil.rmtree(work.path / "outputs/train_lora")  # as DVC does before it runs a stage

    process = work.start("train_lora", stderr=subprocess.PIPE)
    wait_until(lambda: len(loss_steps(work)) > 20, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    stopped_at = int(stderr.split("interrupted after step ")[1].split()[0])
    assert 20 <= stopped_at < 400

    result = work.run("train_lora")
    assert f"resuming from the checkpoint at step {stopped_at}" in result.stderr
    assert loss_steps(work) == list(range(400))  # one continuous curve, no step twice
    resumed = lora_tensors(work)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    timing = json.loads((work.path / "outputs/train_lora/timing.json").read_text())
    assert timing["resumed_from_step"] == stopped_at
    work.write_params(**TINY)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(pipeline_run):
    work = pipeline_run
    settings = {
        **TINY["train_lora"],
        "max_steps": 300,
        "checkpoint_every": 50,
        "validation_every": 0,
    }
    work.write_params(**{**TINY, "train_lora": settings})
    shutil.rmtree(work.path / "outputs/train_lora")
    process = work.start("train_lora")
    wait_until(lambda: len(loss_steps(work)) > 120, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    result = work.run("train_lora")
    resumed = int(result.stderr.split("resuming from the checkpoint at step ")[1].split()[0])
    assert resumed % 50 == 0 and 100 <= resumed < 300
    assert loss_steps(work) == list(range(300))
    work.write_params(**TINY)


def test_bad_lora_settings_are_clear_errors(pipeline_run):
    work = pipeline_run
    work.write_params(**{**TINY, "train_lora": {**TINY["train_lora"], "target_modules": ["to_x"]}})
    result = work.run("train_lora", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train_lora.target_modules = ['to_x']" in result.stderr
    assert "to_q" in result.stderr  # names the layers that exist
    if not torch.cuda.is_available():
        settings = {**TINY["train_lora"], "mixed_precision": "fp16"}
        work.write_params(**{**TINY, "train_lora": settings})
        result = work.run("train_lora", check=False)
        assert result.returncode == 2 and "fp16' needs a CUDA GPU" in result.stderr
    work.write_params(**TINY)


def test_stages_say_what_to_run_first(workdir):
    result = workdir.run("train_lora", check=False)
    assert result.returncode == 2
    assert "outputs/base_model/model.json not found; run `dvc repro set_up_diffusers`" in (
        result.stderr
    )


def save_tiny_pipeline(folder: Path) -> None:
    from stages.models.tiny_model import assemble, build_components

    assemble(build_components(seed=0)).save_pretrained(folder)


def test_hub_model_id_is_read_from_the_hub_cache_offline_and_its_commit_recorded(
    tmp_path, workdir
):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "hf/hub/models--tiny-org--tiny-sd"
    save_tiny_pipeline(repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs/main").write_text(commit)
    workdir.write_params(model={"base": "tiny-org/tiny-sd"})
    env_extra = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = run_with_env(workdir, "set_up_diffusers", env_extra)
    assert result.returncode == 0, result.stderr
    record = json.loads((workdir.path / "outputs/base_model/model.json").read_text())
    assert record == {"kind": "hub", "id": "tiny-org/tiny-sd", "revision": None, "commit": commit}

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from stages.models.diffusion import load_pipeline; p = load_pipeline(); "
            "print(type(p).__name__, p.unet.config.sample_size)",
        ],
        cwd=workdir.path,
        env={**stage_env(workdir.cache), **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["StableDiffusionPipeline", "16"]

    workdir.write_params(model={"base": "nobody/not-cached"})
    result = run_with_env(workdir, "set_up_diffusers", env_extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.base nobody/not-cached: cannot get it from the hub" in result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr


def test_local_model_folder_is_used_as_it_is(tmp_path, workdir):
    folder = tmp_path / "my-model"
    save_tiny_pipeline(folder)
    workdir.write_params(model={"base": str(folder)})
    workdir.run("set_up_diffusers")
    record = json.loads((workdir.path / "outputs/base_model/model.json").read_text())
    assert record["kind"] == "local" and record["path"] == str(folder.resolve())
    assert not (workdir.path / "outputs/base_model/pipeline").exists()  # not copied


def run_with_env(work: Workdir, stage: str, extra: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=work.path,
        env={**stage_env(work.cache), **extra},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
