"""The prompt playground's generation worker: one long-lived process per repository that holds
the base model and the experiments' LoRAs, and draws for every page of the dashboard that asks
(`python -m dashboard.playground.worker --repo PATH [--socket PATH] [--idle-exit SECONDS]`).

The page's kernel must not import torch (importing diffusers alone takes seconds, and Voila
starts a kernel per page), so generation happens here, behind a Unix socket in the repository's
private run folder (rundir.py), in the JSON lines of protocol.py. It listens before it imports
torch, so a kernel that starts it knows at once that it is coming, and sends `ready` to each
client once the model is loaded.

One generation thread draws one request at a time, never two at once. Each client has at most
one draw waiting or running: a new draw of the same client cancels its previous one. Waiting
draws run in the order they arrived, which with one draw per client is round robin across
clients: two browser tabs take turns. A cancel takes effect at the next denoising step.

The worker exits when no client has been connected for --idle-exit seconds, on a `stop`
message, or on SIGTERM; on a fatal error it writes last_failure (which the clients read) and
exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.playground.protocol import (
    MAX_LINE,
    BadRequest,
    DrawRequest,
    decode,
    draw_id,
    encode,
)
from dashboard.playground.rundir import RunDir, RunDirError, ensure_private_dir, run_dir, try_lock
from stages.common import paths
from stages.common.errors import StageError

log = logging.getLogger("dashboard.playground.worker")
IDLE_EXIT = 1800.0  # seconds with no client before the worker exits
PROTOCOL = 1
EXIT_FATAL, EXIT_USAGE, EXIT_BUSY = 1, 2, 3


class Connection:
    """One client: a reader thread that hands its messages to the server and a writer thread
    that sends its events in order, so that a slow client never blocks the generation."""

    def __init__(self, sock: socket.socket, number: int, server: Server):
        self.sock = sock
        self.number = number
        self.server = server
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self.read, name=f"client-{number}", daemon=True)
        self.writer = threading.Thread(target=self.write, name=f"send-{number}", daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def send(self, event: dict[str, Any]) -> None:
        if not self.closed.is_set():
            self.outbox.put(encode(event))

    def read(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while not self.closed.is_set():
                line = stream.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE:
                    self.send(rejected(None, f"a message is at most {MAX_LINE} bytes"))
                    break
                if line.strip():
                    self.server.handle(self, line)
        except OSError as error:
            log.info("client %d: %s", self.number, error)
        finally:
            self.close()
            self.server.disconnected(self)

    def write(self) -> None:
        try:
            while (data := self.outbox.get()) is not None:
                self.sock.sendall(data)
        except OSError as error:
            log.info("client %d gone while sending: %s", self.number, error)
        finally:
            self.closed.set()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()

    def close(self) -> None:
        """Send what is queued, then hang up."""
        if not self.closed.is_set():
            self.closed.set()
            self.outbox.put(None)


def rejected(draw: str | None, message: str) -> dict[str, Any]:
    return {"type": "rejected", "id": draw, "message": message}


@dataclass(eq=False)
class Job:
    connection: Connection
    id: str
    request: DrawRequest
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: dict[str, Any]) -> None:
        self.connection.send({**event, "id": self.id})


class DrawQueue:
    """Draws waiting in arrival order, at most one per client, and the one running."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: list[Job] = []
        self.running: Job | None = None
        self._closed = False

    def submit(self, job: Job) -> None:
        with self._changed:
            self._cancel(lambda other: other.connection is job.connection)
            self._waiting.append(job)
            self._announce()
            self._changed.notify_all()

    def cancel(self, connection: Connection, draw: str) -> None:
        with self._changed:
            self._cancel(lambda job: job.connection is connection and job.id == draw)
            self._announce()

    def drop(self, connection: Connection) -> None:
        with self._changed:
            self._cancel(lambda job: job.connection is connection)
            self._announce()

    def _cancel(self, matches: Any) -> None:
        """Cancel the matching draws: a waiting one at once, the running one at its next
        denoising step (the generation thread says `cancelled` then)."""
        if self.running is not None and matches(self.running):
            self.running.cancelled.set()
        for job in [job for job in self._waiting if matches(job)]:
            self._waiting.remove(job)
            job.emit({"type": "cancelled"})

    def _announce(self) -> None:
        """Tell each waiting draw how many run before it."""
        ahead = 0 if self.running is None else 1
        for position, job in enumerate(self._waiting, start=ahead):
            job.emit({"type": "queued", "position": position})

    def take(self) -> Job | None:
        """The next draw to run (waits for one); None once closed."""
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            self.running = self._waiting.pop(0)
            return self.running

    def finish(self, job: Job) -> None:
        with self._changed:
            self.running = None
            self._announce()

    def counts(self) -> tuple[bool, int]:
        with self._changed:
            return self.running is not None, len(self._waiting)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._cancel(lambda job: True)
            self._changed.notify_all()


