"""Where the dashboard's data comes from: one DVC repository, read through dvc, one read at a
time, each with a time-out. No widgets, no torch.

Experiments come from DVC's own `exp show` run in-process (the JSON of `dvc exp show --json`,
0.05 s warm instead of 0.7 s of CLI start); plots from `dvc plots diff --json -o`, only for the
revisions asked for, each kept once read (experiment commits never change)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from dashboard.data import (
    confusion_matrices,
    curve_points,
    experiments_frame,
    generated_images,
    image_files,
    line_plots,
    mark_lost,
)
from dashboard.dvc_cli import DvcError, git_refs, run_dvc_json

log = logging.getLogger(__name__)
WORKSPACE = "workspace"
# Files whose change means the workspace row or the set of experiments changed.
WATCHED = ["params.yaml", "dvc.lock", "dvc.yaml"]
BUSY_TIMEOUT = 15.0  # seconds for `dvc exp show` while the queue runs (then try again)
QUEUE_REF = "refs/exps/celery/stash"  # exists while experiments wait in the queue


@dataclass
class Plots:
    """Plot data of some revisions: curves per plot path, confusion matrices, generated images,
    and the revisions that have none (with the reason)."""

    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    confusion: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: pd.DataFrame = field(default_factory=lambda: generated_images({}))
    missing: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, plots_diff: dict[str, Any]) -> Plots:
        return cls(
            curves={path: curve_points(plots_diff, path) for path in line_plots(plots_diff)},
            confusion=confusion_matrices(plots_diff),
            images=generated_images(image_files(plots_diff)),
        )

    def only(self, revs: Iterable[str]) -> Plots:
        keep = set(revs)
        return Plots(
            curves={p: c[c["rev"].isin(keep)] for p, c in self.curves.items()},
            confusion={r: m for r, m in self.confusion.items() if r in keep},
            images=self.images[self.images["rev"].isin(keep)],
            missing={r: m for r, m in self.missing.items() if r in keep},
        )

    @staticmethod
    def merge(parts: Iterable[Plots]) -> Plots:
        parts = list(parts)
        paths = {path for part in parts for path in part.curves}
        return Plots(
            curves={
                path: pd.concat([p.curves[path] for p in parts if path in p.curves])
                for path in sorted(paths)
            },
            confusion={r: m for p in parts for r, m in p.confusion.items()},
            images=pd.concat([p.images for p in parts]) if parts else generated_images({}),
            missing={r: m for p in parts for r, m in p.missing.items()},
        )


class ExperimentStore:
    """The experiments, plots and images of the DVC repository at `path`."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path).resolve()
        self.timeout = timeout
        self._lock = threading.Lock()  # never two dvc reads at once
        # The plots read so far; the watcher thread lists them while a read adds some.
        self._plots: dict[str, Plots] = {}
        self._plots_lock = threading.Lock()
        self._cache: Path | None = None  # DVC's cache folder, once asked for
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dvc")
        # Plot files go inside the repository (.dvc/tmp is git-ignored), so that every file the
        # page shows is checked to stay inside it.
        scratch = self.path / ".dvc" / "tmp" / "dashboard"
        if (self.path / ".dvc").is_dir():
            scratch.mkdir(parents=True, exist_ok=True)
            self._out = Path(tempfile.mkdtemp(prefix="plots-", dir=scratch))
        else:
            self._out = Path(tempfile.mkdtemp(prefix="dashboard-plots-"))
        weakref.finalize(self, shutil.rmtree, self._out, True)

    def check(self) -> None:
        """DvcError saying what is missing when `path` is not a git + DVC repository."""
        if not self.path.is_dir():
            raise DvcError(f"{self.path} does not exist: give the folder of a DVC repository")
        if not (self.path / ".dvc").is_dir():
            raise DvcError(
                f"{self.path} is not a DVC repository (no .dvc folder): run `git init` and "
                "`dvc init` there, or point the dashboard at this project's folder"
            )
        if not (self.path / ".git").exists():
            raise DvcError(f"{self.path} has no git repository: experiments need git (`git init`)")

    def signature(self) -> str:
        """Changes whenever an experiment, branch or the workspace's params or lock change:
        the experiment refs (`git for-each-ref`, milliseconds at 1,000) and file times."""
        listed = git_refs(self.path, "refs/exps", "refs/heads", "refs/tags", timeout=10)
        refs = "\n".join(
            f"{ref} {sha}" for ref, sha in listed.items() if not ref.startswith("refs/exps/exec/")
        )
        head = (self.path / ".git" / "HEAD").read_text() if (self.path / ".git").is_dir() else ""
        times = []
        for name in WATCHED:
            file = self.path / name
            times.append(f"{name}:{file.stat().st_mtime_ns if file.exists() else 0}")
        for folder in ("celery", "run"):  # the queue's broker and running tasks, not its cache
            for root, _, files in os.walk(self.path / ".dvc" / "tmp" / "exps" / folder):
                for name in files:
                    if name.endswith(".out"):
                        continue  # a task's log: it grows all through a run, results do not
                    try:
                        stat = os.stat(os.path.join(root, name))
                    except OSError:
                        continue  # gone while listing
                    times.append(f"{root}/{name}:{stat.st_mtime_ns}:{stat.st_size}")
        return "\n".join([head, refs, *times])

    def _call(self, what: str, function, *args):
        """Run `function` on the dvc thread, one at a time, within the time-out."""
        with self._lock:
            future = self._pool.submit(function, *args)
            try:
                return future.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                # The thread cannot be killed; the next read waits for it on the pool.
                raise DvcError(f"{what} took longer than {self.timeout:g} s") from None

    def exp_show(
        self, all_commits: bool = False, queue_busy: bool = False, baselines: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """The JSON of `dvc exp show --json` for HEAD and `baselines` (`-A` with all_commits).
        In-process while the queue is idle; through the CLI, killed after BUSY_TIMEOUT s, while
        it has work: there `exp show` can block on the running task, and an in-process read
        that blocks cannot be stopped (the queue's worker then stalled behind it in our
        tests)."""
        self.check()
        revs = list(dict.fromkeys(["HEAD", *baselines]))
        if queue_busy:
            args = ["exp", "show", *(["-A"] if all_commits else [])]
            args += [arg for rev in revs for arg in ("--rev", rev)]
            timeout = min(self.timeout, BUSY_TIMEOUT)
            return self._call("dvc exp show", run_dvc_json, args, self.path, timeout)
        return self._call("dvc exp show", _exp_show_in_process, self.path, all_commits, revs)

    def experiments(
        self, all_commits: bool = False, queue_busy: bool = False, baselines: Iterable[str] = ()
    ) -> pd.DataFrame:
        """One row per experiment of HEAD and of `baselines` (commits that HEAD has left while
        their experiments were queued or running), or of every commit with `all_commits`."""
        frame = experiments_frame(self.exp_show(all_commits, queue_busy, baselines))
        return mark_lost(frame, _alive, self._exited)

    def _exited(self, task: str) -> bool:
        """Whether the queue worker recorded the exit status of task `task` (dvc-task's
        process info, .dvc/tmp/exps/run/<task>/<task>.json): it ended, and was not lost."""
        if not re.fullmatch(r"[\w-]+", task):
            return False  # an id, never a path
        info = self.path / ".dvc" / "tmp" / "exps" / "run" / task / f"{task}.json"
        try:
            return json.loads(info.read_text()).get("returncode") is not None
        except (OSError, ValueError, AttributeError):
            return False

    def inside(self, file: str | Path) -> Path:
        """`file` resolved, or DvcError when it is not inside the repository (or the plots
        folder): the page never shows files from anywhere else. For the copies that
        `dvc plots diff -o` writes; their sources were checked by `outside` when read."""
        resolved = Path(file).resolve()
        if not (resolved.is_relative_to(self.path) or resolved.is_relative_to(self._out)):
            raise DvcError(f"{file} is outside the repository {self.path}: not shown")
        return resolved

    def cache_dir(self) -> Path:
        """DVC's cache folder, resolved: inside the repository unless `cache.dir` says
        otherwise; with `cache.type` symlink the workspace's outputs link into it."""
        if self._cache is None:
            try:
                self._cache = self._call("dvc cache dir", _cache_dir, self.path)
            except DvcError:  # busy: the default, asked again next time
                return (self.path / ".dvc" / "cache").resolve()
        return self._cache

    def outside(self, path: str, root: Path | None = None) -> str | None:
        """Why the file `path` (relative, as DVC names it) in the folder `root` (the
        repository) must not be read, or None: an absolute path, a `..`, or a link (of the
        file or of a folder above it) whose target leaves `root` and DVC's cache."""
        root = self.path if root is None else root
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            return "a path outside the repository"
        resolved = (root / relative).resolve()
        if resolved.is_relative_to(root) or resolved.is_relative_to(self.cache_dir()):
            return None
        log.warning("not read: %s in %s links to %s, outside it", path, root, resolved)
        return "a link to a file outside the repository"

    def _remove_copy(self, url: Any) -> None:
        """Delete a file that `dvc plots diff -o` wrote into the plots folder (only there)."""
        if isinstance(url, str):
            copy = Path(url).absolute()
            if copy.parent.resolve().is_relative_to(self._out):
                copy.unlink(missing_ok=True)

    def _keep_inside(self, data: dict[str, Any]) -> dict[str, str]:
        """Drop from the JSON of `dvc plots diff` the workspace's data of every plot file
        that `outside` refuses (DVC reads the workspace's files through links: a symlink
        `outputs/generated/lora/x/seed-0.png -> ~/private.png` would be copied and shown),
        and DVC's copies of its images. Returns {path: why}. A commit's files come from git's
        objects and DVC's cache by hash, never from a path of this machine: DVC does not
        follow a link committed to git, so they are kept."""
        refused = {}
        for path, entries in (data.get("data") or {}).items():
            in_workspace = any(WORKSPACE in (e.get("revisions") or []) for e in entries)
            reason = self.outside(path) if in_workspace else None
            if reason is None:
                continue
            refused[path] = reason
            kept = []
            for entry in entries:
                if WORKSPACE in (entry.get("revisions") or []) and entry.get("type") == "image":
                    self._remove_copy(entry.get("url"))
                    continue
                content = entry.get("content") or {}
                values = (content.get("data") or {}).get("values")
                if isinstance(values, list):
                    content["data"]["values"] = [
                        v
                        for v in values
                        if not (isinstance(v, Mapping) and v.get("rev") == WORKSPACE)
                    ]
                kept.append(entry)
            data["data"][path] = kept
        return refused

    def plots(self, revs: Iterable[str], running: Mapping[str, str] | None = None) -> Plots:
        """Plots of `revs` (ids, or "workspace"); reads only those not read before. The
        workspace is read again each time: its files change. Revs in `running` ({id: the
        folder its queue task runs in}) get the curves written so far (live_plots)."""
        revs = list(dict.fromkeys(revs))
        running = {rev: root for rev, root in (running or {}).items() if rev in revs}
        live = {rev: self.live_plots(rev, root) for rev, root in running.items()}
        revs = [rev for rev in revs if rev not in live]
        with self._plots_lock:
            todo = [rev for rev in revs if rev == WORKSPACE or rev not in self._plots]
        if todo:
            self.check()
            out = Path(tempfile.mkdtemp(dir=self._out))
            try:
                data = self._call(
                    "dvc plots diff", _plots_diff, self.path, todo, out, self.timeout
                )
            except DvcError as error:
                data, reason = {}, str(error)
            else:
                reason = "no plots or images in this revision"
            refused = self._keep_inside(data) if WORKSPACE in todo else {}
            parts = _split(Plots.parse(data), todo, reason)
            if refused:
                parts[WORKSPACE].missing[WORKSPACE] = _refused_text(refused)
            with self._plots_lock:
                self._plots.update(parts)
        with self._plots_lock:
            read = [self._plots[rev] for rev in revs]
        return Plots.merge([*read, *live.values()])

    def read_images(self) -> pd.DataFrame:
        """The generated images of the revisions read so far (no dvc call)."""
        with self._plots_lock:
            frames = [part.images for part in self._plots.values()]
        return pd.concat(frames) if frames else generated_images({})

    def curve_paths(self) -> set[str]:
        """The line plots that the read revisions have (dvclive's metric files)."""
        with self._plots_lock:
            parts = list(self._plots.values())
        if not parts:
            self.plots([WORKSPACE])
            with self._plots_lock:
                parts = list(self._plots.values())
        return {path for part in parts for path in part.curves}

    def live_files(self, root: str | Path) -> dict[str, Path]:
        """{plot path: its file in `root`}, the folder where a queue task runs, for the line
        plots it has written so far. `root` must be inside the repository, and each file
        inside `root`: plot paths come from the experiments' dvc.yaml, and a path with `..`,
        an absolute one or a link out of `root` is not read."""
        folder = Path(root).resolve()
        if not folder.is_relative_to(self.path) or not folder.is_dir():
            return {}
        files = {}
        for path in sorted(self.curve_paths()):
            if self.outside(path, folder) is None and (folder / path).is_file():
                files[path] = folder / path
        return files

    def live_plots(self, rev: str, root: str | Path) -> Plots:
        """The curves that a running queue task has written so far, read from its folder
        (dvclive rewrites them at every step); no images until it finishes."""
        curves = {path: live_curve(file, rev) for path, file in self.live_files(root).items()}
        reason = "still running: its images come when it finishes"
        return Plots(
            curves={p: c for p, c in curves.items() if not c.empty}, missing={rev: reason}
        )


def live_curve(file: Path, rev: str) -> pd.DataFrame:
    """rev, step, value of a dvclive metric file (TSV or CSV with a step column) that a run is
    still writing: a half-written last line is dropped."""
    empty = pd.DataFrame(columns=["rev", "step", "value"])
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
        text = text[: text.rfind("\n") + 1]  # whole lines only
        table = pd.read_csv(io.StringIO(text), sep="\t" if file.suffix == ".tsv" else ",")
    except (OSError, ValueError):  # gone, or empty while being rewritten
        return empty
    values = [column for column in table.columns if column not in ("step", "timestamp")]
    if "step" not in table or not values:
        return empty
    column = file.stem if file.stem in values else values[0]
    points = pd.DataFrame(
        {
            "rev": rev,
            "step": pd.to_numeric(table["step"], errors="coerce"),
            "value": pd.to_numeric(table[column], errors="coerce"),
        }
    )
    return points.dropna(subset=["step", "value"])


def _refused_text(refused: Mapping[str, str]) -> str:
    """What the page says of the workspace's files that it does not show."""
    paths = sorted(refused)
    listed = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    reasons = " or ".join(sorted(set(refused.values())))
    return f"not shown: {listed} ({reasons})"


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _split(plots: Plots, revs: list[str], reason: str) -> dict[str, Plots]:
    parts = {}
    for rev in revs:
        part = plots.only([rev])
        if not part.confusion and part.images.empty and all(c.empty for c in part.curves.values()):
            part.missing[rev] = reason
        parts[rev] = part
    return parts


@contextlib.contextmanager
def _dvc_in_process():
    """DVC inside this process without its side effects: its log lines (they would land in the
    page; errors come back as exceptions or exit codes) and `--cd`'s change of directory."""
    logger = logging.getLogger("dvc")
    level, cwd = logger.level, os.getcwd()
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
        os.chdir(cwd)


def _plots_diff(path: Path, revs: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """`dvc plots diff REVS --json -o OUT`, in-process (0.1 s instead of 0.8 s of CLI start);
    through the CLI when that fails, for its error message."""
    args = ["plots", "diff", *revs, "-o", str(out)]
    try:
        from dvc.cli import main
        from dvc.ui import ui
    except ImportError:  # pragma: no cover - dvc is a dependency
        return run_dvc_json(args, path, timeout)
    printed: list[Any] = []
    write_json = ui.write_json
    ui.write_json = lambda data, *_, **__: printed.append(data)  # what the CLI would print
    try:
        with _dvc_in_process():
            code = main(["--cd", str(path), "-q", *args, "--json"])
    except Exception:  # any surprise inside dvc: ask the CLI instead
        code = 1
    finally:
        ui.write_json = write_json
    if code != 0 or not printed:
        return run_dvc_json(args, path, timeout)
    return json.loads(json.dumps(printed[0], default=str))


def _cache_dir(path: Path) -> Path:
    """The repository's DVC cache folder, resolved (`.dvc/cache` unless configured)."""
    default = (path / ".dvc" / "cache").resolve()
    try:
        from dvc.repo import Repo

        with _dvc_in_process(), Repo(str(path)) as repo:
            folder = repo.cache.local_cache_dir
    except Exception:  # any surprise inside dvc: the default folder
        log.exception("cannot read DVC's cache folder of %s", path)
        return default
    return Path(folder).resolve() if folder else default


def _exp_show_in_process(path: Path, all_commits: bool, revs: list[str]) -> list[dict[str, Any]]:
    try:
        from dvc.commands.experiments.show import _format_json
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError as error:  # pragma: no cover - dvc is a dependency
        raise DvcError(f"cannot import dvc ({error}): run `make setup`") from None
    try:
        with _dvc_in_process(), Repo(str(path)) as repo:
            exps = repo.experiments.show(revs=revs, all_commits=all_commits)
            return json.loads(json.dumps([e.dumpd() for e in exps], default=_format_json))
    except DvcException as error:
        raise DvcError(f"dvc exp show failed: {error}") from None
