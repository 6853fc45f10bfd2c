"""Real git + DVC repositories for the prompt playground's tests, benchmark and browser tests:
what the playground reads (outputs/base_model/model.json and the shipped tiny model,
outputs/lora/pytorch_lora_weights.safetensors: a real diffusers LoRA for that UNet), and what the
dashboard's table and gallery read (the quick pipeline's metrics, curves and images), each made
in seconds instead of a training run.

The repository's pipeline has three stages:

    base_model  copies the shipped tiny pipeline (stages/models/tiny_sd/pretrained) into
                outputs/base_model/pipeline and records it in model.json, as set_up_diffusers
                does for `model.base: tiny`
    lora        a peft LoRA on the UNet's to_q, to_k, to_v, to_out.0 with train_lora.rank and
                .alpha, its lora_B weights drawn from a generator seeded by base.seed, the rank
                and the learning rate and scaled by train_lora.learning_rate (no training: each
                experiment's LoRA differs visibly from the others), saved by
                stages.models.lora.save_lora as train_lora saves it
    quick       bench/harness/quick_pipeline/stage.py: metrics, curves and generated images

Every output is DVC-tracked, so each `dvc exp run` experiment has its own LoRA in the cache.
The stages' script is this very file, copied into the repository as playground_stage.py (run
as `python playground_stage.py <stage>`), so it imports only the standard library and yaml at
its top; torch is imported by the lora stage alone.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import yaml

STAGE_SCRIPT = "playground_stage.py"
BASE_PIPELINE = Path("outputs/base_model/pipeline")
BASE_RECORD = Path("outputs/base_model/model.json")
LORA_DIR = Path("outputs/lora")
LORA_WEIGHTS = LORA_DIR / "pytorch_lora_weights.safetensors"
# lora_B ~ N(0, (learning_rate * STRENGTH)^2): at the default 1e-3 the LoRA changes the
# tiny model's images clearly without turning them to noise.
STRENGTH = 400.0
PLAYGROUND_PARAMS = {"train_lora": {"rank": 4, "alpha": 4.0}}

PIPELINE = {
    "base_model": {
        "cmd": f"python {STAGE_SCRIPT} base_model",
        "deps": [STAGE_SCRIPT],
        "outs": ["outputs/base_model"],
    },
    "lora": {
        "cmd": f"python {STAGE_SCRIPT} lora",
        "deps": [STAGE_SCRIPT, "outputs/base_model"],
        "params": [
            "base.seed",
            "train_lora.rank",
            "train_lora.alpha",
            "train_lora.learning_rate",
            "train_lora.target_modules",
        ],
        "outs": ["outputs/lora"],
    },
}


# ---------------------------------------------------------------------------------------------
# The repository (run by the tests and the benchmark, from this checkout).


def make_playground_repo(path: Path, **params: dict) -> Path:
    """A committed git + DVC repository at `path` whose pipeline has run once: the workspace
    has a base model and a LoRA. `params` overrides params.yaml sections. About 10 s on 2
    cores (the lora stage's torch import is most of it)."""
    from bench.harness.project import default_params, merged
    from bench.harness.quick_repo import QUICK, QUICK_PARAMS, commit_baseline

    path.mkdir(parents=True)
    shutil.copy2(QUICK / "stage.py", path / "stage.py")
    shutil.copy2(Path(__file__), path / STAGE_SCRIPT)
    quick = yaml.safe_load((QUICK / "pipeline.yaml").read_text(encoding="utf-8"))
    pipeline = {"stages": {**PIPELINE, **quick["stages"]}, "plots": quick["plots"]}
    (path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    values = merged(merged(merged(default_params(), QUICK_PARAMS), PLAYGROUND_PARAMS), params)
    (path / "params.yaml").write_text(yaml.safe_dump(values, allow_unicode=True, sort_keys=False))
    return commit_baseline(path)


def add_playground_experiment(repo: Path, name: str, *assignments: str) -> str:
    """`dvc exp run -n name -S a=b ...` (in the workspace, about 8 s); returns the experiment's
    full commit sha, the rev a playground column takes."""
    from bench.harness.quick_repo import exp_run

    exp_run(repo, name, *assignments)
    return experiment_sha(repo, name)


def experiment_sha(repo: Path, name: str) -> str:
    from bench.harness.quick_repo import run

    listing = run(repo, "git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    for line in listing.splitlines():
        sha, ref = line.split(" ", 1)
        if ref.endswith("/" + name) and "/exec/" not in ref:
            return sha
    raise KeyError(f"no experiment named {name} in {repo}")


def lost_lora_experiment(repo: Path, template: str, name: str) -> str:
    """An experiment made with git plumbing from the experiment `template` whose dvc.lock names
    a LoRA that this repository's DVC cache does not hold, as an experiment pulled with git
    alone (without `dvc exp pull`) is; returns its commit sha. Instant."""
    from dashboard.dvc_cli import dvc_env

    index = repo / ".git" / "playground-index"
    env = dvc_env() | {"GIT_INDEX_FILE": str(index)}

    def git(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, env=env, input=stdin, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    source = experiment_sha(repo, template)
    ref = next(
        line.split(" ", 1)[1]
        for line in git(
            "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"
        ).splitlines()
        if line.startswith(source)
    )
    lock = yaml.safe_load(git("show", f"{source}:dvc.lock"))
    for out in lock["stages"]["lora"]["outs"]:
        out["md5"] = "0" * 32 + ".dir"
    git("read-tree", source)
    blob = git("hash-object", "-w", "--stdin", stdin=yaml.safe_dump(lock, sort_keys=False))
    git("update-index", "--add", "--cacheinfo", f"100644,{blob},dvc.lock")
    tree = git("write-tree")
    commit = git("commit-tree", tree, "-p", f"{source}^", "-m", name)
    git("update-ref", f"{ref.rsplit('/', 1)[0]}/{name}", commit)
    index.unlink(missing_ok=True)
    return commit


# ---------------------------------------------------------------------------------------------
# The stages (run by DVC inside the repository, as playground_stage.py).


def shipped_pipeline() -> Path:
    """stages/models/tiny_sd/pretrained of the installed project, found without importing
    stages.models (which imports torch)."""
    spec = importlib.util.find_spec("stages")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the project's `stages` package is not importable: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "tiny_sd" / "pretrained"


def base_model_stage() -> None:
    """The shipped tiny pipeline (float16, as shipped: load_pipeline upcasts it) and its
    record, with the path relative to the repository as set_up_diffusers writes it."""
    if BASE_PIPELINE.parent.exists():
        shutil.rmtree(BASE_PIPELINE.parent)
    shutil.copytree(shipped_pipeline(), BASE_PIPELINE)
    record = {"kind": "tiny", "path": BASE_PIPELINE.as_posix(), "fingerprint": "playground"}
    BASE_RECORD.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def lora_seed(seed: int, rank: int, learning_rate: float) -> int:
    return zlib.crc32(f"{seed}:{rank}:{learning_rate!r}".encode())


def lora_stage() -> None:
    """A real diffusers-format LoRA for the tiny UNet, without training."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from stages.models.lora import save_lora

    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    lora, seed = params["train_lora"], int(params["base"]["seed"])
    rank, learning_rate = int(lora["rank"]), float(lora["learning_rate"])
    unet = UNet2DConditionModel.from_pretrained(BASE_PIPELINE, subfolder="unet")
    unet.requires_grad_(False)
    torch.manual_seed(lora_seed(seed, rank, learning_rate))  # peft draws lora_A from it
    config = LoraConfig(
        r=rank,
        lora_alpha=float(lora["alpha"]),
        init_lora_weights=True,
        target_modules=list(lora["target_modules"]),
    )
    unet.add_adapter(config)
    generator = torch.Generator().manual_seed(lora_seed(seed, rank, learning_rate) + 1)
    with torch.no_grad():
        for name, parameter in sorted(unet.named_parameters()):
            if "lora_B" in name:
                drawn = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(drawn * learning_rate * STRENGTH)
    if LORA_DIR.exists():
        shutil.rmtree(LORA_DIR)
    LORA_DIR.mkdir(parents=True)
    save_lora(LORA_DIR, unet, None)


STAGES = {"base_model": base_model_stage, "lora": lora_stage}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: python {STAGE_SCRIPT} {{{','.join(STAGES)}}}")
    STAGES[sys.argv[1]]()
