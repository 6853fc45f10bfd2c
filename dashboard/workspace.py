"""What applying an experiment overwrites in the workspace, a copy of it kept first, and Undo.

`dvc exp apply` (DVC 3.67) always overwrites: it stashes the workspace in refs/exps/apply/stash,
checks the experiment out by force, copies back only the files that the experiment does not have,
and checks its outputs out by force; the next apply clears that stash. So before each apply from
the page, the whole workspace is kept under refs of the project's own, which no dvc command
touches, as entry <n>:

- `refs/pokemon-lora/undo/<n>/before`: a commit, made with a private index (GIT_INDEX_FILE, the
  real index is never touched), of every file git can see as it was on disk: tracked files with
  their edits and deletions, untracked files that are not ignored, and ignored files that the
  experiment would overwrite. Its first parent is HEAD, its second holds the index (what was
  staged); its message is the entry's manifest (JSON).
- `.dvc/tmp/dashboard/undo/<n>/outputs/`: copies of the DVC outputs (git ignores them) that
  were changed since the last `dvc commit` or checkout, or whose recorded version is not in the
  DVC cache; the outputs as recorded in dvc.lock come back from the cache.
- `refs/pokemon-lora/undo/<n>/after`: the same snapshot right after the apply, to tell what was
  changed since then.

`undo` restores the newest entry and drops it, so a second undo goes one apply further back. The
newest KEEP entries are kept; older ones are dropped when a new one is made. No widgets here."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dashboard.dvc_cli import DvcError, git, git_refs, git_write, run_dvc
from dashboard.locks import WorkspaceLock

UNDO_REFS = "refs/pokemon-lora/undo"
UNDO_FILES = Path(".dvc") / "tmp" / "dashboard" / "undo"
KEEP = 10  # undo entries kept; the oldest goes when an apply makes the eleventh
# The entries' commits are the dashboard's, whoever has (or has not) set user.name.
AUTHOR = {
    "GIT_AUTHOR_NAME": "pokemon-lora dashboard",
    "GIT_AUTHOR_EMAIL": "dashboard@localhost",
    "GIT_COMMITTER_NAME": "pokemon-lora dashboard",
    "GIT_COMMITTER_EMAIL": "dashboard@localhost",
}


@dataclass
class Overwritten:
    """What applying experiment `experiment` (commit `rev`) overwrites in the workspace now.

    edited: tracked files changed in the workspace (or deleted) that the experiment has in
    another version; untracked: files git does not track that the experiment has in another
    version (`ignored` says which of them git ignores); outputs: {DVC output: what changed}
    for outputs changed since the last `dvc commit` or checkout, or whose recorded version is
    not in the DVC cache. `missing`: outputs absent from the workspace (nothing to keep; Undo
    takes them away again)."""

    experiment: str
    rev: str
    edited: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def paths(self) -> set[str]:
        return {*self.edited, *self.untracked, *self.outputs}

    def grew(self, since: Overwritten) -> list[str]:
        """What is overwritten now and was not in `since` (what the person was shown)."""
        if self.rev != since.rev:
            return [f"the experiment itself (now commit {self.rev[:7]})"]
        return sorted(self.paths() - since.paths())

    def __bool__(self) -> bool:
        return bool(self.paths())

    def lines(self) -> list[str]:
        """One line per group, for a message."""
        groups = []
        if self.edited:
            groups.append(f"edited files: {', '.join(self.edited)}")
        if self.untracked:
            groups.append(f"untracked files: {', '.join(self.untracked)}")
        if self.outputs:
            shown = ", ".join(f"{path} ({what})" for path, what in self.outputs.items())
            groups.append(f"changed outputs: {shown}")
        return groups


class ChangedSinceAsked(DvcError):
    """The workspace changed between the question and Confirm: more would be overwritten than
    the person was shown. Nothing was done; `now` is what would be overwritten now."""

    def __init__(self, now: Overwritten, new: list[str]):
        super().__init__(
            f"more would be overwritten than was shown ({', '.join(new)}): nothing was applied"
        )
        self.now = now
        self.new = new


# ----- git plumbing -----------------------------------------------------------------------------
def _nul(text: str) -> list[str]:
    return [part for part in text.split("\0") if part]


def _resolve(repo: Path, ref: str) -> str:
    """The commit of `ref` (a full experiment ref), or DvcError when it is gone."""
    sha = git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if not re.fullmatch(r"[0-9a-f]{40}\s*", sha):
        raise DvcError(
            f"experiment {ref} no longer exists (removed or renamed?): refresh the page"
        )
    return sha.strip()


def _head(repo: Path) -> str:
    sha = git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").strip()
    if not sha:
        raise DvcError("the repository has no commit yet: commit first, then apply")
    return sha


@contextlib.contextmanager
def _private_index(repo: Path, copy: bool = True) -> Iterator[dict[str, str]]:
    """The environment of a git index of our own (a copy of the real one, for its stat cache):
    `git add` there never changes what the person staged."""
    real = Path(repo) / git(repo, "rev-parse", "--git-path", "index").strip()
    with tempfile.TemporaryDirectory(prefix="dashboard-index-") as folder:
        index = Path(folder) / "index"
        if copy and real.is_file():
            shutil.copyfile(real, index)
        yield {"GIT_INDEX_FILE": str(index), "GIT_LITERAL_PATHSPECS": "1"}


def _snapshot(repo: Path, forced: Iterable[str] = ()) -> str:
    """The tree of every file git can see in the workspace as it is on disk (tracked, untracked
    and not ignored, and the ignored `forced` ones); its blobs go into git's object store."""
    forced = list(forced)
    with _private_index(repo) as env:
        git_write(repo, "add", "--all", "--", ".", env=env)
        if forced:
            git_write(
                repo,
                "add",
                "--force",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
                env=env,
                input="\0".join(forced),
            )
        return git_write(repo, "write-tree", env=env).strip()


