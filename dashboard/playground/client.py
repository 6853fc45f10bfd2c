"""The page kernel's side of the prompt playground: talks to the repository's generation worker
over its Unix socket, starting the worker when none answers. Standard library only (the params
schema is imported by DrawRequest.check, as the launch form imports it): the kernel must never
import torch or diffusers.

    client = PlaygroundClient(repo)
    client.connect_in_background(lambda ready: ...)   # the worker warms up while the page builds
    draw = client.draw(DrawRequest("a pkmnlora pokemon", columns=(BaseColumn(), LoraColumn(
        "exp-1", sha))), on_event=show)              # returns at once; images stream in
    draw.wait(60)                                     # "finished", "cancelled", ...
    draw.images[(column, seed)]                       # PNG bytes

One worker serves every kernel of a repository; each client has one draw at a time (a new one
cancels the previous). When the worker dies, the running draw ends `worker_gone` with the
reason (what the worker wrote in last_failure, or the tail of its log), and the next draw starts
a new worker.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dashboard.playground.protocol import MAX_EVENT_LINE, DrawRequest, decode, encode
from dashboard.playground.rundir import RunDir, held, run_dir

log = logging.getLogger(__name__)
PROTOCOL = 1  # the worker's protocol version this client speaks
ENDS = ("finished", "cancelled", "rejected", "worker_gone")
PROJECT = Path(__file__).resolve().parents[2]  # the folder that holds the dashboard package
EXIT_BUSY = 3  # the worker's exit code when another worker serves the repository

EventCallback = Callable[[dict[str, Any]], None]


class WorkerError(RuntimeError):
    """The worker could not be started or reached; the message says why (what the worker
    wrote in last_failure, or the end of its log)."""


class Draw:
    """One draw: its images as they arrive and, once done, its outcome.

    `images[(column, seed)]` holds PNG bytes; `errors[column]` the message of a column that
    failed (its LoRA could not be loaded, say); `outcome` is None while it runs, then
    "finished", "cancelled", "rejected" (`message` says why) or "worker_gone" (`message` says
    what stopped the worker). `started_at`, `finished_at` and `seconds` are the worker's clock.
    """

    def __init__(
        self,
        client: PlaygroundClient,
        draw_id: str,
        request: DrawRequest,
        on_event: EventCallback | None,
    ):
        self.id = draw_id
        self.request = request
        self.images: dict[tuple[int, int], bytes] = {}
        self.errors: dict[int, str] = {}
        self.outcome: str | None = None
        self.message: str | None = None
        self.position: int | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.seconds: float | None = None
        self._client = client
        self._on_event = on_event
        self._done = threading.Event()
        self._sent = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> str | None:
        """The outcome, once the draw has ended (None if `timeout` seconds pass first)."""
        self._done.wait(timeout)
        return self.outcome

    def cancel(self) -> None:
        """Stop this draw (at the worker's next denoising step); it ends "cancelled"."""
        self._client._cancel(self)

    def _handle(self, event: dict[str, Any]) -> None:
        """Apply one event, then call on_event (on the client's reader thread)."""
        if self._done.is_set():
            return
        kind = event["type"]
        if kind == "image":
            self.images[(event["column"], event["seed"])] = event["png"]
        elif kind == "column_failed":
            self.errors[event["column"]] = str(event.get("message"))
        elif kind == "queued":
            self.position = event.get("position")
        elif kind == "started":
            self.started_at = event.get("at")
        elif kind == "finished":
            self.seconds = event.get("seconds")
            self.started_at = event.get("started_at", self.started_at)
            self.finished_at = event.get("finished_at")
        elif kind in ENDS:
            self.message = event.get("message")
        ending = kind in ENDS
        if ending:
            self.outcome = kind
        try:
            if self._on_event is not None:
                self._on_event(event)
        except Exception:  # a broken callback must not stop the reader thread
            log.exception("on_event of draw %s failed on a %s event", self.id, kind)
        finally:
            if ending:
                self._done.set()

    def __repr__(self) -> str:
        return f"<Draw {self.id} {self.outcome or 'running'}: {len(self.images)} images>"


class Lines:
    """Lines of a socket, read without a file object (so a time-out leaves it usable)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.searched = 0

    def next(self) -> bytes | None:
        """The next line, or None at the end of the stream."""
        while True:
            end = self.buffer.find(b"\n", self.searched)
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                self.searched = 0
                return line
            self.searched = len(self.buffer)
            if len(self.buffer) > MAX_EVENT_LINE:
                raise ValueError(f"the worker sent a line longer than {MAX_EVENT_LINE} bytes")
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


class PlaygroundClient:
    """One kernel's (or one page's) connection to the repository's generation worker.

    `run_dir`: the worker's run folder (default: the repository's, see rundir.py);
    `start_timeout`: seconds to wait for a worker to start and load its model;
    `worker_command`: the worker's full argv (default: this interpreter, `-m
    dashboard.playground.worker --repo REPO --socket SOCKET`).

    Thread safe. Events are handled on the client's reader thread: an `on_event` callback
    runs there, so it must be quick and must not wait for the draw (a widget update is fine).
    """

    def __init__(
        self,
        repo: str | Path,
        run_dir: str | Path | None = None,
        start_timeout: float = 180.0,
        worker_command: Sequence[str] | None = None,
    ):
        self.repo = Path(repo).resolve()
        self.run = _run_dir(self.repo, run_dir)
        self.start_timeout = start_timeout
        self.worker_command = list(worker_command or default_command(self.repo, self.run))
        self._lock = threading.RLock()
        self._connecting = threading.Lock()  # one connect at a time
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._ready: dict[str, Any] | None = None
        self._draws: dict[str, Draw] = {}
        self._current: Draw | None = None
        self._pending: Draw | None = None  # waiting for a connection to be sent
        self._background: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._process: subprocess.Popen | None = None  # the worker this client started
        self._status: dict[str, Any] | None = None
        self._status_arrived = threading.Event()
        self._closed = False

    # -- properties -------------------------------------------------------------------------

    @property
    def ready(self) -> dict[str, Any] | None:
        """The worker's ready event (base, device, dtype, threads, ...) while connected."""
        return self._ready

    @property
    def last_failure(self) -> str | None:
        """What killed the last worker that failed, as it wrote it, or None."""
        return self.run.read_last_failure()

    @property
    def current(self) -> Draw | None:
        return self._current

    # -- connecting -------------------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """Connect to the worker, starting one if none answers; returns its ready event.
        Blocks until the worker has loaded its model (WorkerError after start_timeout)."""
        with self._connecting:
            if self._sock is not None and self._ready is not None:
                return self._ready
            if self._closed:
                raise WorkerError("this playground client is closed")
            began = time.time()
            deadline = time.monotonic() + self.start_timeout
            sock = try_connect(self.run.socket)
            if sock is None:
                self._process, sock = spawn_worker(
                    self.repo, self.run, self.worker_command, self.start_timeout
                )
            lines = Lines(sock)
            ready = self._await_ready(sock, lines, deadline, began)
            with self._lock:
                self._sock, self._ready = sock, ready
            self._reader = threading.Thread(
                target=self._read, args=(sock, lines), name="playground-reader", daemon=True
            )
            self._reader.start()
            log.info("playground worker %s ready: %s", ready.get("pid"), ready.get("base"))
            return ready

    def connect_in_background(
        self, done: Callable[[dict[str, Any] | Exception], None] | None = None
    ) -> threading.Thread:
        """connect() on a thread; `done` gets the ready event or the exception."""

        def run() -> None:
            try:
                ready: dict[str, Any] | Exception = self.connect()
            except (RuntimeError, OSError) as error:  # WorkerError, RunDirError, OSError
                ready = error
            if done is not None:
                done(ready)

        thread = threading.Thread(target=run, name="playground-connect", daemon=True)
        thread.start()
        return thread

    def _await_ready(
        self, sock: socket.socket, lines: Lines, deadline: float, began: float
    ) -> dict[str, Any]:
        try:
            while True:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                line = lines.next()
                if line is None:
                    reason = self._gone_reason(since=began)
                    raise WorkerError(
                        f"the playground worker stopped before it was ready: {reason}"
                    )
                event = decode(line)
                if event["type"] == "ready":
                    break
            sock.settimeout(None)
        except TimeoutError:
            sock.close()
            raise WorkerError(
                f"the playground worker did not load its model within {self.start_timeout:.0f} "
                f"s; its log is {self.run.log}:\n{self.run.log_tail()}"
            ) from None
        except (OSError, ValueError, WorkerError):
            sock.close()
            raise
        if event.get("protocol") != PROTOCOL:
            sock.close()
            raise WorkerError(
                f"the worker {event.get('pid')} speaks protocol {event.get('protocol')}, not "
                f"{PROTOCOL} (started by an older checkout?); stop it with "
                "`python -m dashboard.playground.client --stop` and draw again"
            )
        return event

    # -- drawing ----------------------------------------------------------------------------

    def draw(self, request: DrawRequest, on_event: EventCallback | None = None) -> Draw:
        """Start drawing `request` and return its Draw at once; this client's previous draw is
        cancelled. Raises BadRequest (naming the field) for a request the worker would refuse.
        When no worker is connected, one is connected (or started) in the background first.

        `on_event(event)` is called on the client's reader thread for every event of this draw
        (queued, started, image with `png` as bytes, column_failed, finished, cancelled,
        rejected, worker_gone), after the Draw has been updated."""
        request.check()
        draw = Draw(self, uuid.uuid4().hex[:16], request, on_event)
        with self._lock:
            if self._closed:
                raise WorkerError("this playground client is closed")
            previous, self._current = self._current, draw
            self._draws[draw.id] = draw
            # A sent draw is cancelled by the worker when this one arrives; an unsent one here.
            unsent = previous if previous is not None and previous is self._pending else None
            connected = self._sock is not None
            if not connected:
                self._pending = draw
        if unsent is not None:
            self._end_locally(unsent, "cancelled", "a new draw replaced it")
        if connected:
            self._send_draw(draw)
        else:
            self._connect_for_pending()
        return draw

    def cancel(self) -> None:
        """Cancel this client's current draw, if it runs."""
        current = self._current
        if current is not None and not current.done:
            current.cancel()

    def _cancel(self, draw: Draw) -> None:
        with self._lock:
            if draw.done:
                return
            unsent = not draw._sent
            if unsent and self._pending is draw:
                self._pending = None
            sock = self._sock
        if unsent:
            self._end_locally(draw, "cancelled", "cancelled before it was sent")
        elif sock is not None:
            self._send({"type": "cancel", "id": draw.id}, sock)

    def _send_draw(self, draw: Draw) -> None:
        with self._lock:
            sock = self._sock
            if draw.done or sock is None:
                return
            draw._sent = True
        message = {"type": "draw", "id": draw.id, "request": draw.request.to_json()}
        if not self._send(message, sock):
            # The worker died since the last event: this draw starts a new one.
            draw._sent = False
            with self._lock:
                self._pending = draw
            self._lost(sock, spare=draw)
            self._connect_for_pending()

    def _connect_for_pending(self) -> None:
        """Connect on a background thread, then send the pending draw; one such thread at a
        time, which takes the draws made while it connected."""
        with self._lock:
            if self._background is not None:
                return
            self._background = threading.Thread(
                target=self._send_pending, name="playground-connect", daemon=True
            )
            self._background.start()

    def _send_pending(self) -> None:
        while True:
            error: Exception | None = None
            try:
                self.connect()
            except (RuntimeError, OSError) as failure:  # WorkerError, RunDirError, OSError
                error = failure
            with self._lock:
                draw, self._pending = self._pending, None
                if draw is None:
                    self._background = None
                    return
            if error is not None:
                self._end_locally(draw, "worker_gone", str(error))
            else:
                self._send_draw(draw)

    def _end_locally(self, draw: Draw, outcome: str, message: str) -> None:
        with self._lock:
            self._draws.pop(draw.id, None)
        draw._handle({"type": outcome, "id": draw.id, "message": message})

    def _send(self, message: dict[str, Any], sock: socket.socket) -> bool:
        try:
            with self._send_lock:
                sock.sendall(encode(message))
            return True
        except OSError as error:
            log.info("cannot send to the playground worker: %s", error)
            return False

    # -- events -----------------------------------------------------------------------------

    def _read(self, sock: socket.socket, lines: Lines) -> None:
        """The reader thread: every event to its draw, until the worker hangs up."""
        try:
            while (line := lines.next()) is not None:
                self._dispatch(decode(line))
        except (OSError, ValueError) as error:
            log.info("playground worker connection ended: %s", error)
        finally:
            self._lost(sock)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "status":
            self._status = event
            self._status_arrived.set()
            return
        if kind == "ready":
            return
        with self._lock:
            draw = self._draws.get(event.get("id"))  # type: ignore[arg-type]
            if draw is not None and kind in ENDS:
                del self._draws[draw.id]
        if draw is None:
            if kind == "rejected":
                log.warning("the playground worker rejected a message: %s", event.get("message"))
            return
        if kind == "image":
            try:
                event["png"] = base64.b64decode(event["png"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                log.warning("an image event of draw %s holds no PNG", draw.id)
                return
        draw._handle(event)

    def _lost(self, sock: socket.socket, spare: Draw | None = None) -> None:
        """The connection `sock` is gone: its draws (but `spare`) end worker_gone, or cancelled
        when this client closed it."""
        with self._lock:
            if self._sock is not sock:
                return
            self._sock, self._ready = None, None
            draws = [d for d in self._draws.values() if d is not spare and d is not self._pending]
            for draw in draws:
                del self._draws[draw.id]
            closing = self._closed
        with contextlib.suppress(OSError):
            sock.close()
        if closing:
            for draw in draws:
                draw._handle({"type": "cancelled", "id": draw.id, "message": "client closed"})
            return
        reason = self._gone_reason() if draws else ""
        for draw in draws:
            draw._handle({"type": "worker_gone", "id": draw.id, "message": reason})

    def _gone_reason(self, since: float | None = None) -> str:
        """Why the worker went, for worker_gone's message: how it exited (if this client
        started it), what it wrote in last_failure, else the end of its log."""
        parts = []
        process = self._process
        if process is not None:
            try:
                parts.append(exit_description(process.wait(timeout=3)))
                self._process = None
            except subprocess.TimeoutExpired:
                pass
        ready_since = (self._ready or {}).get("started")
        failure = self.run.read_last_failure(since=since or ready_since or time.time() - 3600)
        if failure:
            parts.append(failure)
        else:
            tail = self.run.log_tail()
            if tail:
                parts.append(f"the end of its log ({self.run.log}):\n{tail}")
        return "; ".join(parts) or "it closed the connection"

    # -- status, stop, close ----------------------------------------------------------------

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The worker's status event (clients, running, waiting, adapters, base, device)."""
        self.connect()
        sock = self._sock
        self._status_arrived.clear()
        if sock is None or not self._send({"type": "status"}, sock):
            raise WorkerError("the playground worker is not connected")
        if not self._status_arrived.wait(timeout):
            raise WorkerError(f"the playground worker did not answer within {timeout:.0f} s")
        assert self._status is not None
        return self._status

    def stop_worker(self, timeout: float = 15.0) -> bool:
        """Ask the worker to exit (for every client of the repository); True if one was
        running. This client's draws end worker_gone; a later draw starts a new worker."""
        sock, reader = self._sock, self._reader
        if sock is None:
            return stop_worker(self.repo, self.run.path, timeout)
        self._send({"type": "stop"}, sock)
        if reader is not None:
            reader.join(timeout)
        return True

    def close(self) -> None:
        """Hang up (the worker cancels this client's draws, which end "cancelled") and keep
        the worker running for the other clients."""
        with self._lock:
            self._closed = True
            sock, pending = self._sock, self._pending
            self._pending = None
        if pending is not None:
            self._end_locally(pending, "cancelled", "client closed")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._reader is not None:
            self._reader.join(5)

    def __enter__(self) -> PlaygroundClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Starting and stopping the worker.


def _run_dir(repo: Path, folder: str | Path | None) -> RunDir:
    return run_dir(repo, folder)


def default_command(repo: Path, run: RunDir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dashboard.playground.worker",
        "--repo",
        str(repo),
        "--socket",
        str(run.socket),
    ]


def worker_env() -> dict[str, str]:
    """This interpreter's bin first on PATH (dvc, git hooks) and the project importable from
    the repository's folder; output unbuffered, for the log."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def try_connect(path: Path, timeout: float = 5.0) -> socket.socket | None:
    """A connection to the worker's socket, or None when no worker listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


def spawn_worker(
    repo: Path, run: RunDir, command: Sequence[str], timeout: float
) -> tuple[subprocess.Popen | None, socket.socket]:
    """Start a worker (unless one answers by the time spawn.lock is ours: another kernel may
    just have started it) and wait until it listens; returns it (None if another kernel's
    answered) and a connection to it. The worker runs detached, in its own session (a
    kernel's Ctrl-C or restart does not reach it), its output in worker.log."""
    deadline = time.monotonic() + timeout
    try:
        with held(run.spawn_lock, timeout):
            sock = try_connect(run.socket)
            if sock is not None:
                return None, sock
            run.rotate_log()
            with run.log.open("ab") as output:
                process = subprocess.Popen(
                    list(command),
                    cwd=repo,
                    env=worker_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            log.info("started the playground worker %d for %s", process.pid, repo)
            # reaped when it exits (on its idle timer, say), so that no zombie outlives it
            threading.Thread(target=process.wait, name="playground-reaper", daemon=True).start()
            return process, wait_listening(run, process, deadline)
    except TimeoutError:
        raise WorkerError(
            f"another kernel has held {run.spawn_lock} for {timeout:.0f} s while starting the "
            "playground worker; see its log " + str(run.log)
        ) from None


def wait_listening(run: RunDir, process: subprocess.Popen, deadline: float) -> socket.socket:
    began = time.time()
    while True:
        sock = try_connect(run.socket)
        if sock is not None:
            return sock
        code = process.poll()
        if code is not None and code != EXIT_BUSY:  # busy: another worker is about to listen
            failure = run.read_last_failure(since=began) or run.log_tail()
            raise WorkerError(
                f"the playground worker {exit_description(code)} before it listened: {failure}"
            )
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                process.kill()
            raise WorkerError(f"the playground worker did not listen on {run.socket} in time")
        time.sleep(0.02)


def exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def ensure_worker(
    repo: str | Path,
    run_dir: str | Path | None = None,
    worker_command: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen | None:
    """Start the repository's worker in the background if none answers (the dashboard's
    server calls it at start, so the model is loaded by the time a page asks); returns the
    process it started, or None. Waits only until the worker listens (a second or so), not
    until its model is loaded."""
    repo = Path(repo).resolve()
    run = _run_dir(repo, run_dir)
    sock = try_connect(run.socket)
    process = None
    if sock is None:
        process, sock = spawn_worker(
            repo, run, list(worker_command or default_command(repo, run)), timeout
        )
    sock.close()
    return process


def stop_worker(
    repo: str | Path, run_dir: str | Path | None = None, timeout: float = 15.0
) -> bool:
    """Ask the repository's worker to exit; True if one was running (it has exited, or
    `timeout` seconds passed)."""
    run = _run_dir(Path(repo).resolve(), run_dir)
    sock = try_connect(run.socket)
    if sock is None:
        return False
    with sock:
        sock.sendall(encode({"type": "stop"}))
        sock.settimeout(timeout)
        with contextlib.suppress(OSError):
            while sock.recv(1 << 16):
                pass
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m dashboard.playground.client [--repo PATH] (--start | --stop | --status)`."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m dashboard.playground.client")
    parser.add_argument("--repo", default=".")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--start", action="store_true", help="start the worker, wait for ready")
    action.add_argument("--stop", action="store_true", help="stop the worker")
    action.add_argument("--status", action="store_true", help="print the worker's status")
    args = parser.parse_args(argv)
    if args.stop:
        print("stopped" if stop_worker(args.repo) else "no worker was running")
        return 0
    with PlaygroundClient(args.repo) as client:
        ready = client.connect()
        print(json.dumps(client.status() if args.status else ready, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
