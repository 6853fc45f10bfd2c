"""Real DVC repositories with a quick stand-in pipeline (bench/harness/quick_pipeline), for the
dashboard's tests and benchmark: real git, real `dvc repro` and `dvc exp run`, in seconds."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from bench.harness.project import REPO, default_params, merged
from dashboard.dvc_cli import dvc_env

QUICK = Path(__file__).parent / "quick_pipeline"
# Six seeds a prompt: the tests count gallery rows for these, whatever the real default is.
QUICK_PARAMS = {
    "resize": {"size": 48},
    "train_lora": {"max_steps": 40},
    "generate": {"seeds": [0, 1, 2, 3, 4, 5]},
}


def run(repo: Path, *command: str, timeout: float = 300) -> str:
    result = subprocess.run(
        command,
        cwd=repo,
        env=dvc_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def make_quick_repo(path: Path, **params: dict) -> Path:
    """A committed git + DVC repository at `path` whose pipeline has run once."""
    path.mkdir(parents=True)
    shutil.copy2(QUICK / "stage.py", path / "stage.py")
    shutil.copy2(QUICK / "pipeline.yaml", path / "dvc.yaml")  # not dvc.yaml here: DVC would
    # take it for a second pipeline of this repository
    values = merged(merged(default_params(), QUICK_PARAMS), params)
    (path / "params.yaml").write_text(yaml.safe_dump(values, allow_unicode=True, sort_keys=False))
    return commit_baseline(path)


def commit_baseline(path: Path) -> Path:
    """Make the folder holding a pipeline and its params.yaml a git + DVC repository (with
    this project's DVC config), run the pipeline once and commit it all as the baseline."""
    (path / ".gitignore").write_text("__pycache__/\n")
    run(path, "git", "init", "-q", "-b", "main")
    run(path, "git", "config", "user.email", "test@example.com")
    run(path, "git", "config", "user.name", "test")
    run(path, "dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", path / ".dvc" / "config")
    run(path, "dvc", "repro", "-q")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "baseline")
    return path


def exp_run(repo: Path, name: str, *assignments: str) -> str:
    """`dvc exp run -n name -S a=b ...`; returns dvc's output."""
    sets = [arg for assignment in assignments for arg in ("-S", assignment)]
    return run(repo, "dvc", "exp", "run", "-q", "-n", name, *sets)


def clone_experiments(repo: Path, template: str, count: int) -> list[str]:
    """`count` more experiments made with git plumbing from the experiment `template` (a ref
    under refs/exps), each with its own train_lora.learning_rate and metrics: DVC lists them as
    experiments like any other (`dvc exp show`), in seconds instead of a run each."""
    refs = run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").splitlines()
    ref = next(line for line in refs if line.endswith("/" + template))
    folder = ref.rsplit("/", 1)[0]
    names = []
    tmp_index = repo / ".git" / "bench-index"
    plumbing_env = dvc_env() | {"GIT_INDEX_FILE": str(tmp_index)}

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=repo,
            env=plumbing_env,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    parent = git("rev-parse", f"{ref}^")
    params = yaml.safe_load(git("show", f"{ref}:params.yaml"))
    metrics = yaml.safe_load(git("show", f"{ref}:outputs/evaluate/metrics.json"))
    for number in range(count):
        name = f"bulk-{number:04d}"
        params["train_lora"]["learning_rate"] = round(1e-5 * (number + 1), 8)
        params["train_lora"]["rank"] = [2, 4, 8, 16][number % 4]
        metrics["type_fidelity_lora"] = round((number * 7919 % 1000) / 1000, 3)
        git("read-tree", ref)
        for file, data in (
            ("params.yaml", yaml.safe_dump(params, sort_keys=False)),
            ("outputs/evaluate/metrics.json", json.dumps(metrics)),
        ):
            blob = git("hash-object", "-w", "--stdin", stdin=data)
            git("update-index", "--add", "--cacheinfo", f"100644,{blob},{file}")
        tree = git("write-tree")
        commit = git("commit-tree", tree, "-p", parent, "-m", name)
        git("update-ref", f"{folder}/{name}", commit)
        names.append(name)
    tmp_index.unlink(missing_ok=True)
    return names