def _index_tree(repo: Path) -> str | None:
    """The tree of what is staged; None when the index cannot be written (a merge conflict)."""
    with _private_index(repo) as env:
        try:
            return git_write(repo, "write-tree", env=env).strip()
        except DvcError:
            return None


def _tree_paths(repo: Path, rev: str) -> set[str]:
    return set(_nul(git_write(repo, "ls-tree", "-r", "-z", "--name-only", rev)))


def _differences(repo: Path, old: str, new: str) -> dict[str, str]:
    """{path: A, D, M or T} of the files that differ from tree-ish `old` to `new`."""
    parts = _nul(
        git_write(repo, "diff-tree", "-r", "-z", "--no-renames", "--name-status", old, new)
    )
    return {path: status[0] for status, path in zip(parts[::2], parts[1::2], strict=True)}


def _ignored(repo: Path, paths: list[str]) -> list[str]:
    if not paths:
        return []
    result = subprocess.run(
        ["git", "check-ignore", "-z", "--stdin"],
        cwd=repo,
        input="\0".join(paths),
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        env={**os.environ, "GIT_LITERAL_PATHSPECS": "1"},
    )
    return _nul(result.stdout)  # exit 1 when none is ignored


def _commit(repo: Path, tree: str, parents: list[str], message: str) -> str:
    args = [arg for parent in parents for arg in ("-p", parent)]
    return git_write(
        repo, "commit-tree", tree, *args, "-F", "-", env=AUTHOR, input=message
    ).strip()