class Server:
    """The socket, its clients, the draw queue and the generation thread."""

    def __init__(self, run: RunDir, socket_path: Path, idle_exit: float):
        self.run = run
        self.socket_path = socket_path
        self.idle_exit = idle_exit
        self.draws = DrawQueue()
        self.stopping = threading.Event()
        self.exit_code = 0
        self.clients: set[Connection] = set()
        self.clients_lock = threading.Lock()
        self.idle_since = time.monotonic()
        self.engine: Any = None
        self.ready: dict[str, Any] = {}
        self.adapter_revs: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def listen(self) -> None:
        """Bind the socket 0600 (this process holds worker.lock: a socket file there is a dead
        worker's) and listen: clients that connect now wait in the backlog for `ready`."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        previous = os.umask(0o177)
        try:
            self.listener.bind(str(self.socket_path))
        finally:
            os.umask(previous)
        os.chmod(self.socket_path, 0o600)
        self.listener.listen(16)

    def serve(self, engine: Any, ready: dict[str, Any]) -> int:
        self.engine, self.ready = engine, ready
        generation = threading.Thread(target=self.generate, name="generation", daemon=True)
        generation.start()
        self.listener.settimeout(0.5)
        self.idle_since = time.monotonic()
        number = 0
        log.info("ready: %s", ready)
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                self.exit_if_idle()
                continue
            except OSError as error:
                if self.stopping.is_set():
                    break
                raise RuntimeError(f"the socket {self.socket_path} failed: {error}") from error
            number += 1
            self.connected(sock, number)
        self.shut_down(generation)
        return self.exit_code

    def connected(self, sock: socket.socket, number: int) -> None:
        sock.settimeout(None)
        connection = Connection(sock, number, self)
        with self.clients_lock:
            self.clients.add(connection)
        connection.send({"type": "ready", **self.ready})
        connection.start()
        log.info("client %d connected", number)

    def disconnected(self, connection: Connection) -> None:
        self.draws.drop(connection)
        with self.clients_lock:
            self.clients.discard(connection)
            if not self.clients:
                self.idle_since = time.monotonic()
        log.info("client %d disconnected", connection.number)

    def exit_if_idle(self) -> None:
        with self.clients_lock:
            idle = not self.clients and time.monotonic() - self.idle_since > self.idle_exit
        if idle:
            log.info("no client for %.0f s: exiting", self.idle_exit)
            self.stop()

    def handle(self, connection: Connection, line: bytes) -> None:
        """One message of a client. Anything but the schema is answered with `rejected`."""
        try:
            message = decode(line)
        except ValueError as error:
            connection.send(rejected(None, f"not a message: {error}"[:300]))
            return
        kind = message["type"]
        if kind == "draw":
            self.submit(connection, message)
        elif kind == "cancel":
            with contextlib.suppress(BadRequest):
                self.draws.cancel(connection, draw_id(message))
        elif kind == "status":
            connection.send(self.status())
        elif kind == "stop":
            log.info("client %d asked the worker to stop", connection.number)
            self.stop()
        else:
            connection.send(rejected(None, f"unknown message type {kind[:40]!r}"))

    def submit(self, connection: Connection, message: dict[str, Any]) -> None:
        given = message.get("id")
        try:
            draw = draw_id(message)
            request = DrawRequest.from_json(message.get("request")).check()
            self.engine.check(request)
        except BadRequest as error:
            connection.send(rejected(given if isinstance(given, str) else None, str(error)))
            return
        self.draws.submit(Job(connection, draw, request))

    def status(self) -> dict[str, Any]:
        running, waiting = self.draws.counts()
        with self.clients_lock:
            clients = len(self.clients)
        return {
            "type": "status",
            "clients": clients,
            "running": running,
            "waiting": waiting,
            "adapters": list(self.adapter_revs),
            **{key: self.ready[key] for key in ("base", "device", "pid")},
        }

    def generate(self) -> None:
        """The generation thread: one draw at a time. An error that is no column's own is
        fatal: the worker's state is unknown, so it exits and the next draw starts a new one."""
        from dashboard.playground.engine import DrawCancelled

        try:
            while (job := self.draws.take()) is not None:
                started = time.monotonic()
                job.emit({"type": "started", "at": started})
                try:
                    self.engine.draw(job.request, job.cancelled, job.emit)
                except DrawCancelled:
                    job.emit({"type": "cancelled"})
                else:
                    finished = time.monotonic()
                    job.emit(
                        {
                            "type": "finished",
                            "seconds": round(finished - started, 4),
                            "started_at": started,
                            "finished_at": finished,
                        }
                    )
                finally:
                    self.adapter_revs = list(self.engine.adapters.loaded.values())
                    self.draws.finish(job)
        except Exception:
            self.fatal(f"the generation thread failed:\n{traceback.format_exc()}")

    def fatal(self, text: str) -> None:
        log.error("%s", text)
        self.run.write_last_failure(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}")
        self.exit_code = EXIT_FATAL
        self.stop()

    def stop(self) -> None:
        self.stopping.set()

    def shut_down(self, generation: threading.Thread) -> None:
        self.draws.close()
        generation.join(timeout=30)
        self.close()
        with self.clients_lock:
            clients = list(self.clients)
        for connection in clients:
            connection.close()
        for connection in clients:
            connection.writer.join(timeout=5)
        log.info("stopped")

    def close(self) -> None:
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def check_repository(repo: Path) -> None:
    """What the worker needs from the repository, checked before torch is imported, so that a
    repository without a base model is said in a fraction of a second."""
    record = repo / paths.BASE_MODEL_RECORD
    if not record.is_file():
        raise FileNotFoundError(
            f"{record} not found: this repository has no base model yet; run `dvc repro` "
            "(set_up_diffusers) in it first"
        )


