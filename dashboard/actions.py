"""What the dashboard does to a repository: queue, run, apply, branch, rename, remove, push and
pull experiments, and start and stop the queue's workers. Every command goes through the dvc
CLI as an argument list, never a shell string: a param value such as `1; rm -rf ~` reaches DVC
as a literal string (and then fails validation), never a shell. No widgets here."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.dvc_cli import DvcError, dvc_env, dvc_executable, git, git_refs, run_dvc

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LOGS = Path(".dvc") / "tmp" / "dashboard"
EXPERIMENT_REF = re.compile(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+$")


def yaml_value(value: Any) -> str:
    """A value as `-S key=VALUE` wants it (DVC reads VALUE as YAML): JSON, which is YAML, with
    strings always quoted, so that `no`, `1e-4` or `1; rm -rf ~` stay what they are."""
    return json.dumps(value, ensure_ascii=False)


def set_args(assignments: Mapping[str, Any]) -> list[str]:
    return [
        arg for key, value in assignments.items() for arg in ("-S", f"{key}={yaml_value(value)}")
    ]


def check_name(name: str, what: str = "experiment name") -> str:
    """A name DVC and git accept; ValueError saying what is allowed otherwise."""
    if not NAME.match(name or ""):
        raise ValueError(
            f"{what} {name!r} is not allowed: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit (at most 100 characters)"
        )
    return name


@dataclass
class Launch:
    """One experiment to run: its name (None: DVC names it) and the params it changes."""

    assignments: dict[str, Any]
    name: str | None = None

    def args(self) -> list[str]:
        named = ["-n", check_name(self.name)] if self.name else []
        return [*named, *set_args(self.assignments)]


def expand_grid(choices: Mapping[str, list[Any]], prefix: str | None = None) -> list[Launch]:
    """Every combination of the values given per param ({rank: [4, 8], lr: [1e-4, 5e-4]} gives
    four), named `<prefix>-1`, `<prefix>-2`, ... when a prefix is given."""
    keys = list(choices)
    combinations = list(itertools.product(*(choices[key] for key in keys)))
    launches = []
    for number, values in enumerate(combinations, start=1):
        name = None
        if prefix:
            name = prefix if len(combinations) == 1 else f"{prefix}-{number}"
        launches.append(Launch(dict(zip(keys, values, strict=True)), name))
    return launches


def queue(repo: Path, launches: Iterable[Launch]) -> list[str]:
    """`dvc exp run --queue` for each launch; the names DVC gave them."""
    names = []
    for launch in launches:
        output = run_dvc(["exp", "run", "--queue", *launch.args()], repo, timeout=120)
        match = re.search(r"Queued experiment '([^']+)'", output)
        names.append(match[1] if match else launch.name or "")
    return names


def run_now(repo: Path, launch: Launch) -> tuple[subprocess.Popen, Path]:
    """Start `dvc exp run` in the workspace, in the background; its output goes to a log file
    under .dvc/tmp/dashboard. Returns the process and the log."""
    folder = Path(repo) / LOGS
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"run-{launch.name or 'workspace'}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [dvc_executable(), "exp", "run", *launch.args()], cwd=repo, stdout=output,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=dvc_env(),
        )  # fmt: skip
    return process, log


def queue_start(repo: Path, jobs: int = 1) -> str:
    if not 1 <= jobs <= 16:
        raise ValueError(f"workers must be between 1 and 16, not {jobs}")
    return run_dvc(["queue", "start", "-j", str(jobs)], repo)


def queue_stop(repo: Path, kill: bool = False) -> str:
    return run_dvc(["queue", "stop", *(["--kill"] if kill else [])], repo)


def queue_kill(repo: Path, names: list[str]) -> str:
    """Interrupt running queue tasks, as Ctrl-C would."""
    return run_dvc(["queue", "kill", *names], repo)


def queue_logs(repo: Path, name: str) -> str:
    return run_dvc(["queue", "logs", name], repo)


@dataclass
class QueueStatus:
    """What `dvc queue status` says: tasks by status and the workers."""

    tasks: list[dict[str, str]] = field(default_factory=list)
    active_workers: int = 0
    idle_workers: int = 0


def queue_status(repo: Path) -> QueueStatus:
    text = run_dvc(["queue", "status"], repo)
    status = QueueStatus()
    workers = re.search(r"Worker status: (\d+) active, (\d+) idle", text)
    if workers:
        status.active_workers, status.idle_workers = int(workers[1]), int(workers[2])
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", parts[0]):
            status.tasks.append({"task": parts[0], "name": parts[1], "status": parts[-1]})
    return status


def uncommitted_changes(repo: Path) -> list[str]:
    """Tracked files changed in the workspace (`git status --porcelain`), which `dvc exp apply`
    would overwrite."""
    status = git(repo, "status", "--porcelain", "--untracked-files=no")
    return [line[3:] for line in status.splitlines() if line.strip()]


def apply(repo: Path, name: str) -> str:
    return run_dvc(["exp", "apply", name], repo, timeout=300)


def branch(repo: Path, name: str, new_branch: str) -> str:
    return run_dvc(["exp", "branch", name, check_name(new_branch, "branch name")], repo)


def rename(repo: Path, name: str, new_name: str) -> str:
    return run_dvc(["exp", "rename", name, check_name(new_name)], repo)


def remove(repo: Path, names: list[str]) -> str:
    if not names:
        raise ValueError("no experiment to remove: pick some first")
    return run_dvc(["exp", "remove", *names], repo)


def remotes(repo: Path) -> list[str]:
    """The git remotes, where `dvc exp push` and `pull` send and fetch experiments."""
    return git(repo, "remote").split()


def dvc_remote(repo: Path) -> str | None:
    """The default DVC remote, where `dvc exp push` sends the outputs and `pull` fetches them;
    None when there is none (then only the git refs travel: params, metrics, plots files)."""
    from dvc.config import Config, ConfigError

    try:
        return Config(dvc_dir=str(repo / ".dvc"))["core"].get("remote")
    except ConfigError:
        return None  # a broken config: the dvc command itself says what is wrong


NO_DVC_REMOTE = (
    "The outputs (images, LoRA weights) stayed in this repository's cache: there is no default "
    "DVC remote. Add one with `dvc remote add -d storage <url>`, then push again."
)


def _check_remote(repo: Path, remote: str) -> None:
    if remote not in remotes(repo):
        raise DvcError(f"no git remote {remote!r}: add one with `git remote add {remote} <url>`")


def push(repo: Path, remote: str, names: list[str]) -> str:
    """`dvc exp push REMOTE NAMES`: the experiments' git refs to the git remote and their
    outputs to the default DVC remote. Returns what to tell the user."""
    _check_remote(repo, remote)
    said = run_dvc(["exp", "push", remote, *names], repo, timeout=600).strip()
    return said if dvc_remote(repo) else f"{said} {NO_DVC_REMOTE}"


def pull(repo: Path, remote: str) -> str:
    """`dvc exp pull REMOTE`: every experiment of HEAD that the git remote holds (a teammate's
    too), with their outputs from the default DVC remote. Returns what to tell the user."""
    _check_remote(repo, remote)
    before = experiment_refs(repo)
    run_dvc(["exp", "pull", remote], repo, timeout=600)
    after = experiment_refs(repo)
    names = sorted(ref.rsplit("/", 1)[1] for ref, sha in after.items() if before.get(ref) != sha)
    if not names:
        return f"Nothing new to pull: {remote} has no other experiments of this commit."
    fetched = "" if dvc_remote(repo) else " (only params, metrics and plots: no DVC remote)"
    return f"Pulled {', '.join(names)} from {remote}{fetched}."


def experiment_ref(baseline: str, name: str) -> str:
    """The full git ref of experiment `name` of baseline commit `baseline`
    (refs/exps/ab/cdef.../name): what every action passes to dvc, so that a name such as `-A`
    or `main` is never read as an option or a branch."""
    if not re.fullmatch(r"[0-9a-f]{40}", baseline or ""):
        raise ValueError(f"{baseline!r} is not a baseline commit sha")
    if not name or "/" in name:
        raise ValueError(f"{name!r} is not an experiment name")
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    assert EXPERIMENT_REF.match(ref)
    return ref


def experiment_refs(repo: Path) -> dict[str, str]:
    """{git ref: commit} of every experiment (refs/exps/<baseline>/<name>)."""
    return {ref: sha for ref, sha in git_refs(repo, "refs/exps").items()
            if EXPERIMENT_REF.match(ref)}  # fmt: skip
