"""Shared fixtures: stage runs in a scratch folder, tiny settings, a local flaky HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from bench.harness.project import default_params, merged

BIN = Path(sys.executable).parent


def stage_env(cache: Path) -> dict[str, str]:
    """Environment of a stage run: the venv's python and dvc first, a private download cache."""
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["POKEMON_LORA_CACHE"] = str(cache)
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Workdir:
    """A scratch folder to run stages in, as `python -m stages.<name>` from the repository."""

    path: Path
    cache: Path

    def write_params(self, **sections: dict) -> None:
        params = merged(default_params(), sections)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))

    def command(self, stage: str) -> list[str]:
        return [sys.executable, "-m", f"stages.{stage}"]

    def start(self, stage: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
        """Start a stage in the background, to stop or kill it half-way."""
        return subprocess.Popen(
            self.command(stage),
            cwd=self.path,
            env=stage_env(self.cache),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )

    def script(self, code: str) -> dict:
        """Run `code` in a fresh Python in this folder; the JSON of its last printed line."""
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.path,
            env=stage_env(self.cache),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def run(self, stage: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(stage),
            cwd=self.path,
            env=stage_env(self.cache),
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"stage {stage} failed:\n{result.stdout}\n{result.stderr}")
        return result


# The start of a Workdir.script: the stages' tiny base model as a fresh diffusers pipeline, and
# draw(steps), one image of the trigger phrase from seed 0 as a tensor.
TINY_PIPELINE_SCRIPT = """
import json, sys, torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(
    "outputs/base_model/pipeline", safety_checker=None, requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
def draw(steps):
    out = pipe("a pkmnlora pokemon", num_inference_steps=steps, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return torch.from_numpy(out.images)
"""


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120
) -> None:
    """Poll `condition` until it holds; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(0.01)
    pytest.fail(
        f"gave up waiting: the process {'ended' if process.poll() is not None else 'ran on'}"
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    work = Workdir(tmp_path / "work", tmp_path / "cache")
    work.path.mkdir()
    work.write_params()
    return work


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0  # seconds before the headers: longer than the client's time-out = time-out
    content_type: str = "application/octet-stream"


@dataclass
class FlakyServer:
    """An HTTP server on 127.0.0.1 serving scripted replies; each path's replies are played in
    order and the last one repeats. Unknown paths get a 404. Counts every request per path."""

    routes: dict[str, list[Reply]] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)
    url: str = ""

    def add(self, path: str, *replies: Reply) -> str:
        self.routes[path] = list(replies)
        return self.url + path


@pytest.fixture
def flaky_server() -> Iterator[FlakyServer]:
    state = FlakyServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                n = state.hits[self.path]
                state.hits[self.path] += 1
                replies = state.routes.get(self.path) or [Reply(404, b"not found")]
                reply = replies[min(n, len(replies) - 1)]
            time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a time-out): expected

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# Settings small enough to run every stage in seconds: 32 px data, a few steps each.
TINY = {
    "data": {"synthetic_count": 60},
    "resize": {"size": 32},
    "model": {
        "tiny": {
            "corpus_size": 36,
            "vae_steps": 3,
            "unet_steps": 3,
            "vae_batch_size": 4,
            "unet_batch_size": 4,
        }
    },
    "train_lora": {
        "max_steps": 6,
        "batch_size": 4,
        "checkpoint_every": 2,
        "lr_warmup_steps": 1,
        "validation_every": 3,
    },
    "generate": {
        "prompts": ["a pkmnlora pokemon", "a fire type pokemon"],
        "seeds": [0, 1],
        "num_inference_steps": 2,
        "batch_size": 3,
    },
    "classifier": {"epochs": 2, "batch_size": 16},
}
STAGES = [
    "download_pokemon_stats",
    "scrape_pokemon_images",
    "resize_pokemon_images",
    "set_up_diffusers",
    "train_lora",
    "generate_text_to_image",
    "train_classifier",
    "evaluate",
]


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Workdir:
    """One run of every stage with tiny settings, shared by the stage tests."""
    root = tmp_path_factory.mktemp("diffusion")
    work = Workdir(root / "work", root / "cache")
    work.path.mkdir()
    work.write_params(**TINY)
    for stage in STAGES:
        work.run(stage)
    return work


@pytest.fixture(scope="session")
def dashboard_repo(tmp_path_factory) -> Path:
    """A real DVC repository of the quick stand-in pipeline with a baseline and three
    experiments (rank-8, rank-16, lr-high; each keeps the workspace's earlier -S values)."""
    from bench.harness.quick_repo import exp_run, make_quick_repo

    path = make_quick_repo(tmp_path_factory.mktemp("dash") / "repo")
    exp_run(path, "rank-8", "train_lora.rank=8")
    exp_run(path, "rank-16", "train_lora.rank=16")
    exp_run(path, "lr-high", "train_lora.learning_rate=0.002")
    return path
