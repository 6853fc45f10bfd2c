"""What the dashboard does to a repository: queue, run, apply, branch, rename, remove, push and
pull experiments, and start and stop the queue's workers. Every command goes through the dvc
CLI as an argument list, never a shell string: a param value such as `1; rm -rf ~` reaches DVC
as a literal string (and then fails validation), never a shell.

Experiments are handed to dvc by their full ref (refs/exps/ab/cdef.../name), or a queue task
by its id, always after `--`, never by their bare name: a teammate's experiment named `-A` would
be read as `--all-commits` (`dvc exp remove -A` removes every experiment), `-f` as `--force`,
and `main` as the git branch. Names made from the page are refused when they start with '-' or
are a git branch, tag or revision. No widgets here."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard import workspace
from dashboard.data import ExperimentState as S
from dashboard.dvc_cli import DvcError, dvc_env, dvc_executable, git, git_refs, run_dvc
from dashboard.locks import WorkspaceLock

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LOGS = Path(".dvc") / "tmp" / "dashboard"
EXPERIMENT_REF = re.compile(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+$")
TASK_ID = re.compile(r"^[0-9a-f]{40}$")  # a queue task (its stash commit)
# States of a queue task that has no experiment ref yet: dvc knows it by its id.
QUEUE_STATES = {S.QUEUED, S.RUNNING, S.LOST}


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


def git_name(repo: Path, name: str) -> str | None:
    """What `name` already is to git in `repo` ("a git branch", "a git tag", "a git revision"
    for HEAD, a remote or a commit sha), or None. DVC resolves git names before experiment
    names, so an experiment with such a name is ambiguous on the command line."""
    if git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}").strip():
        return "a git branch"
    if git(repo, "rev-parse", "--verify", "--quiet", f"refs/tags/{name}").strip():
        return "a git tag"
    if git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", name).strip():
        return "a git revision"
    return None


def check_new_name(repo: Path, name: str, what: str = "experiment name") -> str:
    """A name to create from the page (an experiment, a new name, a branch): check_name, and
    not a name git already resolves here (a branch, a tag, HEAD, a commit); ValueError
    otherwise."""
    check_name(name, what)
    taken = git_name(repo, name)
    if taken:
        raise ValueError(
            f"{what} {name!r} is taken: it is {taken} of this repository, and dvc "
            "would read it as that; choose another"
        )
    return name


def name_warning(repo: Path, name: str) -> str | None:
    """Why an experiment's name (a teammate's, pulled) would be misread if it were typed on a
    command line, or None: the page shows it as it is and acts on it by its full ref."""
    if name.startswith("-"):
        return "starts with '-': dvc would read it as an option"
    taken = git_name(repo, name)
    return f"is also {taken}" if taken else None


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


class QueueError(DvcError):
    """A grid that stopped part-way: the names queued before the failure (`queued`), the one
    that failed and why, and those not tried (`skipped`)."""

    def __init__(self, queued: list[str], failed: str, reason: str, skipped: list[str]):
        self.queued, self.failed, self.reason, self.skipped = queued, failed, reason, skipped
        parts = [f"queued {', '.join(queued)}" if queued else "nothing queued"]
        parts.append(f"{failed} failed: {reason}")
        if skipped:
            parts.append(f"{', '.join(skipped)} not queued")
        super().__init__("; ".join(parts))


def _label(launch: Launch, number: int) -> str:
    if launch.name:
        return launch.name
    return (
        f"#{number} ({', '.join(f'{k}={yaml_value(v)}' for k, v in launch.assignments.items())})"
    )


def check_launches(repo: Path, launches: Iterable[Launch]) -> list[Launch]:
    """The launches, each name checked (check_new_name) before any is run or queued."""
    launches = list(launches)
    for launch in launches:
        if launch.name:
            check_new_name(repo, launch.name)
        launch.args()  # every value must make an argument
    return launches


def queue(repo: Path, launches: Iterable[Launch]) -> list[str]:
    """`dvc exp run --queue` for each launch; the names DVC gave them. When one fails, the rest
    are not tried and QueueError says which were queued, which failed and why."""
    launches = check_launches(repo, launches)
    names: list[str] = []
    for number, launch in enumerate(launches, start=1):
        try:
            # a write (a stash commit and a queue message): never killed part-way
            output = run_dvc(["exp", "run", "--queue", *launch.args()], repo, write=True)
        except Exception as error:
            reason = (
                str(error) if isinstance(error, DvcError) else f"{type(error).__name__}: {error}"
            )
            skipped = [_label(other, n) for n, other in enumerate(launches, 1) if n > number]
            raise QueueError(names, _label(launch, number), reason, skipped) from error
        match = re.search(r"Queued experiment '([^']+)'", output)
        names.append(match[1] if match else launch.name or "")
    return names


@dataclass
class WorkspaceRun:
    """A `dvc exp run` in the workspace: its process, its log, and the workspace lock it holds
    until it ends (the dvc process holds it too: the lock outlives this kernel should it die).
    wait() waits for the end and releases the lock."""

    name: str
    process: subprocess.Popen
    log: Path
    lock: WorkspaceLock

    def wait(self) -> int:
        try:
            return self.process.wait()
        finally:
            self.lock.release()


def run_now(repo: Path, launch: Launch) -> WorkspaceRun:
    """Start `dvc exp run` in the workspace, in the background, holding the workspace lock
    (WorkspaceBusy, naming the holder, when another tab or process holds it: nothing is
    started and no log is touched); its output goes to a log file under .dvc/tmp/dashboard."""
    (launch,) = check_launches(repo, [launch])
    name = launch.name or "an experiment"
    lock = WorkspaceLock(repo, f"run {name} in the workspace").acquire()
    try:  # the log is opened only once the lock is held: a refused run never truncates it
        folder = Path(repo) / LOGS
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"run-{launch.name or 'workspace'}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [dvc_executable(), "exp", "run", *launch.args()],
                cwd=repo,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=dvc_env(),
                pass_fds=(lock.fd(),),
            )
    except OSError as error:
        lock.release()
        raise DvcError(f"cannot run `dvc exp run` for {name}: {error}") from error
    except BaseException:
        lock.release()
        raise
    return WorkspaceRun(name, process, log, lock)


def queue_start(repo: Path, jobs: int = 1) -> str:
    if not 1 <= jobs <= 16:
        raise ValueError(f"workers must be between 1 and 16, not {jobs}")
    return run_dvc(["queue", "start", "-j", str(jobs)], repo)


def queue_stop(repo: Path, kill: bool = False) -> str:
    return run_dvc(["queue", "stop", *(["--kill"] if kill else [])], repo)


def queue_kill(repo: Path, targets: list[Target]) -> str:
    """Interrupt running queue tasks (by their task ids), as Ctrl-C would."""
    tasks = [t.rev for t in targets if TASK_ID.match(t.rev)]
    if len(tasks) != len(targets) or not tasks:
        raise ValueError("only running queue tasks can be killed")
    return run_dvc(["queue", "kill", "--", *tasks], repo)


def queue_logs(repo: Path, task: str) -> str:
    """What a queue task printed; `task` is its name or id (after `--`: a name such as `-f`
    stays a name)."""
    return run_dvc(["queue", "logs", "--", task], repo)


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


def overwritten(repo: Path, target: Target) -> workspace.Overwritten:
    """What applying `target` would overwrite in the workspace now: edited tracked files,
    untracked files the experiment also has, changed DVC outputs (dashboard.workspace)."""
    (rev,) = _refs(repo, [target], "applied")
    return workspace.overwritten(repo, rev)


def apply(
    repo: Path,
    target: Target,
    shown: workspace.Overwritten | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """`dvc exp apply -- REF` under the workspace lock, after keeping the workspace as an undo
    entry (its number); ChangedSinceAsked, and nothing done, when more would be overwritten
    than `shown`. See dashboard.workspace.apply."""
    (rev,) = _refs(repo, [target], "applied")
    return workspace.apply(repo, rev, shown, started)


def undo(
    repo: Path,
    shown: workspace.UndoPlan | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> workspace.UndoEntry:
    """Bring back the workspace as it was before the newest apply, under the workspace lock;
    UndoChangedSinceAsked, and nothing done, when it would replace more than `shown` said
    (dashboard.workspace.undo)."""
    return workspace.undo(repo, shown, started)


def branch(repo: Path, target: Target, new_branch: str) -> str:
    """`dvc exp branch -- REF NEW_BRANCH`; the new branch must not exist (nor be any other git
    name here) and must not start with '-'."""
    check_new_name(repo, new_branch, "branch name")
    (ref,) = _refs(repo, [target], "made a branch of")
    return run_dvc(["exp", "branch", "--", ref, new_branch], repo, write=True)


def rename(repo: Path, target: Target, new_name: str) -> str:
    """`dvc exp rename -- REF NEW_NAME`, the new name checked as a new experiment's."""
    check_new_name(repo, new_name)
    (ref,) = _refs(repo, [target], "renamed")
    return run_dvc(["exp", "rename", "--", ref, new_name], repo, write=True)