# ----- DVC outputs -------------------------------------------------------------------------------
def _outputs(repo: Path) -> tuple[dict[str, str], list[str]]:
    """({output: what changed} for cached outputs changed since the last `dvc commit` or
    checkout or not in the cache, [outputs absent from the workspace]), from DVC's own data
    status (`dvc data status --granular`)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logger = logging.getLogger("dvc")  # its log lines would land in the page
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with Repo(str(repo)) as dvc:
            root = Path(dvc.root_dir)
            outs = sorted(
                {
                    Path(os.path.relpath(out.fs_path, root)).as_posix()
                    for out in dvc.index.outs
                    if out.use_cache
                },
                key=len,
                reverse=True,
            )
            status = dvc.data_status(granular=True, with_renames=False)
    except DvcException as error:
        raise DvcError(f"dvc cannot tell which outputs changed: {error}") from None
    finally:
        logger.setLevel(level)

    def owner(path: str) -> str | None:
        path = path.rstrip("/")
        return next((out for out in outs if path == out or path.startswith(out + "/")), None)

    counts: dict[str, dict[str, int]] = {}
    for kind, paths in (status.get("uncommitted") or {}).items():
        for path in paths:
            out = owner(path) if isinstance(path, str) else None
            if out is None:
                continue
            kinds = counts.setdefault(out, {})
            if path.rstrip("/") != out or not path.endswith("/"):  # not a folder's own entry
                kinds[kind] = kinds.get(kind, 0) + 1
    uncached = {owner(path) for path in status.get("not_in_cache") or [] if owner(path)}
    changed, missing = {}, []
    for out in sorted(outs):
        if not os.path.lexists(root / out):
            missing.append(out)
            continue
        said = []
        if out in counts:
            kinds = counts[out]
            files = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            if (root / out).is_file() or not files:
                said.append(", ".join(sorted(kinds)) or "changed")
            else:
                said.append(f"files {files}")
        if out in uncached:
            said.append("not in the DVC cache: this is its only copy")
        if said:
            changed[out] = "; ".join(said)
    return changed, missing


def _copy(source: Path, destination: Path) -> None:
    """A copy of a file or folder (symlinks into the DVC cache copied as their content): never a
    hard link, which a later edit in place would change too."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, symlinks=False)
    else:
        shutil.copy2(source, destination)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# ----- what apply overwrites ---------------------------------------------------------------------
def overwritten(repo: Path, ref: str) -> Overwritten:
    """What applying experiment `ref` would overwrite in the workspace now (see Overwritten)."""
    repo = Path(repo)
    rev = _resolve(repo, ref)
    head = _head(repo)
    in_experiment = _tree_paths(repo, rev)
    tracked = _tree_paths(repo, head) | set(_nul(git(repo, "ls-files", "-z")))
    # `git checkout --force` also overwrites ignored files the experiment tracks; no stash has them
    candidates = [
        path
        for path in sorted(in_experiment - tracked)
        if (repo / path).is_file() or (repo / path).is_symlink()
    ]
    ignored = _ignored(repo, candidates)
    workspace = _snapshot(repo, ignored)
    differs = _differences(repo, rev, workspace)  # from the experiment's version to the disk's
    what = Overwritten(ref, rev, ignored=ignored)
    for path in _differences(repo, head, workspace):  # the person's changes
        if path not in in_experiment or differs.get(path) not in {"M", "T", "D"}:
            continue  # the experiment lacks it (dvc copies it back) or has the same content
        (what.edited if path in tracked else what.untracked).append(path)
    what.outputs, what.missing = _outputs(repo)
    return what


# ----- undo entries ------------------------------------------------------------------------------
@dataclass
class UndoEntry:
    """One kept workspace: its number, the commits, and its manifest."""

    number: int
    before: str
    after: str | None
    manifest: dict[str, Any]

    @property
    def experiment(self) -> str:
        return self.manifest["experiment"].rsplit("/", 1)[-1]

    @property
    def kept(self) -> Overwritten:
        """What the apply overwrote: what this entry brings back besides the params and lock."""
        fields = {
            k: self.manifest["overwritten"][k]
            for k in ("experiment", "rev", "edited", "untracked", "ignored", "outputs", "missing")
        }
        return Overwritten(**fields)

    def folder(self, repo: Path) -> Path:
        return Path(repo) / UNDO_FILES / str(self.number)


def entries(repo: Path) -> list[UndoEntry]:
    """The kept workspaces, oldest first."""
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", UNDO_REFS)
    found: dict[int, dict[str, str]] = {}
    for line in refs.splitlines():
        match = re.fullmatch(rf"{UNDO_REFS}/(\d+)/(before|after) ([0-9a-f]{{40}})", line)
        if match:
            found.setdefault(int(match[1]), {})[match[2]] = match[3]
    kept = []
    for number in sorted(found):
        if "before" not in found[number]:
            continue
        message = git(repo, "log", "-1", "--format=%B", found[number]["before"])
        try:
            manifest = json.loads(message.split("\n", 2)[2])
        except (IndexError, ValueError):
            continue  # not one of ours
        kept.append(
            UndoEntry(number, found[number]["before"], found[number].get("after"), manifest)
        )
    return kept