def load_engine(repo: Path) -> Any:
    # Idle OpenMP threads spin by default, holding a core each between draws; passive ones
    # sleep. Read when torch's OpenMP starts, so set before torch is imported.
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from dashboard.playground.engine import Engine

    return Engine(repo)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dashboard.playground.worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repo", required=True, help="the DVC repository to draw for")
    parser.add_argument("--socket", help="the Unix socket (default: in the repo's run folder)")
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=IDLE_EXIT,
        help=f"seconds with no client before exiting (default {IDLE_EXIT:.0f})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started, clock = time.time(), time.monotonic()
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    repo = Path(args.repo).resolve()
    try:
        if args.socket:
            socket_path = Path(args.socket).absolute()
            ensure_private_dir(socket_path.parent)
            run = RunDir(socket_path.parent)
        else:
            run = run_dir(repo)
            socket_path = run.socket
    except RunDirError as error:
        log.error("%s", error)
        return EXIT_USAGE
    if try_lock(run.worker_lock) is None:  # held (by its open descriptor) until this exits
        log.error("another worker serves %s already (it holds %s)", repo, run.worker_lock)
        return EXIT_BUSY
    server = Server(run, socket_path, args.idle_exit)
    server.listen()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    log.info("worker %d for %s listening on %s", os.getpid(), repo, socket_path)
    try:
        check_repository(repo)
        engine = load_engine(repo)
    except Exception as error:  # anything that stops the model loading is this worker's end
        # A problem the user can fix is said in its one line; anything else with its traceback.
        known = isinstance(error, FileNotFoundError | StageError)
        detail = "" if known else "\n" + traceback.format_exc()
        server.fatal(f"the worker could not load the base model of {repo}: {error}{detail}")
        server.close()
        return EXIT_FATAL
    ready = {
        **engine.ready(),
        "started": started,
        "seconds": round(time.monotonic() - clock, 3),
        "protocol": PROTOCOL,
    }
    return server.serve(engine, ready)


if __name__ == "__main__":
    sys.exit(main())