def remove(repo: Path, targets: list[Target]) -> str:
    """`dvc exp remove -- REVS`: finished experiments by ref, queue tasks by id, each checked
    first to be what was picked (a ref that moved or went: nothing is removed)."""
    if not targets:
        raise ValueError("no experiment to remove: pick some first")
    verify(repo, targets)
    return run_dvc(["exp", "remove", "--", *_revs(targets)], repo, write=True)


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
    if not remote or remote.startswith("-") or remote not in remotes(repo):
        raise DvcError(f"no git remote {remote!r}: add one with `git remote add {remote} <url>`")


def push(repo: Path, remote: str, targets: list[Target]) -> str:
    """`dvc exp push -- REMOTE REFS`: the experiments' git refs to the git remote (never
    forced: a diverged one is reported, not overwritten) and their outputs to the default DVC
    remote. Returns what to tell the user."""
    _check_remote(repo, remote)
    if not targets:
        raise ValueError("pick the experiments to push first")
    refs = _refs(repo, targets, "pushed")
    said = run_dvc(["exp", "push", "--", remote, *refs], repo, write=True).strip()
    return said if dvc_remote(repo) else f"{said} {NO_DVC_REMOTE}"


def pull(repo: Path, remote: str) -> str:
    """`dvc exp pull REMOTE`: every experiment of HEAD that the git remote holds (a teammate's
    too), with their outputs from the default DVC remote. Returns what to tell the user."""
    _check_remote(repo, remote)
    before = experiment_refs(repo)
    run_dvc(["exp", "pull", "--", remote], repo, write=True)
    after = experiment_refs(repo)
    names = sorted(ref.rsplit("/", 1)[1] for ref, sha in after.items() if before.get(ref) != sha)
    if not names:
        return f"Nothing new to pull: {remote} has no other experiments of this commit."
    fetched = "" if dvc_remote(repo) else " (only params, metrics and plots: no DVC remote)"
    said = f"Pulled {', '.join(names)} from {remote}{fetched}."
    odd = {name: why for name in names if (why := name_warning(repo, name))}
    if odd:  # shown as they are, and acted on by their full ref: nothing misreads them
        said += (
            " Named like something else: "
            + "; ".join(f"{name!r} {why}" for name, why in odd.items())
            + ". The page acts on them by their full ref; Rename gives them a plain name."
        )
    return said


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
    return {
        ref: sha for ref, sha in git_refs(repo, "refs/exps").items() if EXPERIMENT_REF.match(ref)
    }


