"""One workspace, many tabs: a file lock in the repository that every action changing the
workspace takes (a workspace run, apply, undo), whichever kernel, tab or process runs it.

Each tab of the dashboard has its own kernel, so a guard kept in memory is per tab; the lock is
an OS file lock (filelock's flock) on `.dvc/tmp/dashboard/workspace.lock`, released by the OS
when its holder dies. Beside it, `workspace.json` says who holds it, for the message that the
next one gets. No widgets here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from dashboard.dvc_cli import DvcError

LOCK = Path(".dvc") / "tmp" / "dashboard" / "workspace.lock"


class WorkspaceBusy(DvcError):
    """Another action (maybe from another tab) is changing the workspace; says which."""


class WorkspaceLock:
    """`with WorkspaceLock(repo, "apply exp-1"):` or acquire() now and release() when a
    background run ends. Raises WorkspaceBusy at once (never waits) when it is held."""

    def __init__(self, repo: str | Path, what: str):
        self.path = Path(repo) / LOCK
        self.info = self.path.with_suffix(".json")
        self.what = what
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.path, timeout=0, is_singleton=False, thread_local=False)

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.info.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> WorkspaceLock:
        try:
            self._lock.acquire()
        except Timeout:
            held = self.holder()
            who = held.get("what") or "another dvc action"
            pid = f" (process {held['pid']})" if held.get("pid") else ""
            raise WorkspaceBusy(
                f"cannot {self.what} now: {who}{pid} is changing the workspace, maybe from "
                "another tab; wait for it to finish, or queue experiments instead "
                "(the queue runs them outside the workspace)"
            ) from None
        self.info.write_text(json.dumps({"what": self.what, "pid": os.getpid()}))
        return self

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def fd(self) -> int | None:
        """The lock's file descriptor: pass it to a child process (`pass_fds`) that must keep
        the workspace locked should this process die first (flock goes with the open file)."""
        return self._lock._context.lock_file_fd if self.held else None  # filelock keeps it here

    def release(self) -> None:
        if self.held:
            self.info.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> WorkspaceLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()
