"""Fetch files over HTTP the way a flaky image host needs: bounded concurrency, time-outs,
retries with backoff on 5xx and time-outs (never on 404), and a cache that makes reruns resume.

A hostile or broken server cannot exhaust the machine: each body is streamed with a byte cap
(never held beyond the cap plus one chunk) and each file has an overall deadline, so a server
that drips a byte every few seconds, which no per-read time-out catches, is cut off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from stages.common.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
USER_AGENT = "pokemon-lora/0.1 (+https://dvc.org)"
CHUNK_BYTES = 64 * 1024  # a body is read this much at a time: at most the cap plus one chunk


@dataclass(frozen=True)
class FetchSettings:
    timeout: float = 10.0  # seconds, for connecting and for each read
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    concurrency: int = 8
    max_bytes: int = 20_000_000  # a larger body is refused (data.max_bytes)
    deadline: float = 120.0  # seconds for one file, from the request to its last byte


@dataclass
class FetchResult:
    key: object  # the caller's name for the item (a Pokémon id)
    url: str
    path: Path | None = None  # the cached file when it succeeded
    cached: bool = False  # True when it was already there and valid: not fetched again
    error: str | None = None


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def make_session(settings: FetchSettings) -> requests.Session:
    retry = Retry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,
        status=settings.retries,
        backoff_factor=settings.backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,  # hand back the last 5xx so that we can report it
    )
    session = requests.Session()
    adapter = HTTPAdapter(
        max_retries=retry, pool_connections=settings.concurrency, pool_maxsize=settings.concurrency
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def describe_failure(error: Exception, settings: FetchSettings) -> str:
    """A reason a person can act on, in place of a urllib3 trace."""
    tries = f"after {settings.retries + 1} attempts"
    inner = error.args[0] if error.args else error
    reason = getattr(inner, "reason", inner)  # what MaxRetryError wraps: the last failure
    if isinstance(error, requests.exceptions.Timeout) or isinstance(
        reason, urllib3.exceptions.TimeoutError
    ):
        return f"timed out ({settings.timeout:g} s) {tries}"
    if isinstance(error, requests.exceptions.ConnectionError):
        return f"connection failed {tries}: {reason}"
    return f"{type(error).__name__}: {error}"


class FetchError(RuntimeError):
    """A download failed; the message says why."""


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def too_large(size: str, settings: FetchSettings) -> str:
    return (
        f"{size}, over data.max_bytes ({megabytes(settings.max_bytes)}): refused; raise "
        "data.max_bytes in params.yaml if the file is genuine"
    )


def past_deadline(settings: FetchSettings) -> str:
    return (
        f"deadline: not complete within data.deadline ({settings.deadline:g} s); raise "
        "data.deadline in params.yaml if the server is only slow"
    )


def read_capped(response: requests.Response, settings: FetchSettings, started: float) -> bytes:
    """The body of a streamed `response`, or FetchError once it passes settings.max_bytes or
    settings.deadline (counted from `started`, a time.monotonic() value).

    A read blocks until a whole chunk or the end arrives, however slowly it trickles in, so
    the deadline is kept by a timer that shuts the socket down under the blocked read.
    """
    timed_out = threading.Event()

    def cut_off() -> None:
        timed_out.set()
        # already closed or released to the pool: the read has ended anyway
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            response.raw.shutdown()

    remaining = settings.deadline - (time.monotonic() - started)
    timer = threading.Timer(max(remaining, 0.0), cut_off)
    timer.daemon = True
    body = bytearray()
    timer.start()
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            body += chunk
            if timed_out.is_set():
                break
            if len(body) > settings.max_bytes:
                raise FetchError(too_large(f"more than {megabytes(len(body))}", settings))
    except requests.exceptions.RequestException as error:
        if not timed_out.is_set():
            raise FetchError(describe_failure(error, settings)) from None
    finally:
        timer.cancel()
    if timed_out.is_set():
        response.raw.close()  # its socket is shut down: never hand it back to the pool
        raise FetchError(past_deadline(settings))
    return bytes(body)


def get_bytes(session: requests.Session, url: str, settings: FetchSettings) -> bytes:
    """GET `url`; raise FetchError with the reason on an HTTP error, a network failure, a body
    over settings.max_bytes or a download past settings.deadline."""
    started = time.monotonic()
    try:
        response = session.get(url, timeout=settings.timeout, stream=True)
    except requests.exceptions.RequestException as error:
        raise FetchError(describe_failure(error, settings)) from None
    with response:  # closes the connection however the read ends
        if response.status_code >= 400:
            retried = response.status_code in RETRY_STATUSES and settings.retries > 0
            suffix = f" after {settings.retries + 1} attempts" if retried else ""
            raise FetchError(f"HTTP {response.status_code} {response.reason}{suffix}")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > settings.max_bytes:
            raise FetchError(too_large(f"{megabytes(int(declared))} (Content-Length)", settings))
        return read_capped(response, settings, started)


def cache_path(cache_dir: Path, url: str) -> Path:
    return cache_dir / hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def fetch_all(
    items: Iterable[tuple[object, str]],
    cache_dir: Path,
    settings: FetchSettings,
    validate: Callable[[bytes], None],
    desc: str = "download",
) -> list[FetchResult]:
    """Download each (key, url) into `cache_dir`, `settings.concurrency` at a time.

    A file already in the cache that passes `validate` is not fetched again, so an interrupted
    run resumes where it stopped. `validate` raises ValueError for bad content (a corrupt
    image): such a file is reported, not kept, and not retried (the server would send it again).
    Failures never raise: each comes back with its reason.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = make_session(settings)
        return local.session

    def one(key: object, url: str) -> FetchResult:
        target = cache_path(cache_dir, url)
        if target.exists():
            try:
                validate(target.read_bytes())
                return FetchResult(key, url, target, cached=True)
            except ValueError:
                target.unlink()  # a bad leftover: fetch it again
        try:
            data = get_bytes(session(), url, settings)
            validate(data)
        except FetchError as error:
            return FetchResult(key, url, error=str(error))
        except ValueError as error:
            return FetchResult(key, url, error=f"bad content: {error}")
        atomic_write_bytes(target, data)
        return FetchResult(key, url, target)

    items = list(items)
    results: list[FetchResult | None] = [None] * len(items)
    with (
        ThreadPoolExecutor(max_workers=settings.concurrency) as pool,
        tqdm(total=len(items), desc=desc, unit="file") as bar,
    ):
        futures = {pool.submit(one, key, url): i for i, (key, url) in enumerate(items)}
        for future in as_completed(futures):
            result = future.result()
            if result.error:
                log.warning("%s: %s", result.url, result.error)
            results[futures[future]] = result
            bar.update()
    return [r for r in results if r is not None]