def has_undo(repo: Path) -> bool:
    """Whether an undo entry exists (one `git for-each-ref`: cheap enough for every refresh)."""
    return any(ref.endswith("/before") for ref in git_refs(repo, UNDO_REFS))


def latest(repo: Path) -> UndoEntry | None:
    found = entries(repo)
    return found[-1] if found else None


def _drop(repo: Path, entry_number: int) -> None:
    for side in ("after", "before"):
        git(repo, "update-ref", "-d", f"{UNDO_REFS}/{entry_number}/{side}")
    shutil.rmtree(Path(repo) / UNDO_FILES / str(entry_number), ignore_errors=True)


def save(repo: Path, what: Overwritten) -> int:
    """Keep the workspace as it is now (all of it: what `what` says will be overwritten, and the
    rest, params.yaml and dvc.lock included) as a new undo entry; its number. Drops the entries
    older than the newest KEEP."""
    repo = Path(repo)
    head = _head(repo)
    found = entries(repo)
    number = max((entry.number for entry in found), default=0) + 1
    while git(repo, "rev-parse", "--verify", "--quiet", f"{UNDO_REFS}/{number}/before"):
        number += 1  # a ref that is not one of ours: leave it
    folder = repo / UNDO_FILES / str(number)
    _remove(folder)
    try:
        for out in what.outputs:
            _copy(repo / out, folder / "outputs" / out)
        index = _index_tree(repo)
        tree = _snapshot(repo, what.ignored)
        manifest = {
            "experiment": what.experiment,
            "head": head,
            "index": index,
            "outputs_saved": sorted(what.outputs),
            "overwritten": asdict(what),
        }
        (folder / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        parents = [head]
        if index:
            parents.append(_commit(repo, index, [head], "the index (what was staged)"))
        name = what.experiment.rsplit("/", 1)[-1]
        message = f"before applying {name}\n\n{json.dumps(manifest, indent=1)}\n"
        before = _commit(repo, tree, parents, message)
        git_write(repo, "update-ref", f"{UNDO_REFS}/{number}/before", before)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for old in found[: max(0, len(found) + 1 - KEEP)]:
        _drop(repo, old.number)
    return number


def _mark_after(repo: Path, number: int, before: str) -> None:
    tree = _snapshot(repo)
    after = _commit(repo, tree, [before], "right after the apply")
    git_write(repo, "update-ref", f"{UNDO_REFS}/{number}/after", after)


def apply(
    repo: Path,
    ref: str,
    shown: Overwritten | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Apply experiment `ref` (its full ref) to the workspace, under the workspace lock: check
    again what it overwrites; when more than `shown` (what the person confirmed), raise
    ChangedSinceAsked and do nothing; else keep the workspace as an undo entry, then
    `dvc exp apply -- ref` (never killed part-way; `started` gets its process, which
    dvc_cli.interrupt cancels cleanly). Returns the undo entry's number."""
    repo = Path(repo)
    name = ref.rsplit("/", 1)[-1]
    with WorkspaceLock(repo, f"apply {name}"):
        now = overwritten(repo, ref)
        if shown is not None and (new := now.grew(shown)):
            raise ChangedSinceAsked(now, new)
        number = save(repo, now)
        before = git(repo, "rev-parse", f"{UNDO_REFS}/{number}/before").strip()
        try:
            run_dvc(["exp", "apply", "--", ref], repo, write=True, started=started)
        except DvcError as error:
            raise DvcError(
                f"{error}. The workspace as it was before is kept: Undo brings it back"
            ) from error
        finally:
            with contextlib.suppress(DvcError):  # never hides why the apply failed
                _mark_after(repo, number, before)
    return number


# ----- undo --------------------------------------------------------------------------------------
@dataclass
class UndoPlan:
    """What undoing `entry` does now: the files it writes and deletes, and which of them (and of
    the outputs) were changed since the apply, which Undo replaces by the kept version."""

    entry: UndoEntry
    write: list[str]
    delete: list[str]
    changed_since: list[str]
    outputs_changed_since: dict[str, str]

    def replaced(self) -> set[str]:
        return {*self.changed_since, *self.outputs_changed_since}


def undo_plan(repo: Path) -> UndoPlan | None:
    """What Undo would do now; None when there is nothing to undo."""
    repo = Path(repo)
    entry = latest(repo)
    if entry is None:
        return None
    head = _head(repo)
    if head != entry.manifest["head"]:
        raise DvcError(
            f"HEAD moved since {entry.experiment} was applied (a commit or another branch): Undo "
            f"would mix two commits. The kept files are in {UNDO_REFS}/{entry.number}/before "
            f"(`git checkout {UNDO_REFS}/{entry.number}/before -- <file>`)"
        )
    now = _snapshot(repo)
    brought = _tree_paths(repo, entry.manifest["overwritten"]["rev"])
    if entry.after:
        brought |= _tree_paths(repo, entry.after)
    write, delete = [], []
    for path, status in _differences(repo, now, entry.before).items():
        if status != "D":
            write.append(path)
        elif path in brought:  # the apply brought it; a file made since is left alone
            delete.append(path)
    touched = {*write, *delete}
    # without an after snapshot (the apply never finished) what it changed cannot be told apart
    since = set(_differences(repo, entry.after, now)) if entry.after else touched
    outputs_now, _ = _outputs(repo)
    return UndoPlan(entry, sorted(write), sorted(delete), sorted(touched & since), outputs_now)


def undo(
    repo: Path,
    shown: UndoPlan | None = None,
    started: Callable[[subprocess.Popen], None] | None = None,
) -> UndoEntry:
    """Bring the workspace back as it was before the newest apply (files, index, DVC outputs),
    under the workspace lock, and drop that entry. When Undo would now replace more of what was
    changed since the apply than `shown` (the plan the person confirmed) said, raise
    UndoChangedSinceAsked and do nothing."""
    repo = Path(repo)
    with WorkspaceLock(repo, "undo an apply"):
        plan = undo_plan(repo)
        if plan is None:
            raise DvcError("nothing to undo: no apply was made from the dashboard")
        if shown is not None:
            new = sorted(plan.replaced() - shown.replaced())
            if plan.entry.number != shown.entry.number:
                new = [f"the entry to undo (now {plan.entry.experiment})"]
            if new:
                raise UndoChangedSinceAsked(plan, new)
        entry = plan.entry
        if plan.write:
            with _private_index(repo, copy=False) as env:
                git_write(repo, "read-tree", entry.before, env=env)
                git_write(
                    repo,
                    "checkout-index",
                    "--force",
                    "-z",
                    "--stdin",
                    env=env,
                    input="\0".join(plan.write),
                )
        for path in plan.delete:
            _remove(repo / path)
            parent = (repo / path).parent
            while parent != repo and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        if entry.manifest.get("index"):
            git_write(repo, "read-tree", entry.manifest["index"])
            git(repo, "update-index", "-q", "--refresh")
        # the outputs dvc.lock records come back from the cache; the changed ones from the copies
        run_dvc(
            ["checkout", "--force", "--allow-missing", "-q"], repo, write=True, started=started
        )
        folder = entry.folder(repo)
        for out in entry.manifest.get("outputs_saved", []):
            kept = folder / "outputs" / out
            if not os.path.lexists(kept):
                raise DvcError(f"the kept copy of {out} is gone from {kept}: it stays as it is")
            _remove(repo / out)
            _copy(kept, repo / out)
        for out in entry.manifest["overwritten"].get("missing", []):
            _remove(repo / out)
        _drop(repo, entry.number)
    return entry


class UndoChangedSinceAsked(DvcError):
    """More would be replaced by Undo than the person was shown; nothing was done."""

    def __init__(self, plan: UndoPlan, new: list[str]):
        super().__init__(f"changed since you were asked ({', '.join(new)}): nothing was undone")
        self.plan = plan
        self.new = new