@dataclass(frozen=True)
class Target:
    """An experiment as the dashboard hands it to dvc, never by its bare name: `rev` is its full
    ref (refs/exps/ab/cdef.../name) and `commit` the commit that ref pointed to when it was
    picked; or, for a queue task that has no ref yet (queued, running, failed in the queue),
    `rev` is the task's id and `commit` None."""

    name: str
    rev: str
    commit: str | None = None


def target(repo: Path, row: Mapping[str, Any]) -> Target:
    """The Target of an experiment row of the table (its `parent`, `name`, `state`, `id`),
    checked against the repository now: DvcError when its ref went or moved since the table
    was read (another tab removed or replaced it)."""
    name, state, rev = str(row["name"]), row.get("state"), str(row.get("id") or "")
    if state not in QUEUE_STATES:
        ref = experiment_ref(str(row.get("parent") or ""), name)
        commit = git(repo, "rev-parse", "--verify", "--quiet", ref).strip()
        if commit:
            if commit != rev:
                raise DvcError(
                    f"{name} changed since the table was read: its ref now points "
                    f"to {commit[:7]}, not {rev[:7]}; look again"
                )
            return Target(name, ref, commit)
        if state != S.FAILED:  # a failed queue task has no ref: dvc knows it by its id
            raise DvcError(
                f"{name} is gone: no experiment ref {ref} (removed, maybe from another tab)"
            )
    if not TASK_ID.match(rev):
        raise DvcError(f"{name} has no experiment ref nor queue task id to act on")
    return Target(name, rev)


def verify(repo: Path, targets: Iterable[Target]) -> None:
    """DvcError, and nothing done, unless every ref still points where it did when it was
    picked (`git rev-parse --verify`): a Confirm acts on what the question named, not on what
    another tab put under that name since."""
    problems = []
    for item in targets:
        if item.commit is None:
            continue  # a task id names one task for good
        now = git(repo, "rev-parse", "--verify", "--quiet", item.rev).strip()
        if not now:
            problems.append(f"{item.name} was removed")
        elif now != item.commit:
            problems.append(
                f"{item.name} was replaced by another experiment of that name "
                f"({now[:7]}, was {item.commit[:7]})"
            )
    if problems:
        raise DvcError(
            f"nothing done: {'; '.join(problems)} since it was picked, maybe from "
            "another tab; look at the table again"
        )


def _revs(targets: Iterable[Target]) -> list[str]:
    """The revs to pass to dvc after `--`: only full experiment refs and queue task ids."""
    revs = [item.rev for item in targets]
    for rev in revs:
        if not (EXPERIMENT_REF.match(rev) or TASK_ID.match(rev)):
            raise ValueError(f"{rev!r} is neither an experiment ref nor a queue task id")
    return revs


def _refs(repo: Path, targets: list[Target], done: str) -> list[str]:
    """The refs of finished experiments, checked (verify); ValueError for a queue task."""
    tasks = [item.name for item in targets if item.commit is None]
    if tasks:
        raise ValueError(f"{', '.join(tasks)}: only a finished experiment can be {done}")
    verify(repo, targets)
    return _revs(targets)
