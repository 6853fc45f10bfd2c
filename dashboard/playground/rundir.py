"""Where one repository's generation worker lives: its socket, its log, its locks and what killed
the previous one. Standard library only: the page's kernel imports it.

    $XDG_RUNTIME_DIR/pokemon-lora/<hash of the resolved repo path>/   (when set and writable)
    /tmp/pokemon-lora-<uid>/<hash>/                                   (otherwise)
        worker.sock    the Unix socket (0600)
        worker.log     the worker's stdout and stderr (the previous one kept as worker.log.1)
        spawn.lock     held by a kernel while it starts a worker: two kernels never start two
        worker.lock    held by the worker for its whole life: two workers never serve one repo
        last_failure   what killed the previous worker (written by the worker on a fatal error)

Anyone who can write into that folder could pose as the worker or read the prompts, so each
folder is created 0700 and refused when another user owns it or it is open to group or others.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

APP = "pokemon-lora"
SOCKET_PATH_MAX = 104  # bytes of a Unix socket path (108 on Linux, 104 on macOS)


class RunDirError(RuntimeError):
    """The run folder cannot be used safely; the message says why and how to fix it."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def socket(self) -> Path:
        return self.path / "worker.sock"

    @property
    def log(self) -> Path:
        return self.path / "worker.log"

    @property
    def spawn_lock(self) -> Path:
        return self.path / "spawn.lock"

    @property
    def worker_lock(self) -> Path:
        return self.path / "worker.lock"

    @property
    def last_failure(self) -> Path:
        return self.path / "last_failure"

    def read_last_failure(self, since: float | None = None) -> str | None:
        """The text of last_failure, or None; with `since` (a time.time()), only if it was
        written after then (a failure of an earlier worker is not this one's)."""
        try:
            if since is not None and self.last_failure.stat().st_mtime < since - 1:
                return None
            return self.last_failure.read_text(encoding="utf-8", errors="replace").strip() or None
        except OSError:
            return None

    def write_last_failure(self, text: str) -> None:
        write_private(self.last_failure, text.rstrip() + "\n")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def rotate_log(self) -> None:
        """Keep the previous worker's log as worker.log.1 and start an empty one."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.log, self.log.with_name("worker.log.1"))
        write_private(self.log, "")


def repo_key(repo: str | Path) -> str:
    """A short, stable name for a repository: the hash of its resolved path."""
    return hashlib.sha256(str(Path(repo).resolve()).encode("utf-8")).hexdigest()[:16]


def runtime_root() -> Path:
    """$XDG_RUNTIME_DIR/pokemon-lora where that is set and writable, else
    /tmp/pokemon-lora-<uid>."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / APP
    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


def run_dir(repo: str | Path, folder: str | Path | None = None) -> RunDir:
    """The run folder of `repo` (or `folder`, when given), created and checked to be private."""
    if folder is not None:
        ensure_private_dir(Path(folder))
        found = RunDir(Path(folder))
    else:
        root = runtime_root()
        ensure_private_dir(root)
        found = RunDir(root / repo_key(repo))
        ensure_private_dir(found.path)
    if len(os.fsencode(found.socket)) > SOCKET_PATH_MAX:
        raise RunDirError(
            f"the socket path {found.socket} is longer than {SOCKET_PATH_MAX} bytes, the most a "
            "Unix socket may have; set XDG_RUNTIME_DIR to a shorter folder"
        )
    return found


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700 if missing; refuse it unless it is a real folder owned by this user
    and closed to group and others."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=False)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise RunDirError(f"{path} is not a folder (a link or a file?); remove it and retry")
    if info.st_uid != os.getuid():
        raise RunDirError(
            f"{path} belongs to user {info.st_uid}, not to you ({os.getuid()}): another user "
            "could pose as the playground's worker; remove it or set XDG_RUNTIME_DIR"
        )
    if info.st_mode & 0o077:
        raise RunDirError(
            f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"`chmod 700 {path}` or remove it"
        )


def write_private(path: Path, text: str) -> None:
    """Write `text` to a 0600 file, through a temporary name (a reader never sees half)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


@contextlib.contextmanager
def held(path: Path, timeout: float) -> Iterator[None]:
    """Hold the fcntl lock `path` (released by the OS if this process dies); TimeoutError if
    another process holds it for longer than `timeout` seconds."""
    descriptor = open_lock(path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} is held by another process") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)  # closing the file releases the lock


def try_lock(path: Path) -> int | None:
    """The descriptor of the fcntl lock `path`, held until it is closed (or this process ends),
    or None when another process holds it."""
    descriptor = open_lock(path)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor
