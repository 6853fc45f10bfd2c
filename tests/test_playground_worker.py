"""The prompt playground's generation worker, as the dashboard's kernel uses it: real worker
processes on a real git + DVC repository (bench.harness.playground_repo: the shipped tiny model
and a real LoRA per experiment), driven through PlaygroundClient and, for what the client would
refuse to send, through the raw socket. Small draws (32 px, 3 steps, 2 seeds) keep it quick.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from bench.harness.playground_repo import (
    add_playground_experiment,
    lost_lora_experiment,
    make_playground_repo,
)
from dashboard.playground import (
    WORKSPACE,
    BadRequest,
    BaseColumn,
    BlendColumn,
    BlendPart,
    DrawRequest,
    LoraColumn,
    PlaygroundClient,
    WorkerError,
    ensure_worker,
    stop_worker,
)
from dashboard.playground.client import default_command, try_connect
from dashboard.playground.protocol import encode
from dashboard.playground.rundir import RunDirError, run_dir

LORA_FILE = "outputs/lora/pytorch_lora_weights.safetensors"
SMALL = {"num_inference_steps": 3, "size": 32, "seeds": (0, 1)}
LONG = {"num_inference_steps": 1000, "size": 32, "seeds": (0,)}  # about a minute: cancelled
PROMPT = "a pkmnlora pokemon"
HEAVY = ("torch", "diffusers", "transformers", "peft", "safetensors", "dvc")


@dataclass(frozen=True)
class Repo:
    path: Path
    baseline: str  # the baseline commit's sha: its LoRA (lr 1e-3) is in the cache
    experiment: str  # an experiment's sha (lr 2e-3), also the workspace's LoRA now
    lost: str  # an experiment whose LoRA is not in the cache


def command(repo: Path, idle_exit: float = 300, run: Path | None = None) -> list[str]:
    """The worker's default command, with an idle exit that ends a worker a test leaves."""
    return [*default_command(repo, run_dir(repo, run)), "--idle-exit", str(idle_exit)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repo:
    path = make_playground_repo(tmp_path_factory.mktemp("playground") / "repo")
    baseline = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()
    experiment = add_playground_experiment(path, "lr-2", "train_lora.learning_rate=0.002")
    lost = lost_lora_experiment(path, "lr-2", "lost")
    return Repo(path, baseline, experiment, lost)


@pytest.fixture(scope="module")
def client(repo: Repo):
    client = PlaygroundClient(repo.path, worker_command=command(repo.path))
    client.connect()
    yield client
    client.close()
    stop_worker(repo.path)


def draw(client: PlaygroundClient, *columns, timeout: float = 120, **options):
    request = DrawRequest(PROMPT, **{**SMALL, **options, "columns": tuple(columns)})
    result = client.draw(request)
    assert result.wait(timeout) == "finished", (result.outcome, result.message, result.errors)
    return result


def image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def same(a: bytes, b: bytes) -> bool:
    return ImageChops.difference(image(a), image(b)).getbbox() is None


def column_images(result, column: int) -> list[bytes]:
    return [result.images[(column, seed)] for seed in result.request.seeds]


def test_ready_names_the_base_and_the_device(client: PlaygroundClient):
    ready = client.ready
    assert ready is not None
    assert "tiny model" in ready["base"] and "outputs/base_model/pipeline" in ready["base"]
    assert ready["device"] == "cpu" and ready["dtype"] == "float32"
    assert ready["threads"] >= 1 and ready["pid"] != os.getpid()


def test_base_and_two_loras_every_image_and_they_differ(client: PlaygroundClient, repo: Repo):
    columns = (
        BaseColumn(),
        LoraColumn("1e-3", repo.baseline),
        LoraColumn("2e-3", repo.experiment),
    )
    first = draw(client, *columns)
    assert set(first.images) == {(c, s) for c in range(3) for s in SMALL["seeds"]}
    assert first.errors == {} and first.seconds is not None
    for seed in SMALL["seeds"]:
        base, low, high = (first.images[(c, seed)] for c in range(3))
        assert not same(low, base) and not same(high, base) and not same(low, high)
    second = draw(client, *columns)
    for a, b in zip(column_images(first, 0), column_images(second, 0), strict=True):
        assert same(a, b), "the base column is not deterministic"


def test_a_lora_at_scale_zero_draws_the_base_from_the_same_noise(
    client: PlaygroundClient, repo: Repo
):
    result = draw(client, BaseColumn(), LoraColumn("off", repo.experiment, scale=0.0))
    for base, off in zip(column_images(result, 0), column_images(result, 1), strict=True):
        assert same(base, off)


def test_the_workspace_lora_is_the_one_in_outputs(client: PlaygroundClient, repo: Repo):
    # `dvc exp run` left the experiment's outputs in the workspace.
    result = draw(client, LoraColumn("workspace", WORKSPACE), LoraColumn("exp", repo.experiment))
    for a, b in zip(column_images(result, 0), column_images(result, 1), strict=True):
        assert same(a, b)


def test_a_blend_of_two_loras_differs_from_each(client: PlaygroundClient, repo: Repo):
    blend = BlendColumn(
        "both",
        (BlendPart("1e-3", repo.baseline, 1.0), BlendPart("2e-3", repo.experiment, 1.0)),
    )
    result = draw(
        client, LoraColumn("1e-3", repo.baseline), LoraColumn("2e-3", repo.experiment), blend
    )
    for seed in SMALL["seeds"]:
        low, high, both = (result.images[(c, seed)] for c in range(3))
        assert not same(both, low) and not same(both, high)


def test_images_stream_before_the_draw_finishes(client: PlaygroundClient, repo: Repo):
    arrivals: list[float] = []

    def on_event(event: dict) -> None:
        if event["type"] == "image":
            assert isinstance(event["png"], bytes)
            arrivals.append(time.monotonic())

    request = DrawRequest(
        PROMPT,
        **{**SMALL, "batch_size": 1, "num_inference_steps": 6},
        columns=(BaseColumn(), LoraColumn("exp", repo.experiment)),
    )
    result = client.draw(request, on_event=on_event)
    assert result.wait(120) == "finished"
    assert len(arrivals) == 4
    # The worker's clock is time.monotonic() too (CLOCK_MONOTONIC: one clock per machine).
    assert arrivals[0] < result.finished_at, "the first image came only with the last"


def test_cancel_mid_draw_then_draw_again(client: PlaygroundClient):
    request = DrawRequest(PROMPT, **LONG)
    started = threading.Event()
    result = client.draw(request, on_event=lambda e: e["type"] == "started" and started.set())
    assert started.wait(60)
    time.sleep(0.3)  # a few denoising steps in
    result.cancel()
    assert result.wait(30) == "cancelled"  # a whole draw takes about a minute
    assert result.images == {}
    assert draw(client, BaseColumn()).images


def test_a_new_draw_cancels_the_previous_one(client: PlaygroundClient):
    started = threading.Event()
    first = client.draw(
        DrawRequest(PROMPT, **LONG), on_event=lambda e: e["type"] == "started" and started.set()
    )
    assert started.wait(60)
    second = client.draw(DrawRequest(PROMPT, **SMALL))
    assert first.wait(30) == "cancelled"
    assert second.wait(60) == "finished" and len(second.images) == 2


def test_a_missing_lora_fails_only_its_column(client: PlaygroundClient, repo: Repo):
    unknown = "f" * 40
    result = draw(
        client,
        BaseColumn(),
        LoraColumn("lost-exp", repo.lost),
        LoraColumn("gone-exp", unknown),
        LoraColumn("exp", repo.experiment),
    )
    assert sorted(result.errors) == [1, 2]
    assert {c for c, _ in result.images} == {0, 3}
    lost, gone = result.errors[1], result.errors[2]
    assert "'lost-exp'" in lost and LORA_FILE in lost and repo.lost[:12] in lost
    assert "dvc exp pull" in lost
    assert "'gone-exp'" in gone and LORA_FILE in gone and "no commit" in gone


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": 99.0}, "guidance_scale"),
        ({"scheduler": "plms"}, "scheduler"),
        ({"seeds": (1, 1)}, "seeds"),
        ({"seeds": ()}, "seeds"),
        ({"batch_size": 0}, "batch_size"),
        ({"size": 33}, "size"),
        ({"columns": ()}, "columns"),
        ({"columns": (LoraColumn("x", "main"),)}, "columns[0].rev"),
        ({"columns": (BaseColumn(), LoraColumn("x", WORKSPACE, 9.0))}, "columns[1].scale"),
        ({"columns": (BlendColumn("b", (BlendPart("a", WORKSPACE, 1.0),)),)}, "columns[0].parts"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"columns": ("base",)}, "the request's fields"),
    ],
)
def test_a_bad_request_is_refused_before_it_is_sent(change: dict, field: str):
    request = DrawRequest(**{"prompt": PROMPT, **change})
    with pytest.raises(BadRequest) as refused:
        request.check()
    assert str(refused.value).startswith(field), str(refused.value)


def test_a_request_survives_the_wire():
    request = DrawRequest(
        PROMPT,
        negative_prompt="blurry",
        seeds=(3, 1),
        size=48,
        columns=(
            BaseColumn("the base"),
            LoraColumn("exp", "a" * 40, 0.5),
            BlendColumn("mix", (BlendPart("a", "a" * 40, 0.7), BlendPart("w", WORKSPACE, 0.3))),
        ),
    )
    wire = json.loads(encode({"type": "draw", "request": request.to_json()}))
    assert DrawRequest.from_json(wire["request"]) == request.check()


def test_the_worker_rejects_what_the_client_would_not_send(client: PlaygroundClient):
    """The worker trusts nothing from the socket: a bad value, a wrong type, an unknown field,
    a line that is no JSON (a pickle, say) are each answered `rejected`, and it serves on."""
    assert client.run.socket.exists()
    good = DrawRequest(PROMPT, **SMALL).to_json()
    messages = [
        ({"type": "draw", "id": "a", "request": {**good, "num_inference_steps": 0}}, "num_inf"),
        ({"type": "draw", "id": "b", "request": {**good, "prompt": 7}}, "prompt"),
        ({"type": "draw", "id": "c", "request": {**good, "exec": "rm -rf /"}}, "exec"),
        ({"type": "draw", "id": "d", "request": {**good, "guidance_scale": "NaN"}}, "guidance"),
        ({"type": "draw", "id": "e f", "request": good}, "id"),
        ({"type": "run", "id": "g"}, "unknown message type"),
    ]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(client.run.socket))
        sock.settimeout(30)
        stream = sock.makefile("rb")
        assert json.loads(stream.readline())["type"] == "ready"
        for message, said in messages:
            sock.sendall(encode(message))
            answer = json.loads(stream.readline())
            assert answer["type"] == "rejected" and said in answer["message"], answer
        sock.sendall(b"\x80\x04\x95 not json but a pickle\n")
        answer = json.loads(stream.readline())
        assert answer["type"] == "rejected" and answer["id"] is None
        sock.sendall(b'{"type": "status"}\n')
        assert json.loads(stream.readline())["type"] == "status"


def test_the_run_folder_is_private(client: PlaygroundClient, tmp_path: Path):
    folder = client.run.path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(client.run.socket.stat().st_mode) == 0o600
    assert folder.stat().st_uid == os.getuid()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(RunDirError, match="open to other users"):
        run_dir(tmp_path, shared)


def test_two_clients_take_turns_and_never_overlap(client: PlaygroundClient, repo: Repo):
    other = PlaygroundClient(repo.path, worker_command=command(repo.path))
    try:
        assert other.connect()["pid"] == client.ready["pid"]
        request = DrawRequest(
            PROMPT,
            **{**SMALL, "num_inference_steps": 8},
            columns=(BaseColumn(), LoraColumn("exp", repo.experiment)),
        )
        mine, theirs = client.draw(request), other.draw(request)
        assert mine.wait(120) == "finished" and theirs.wait(120) == "finished"
        first, second = sorted([mine, theirs], key=lambda d: d.started_at)
        assert first.finished_at <= second.started_at, "two draws ran at once"
        assert len(mine.images) == len(theirs.images) == 4
        assert all(same(mine.images[k], theirs.images[k]) for k in mine.images)
    finally:
        other.close()


def test_the_kernel_side_never_imports_torch(client: PlaygroundClient, repo: Repo):
    """Importing the client brings the standard library alone; a whole draw through it adds
    the params schema (pydantic, and pandas through stages.data) but never torch, diffusers,
    transformers, peft, safetensors or dvc."""
    code = (
        "import sys, json\n"
        "import dashboard.playground, dashboard.playground.client\n"
        "from dashboard.playground import PlaygroundClient, DrawRequest, BaseColumn\n"
        "def outside():\n"
        "    return sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)"
        " - {'dashboard'} - {m for m in sys.modules if m.startswith('_')})\n"
        "imported = outside()\n"
        "client = PlaygroundClient(sys.argv[1])\n"
        "d = client.draw(DrawRequest('a pokemon', seeds=(0,), num_inference_steps=2, size=32))\n"
        "outcome = d.wait(120)\n"
        "client.close()\n"
        "print(json.dumps({'imported': imported, 'outcome': outcome, 'after': outside()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(repo.path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=repo.path.parent,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["imported"] == [], found["imported"]
    assert found["outcome"] == "finished"
    assert not [name for name in HEAVY if name in found["after"]], found["after"]


def test_a_killed_worker_ends_the_draw_and_the_next_draw_restarts_it(
    client: PlaygroundClient,
):
    pid = client.ready["pid"]
    started = threading.Event()
    result = client.draw(
        DrawRequest(PROMPT, **LONG), on_event=lambda e: e["type"] == "started" and started.set()
    )
    assert started.wait(60)
    os.kill(pid, signal.SIGKILL)
    assert result.wait(30) == "worker_gone"
    assert "SIGKILL" in result.message, result.message
    again = draw(client, BaseColumn(), timeout=180)
    assert len(again.images) == 2
    assert client.ready["pid"] != pid


def test_a_worker_that_cannot_load_says_why(tmp_path: Path):
    empty = tmp_path / "not-a-pipeline"
    empty.mkdir()
    failing = PlaygroundClient(empty, run_dir=tmp_path / "run", start_timeout=60)
    with pytest.raises(WorkerError, match="no base model"):
        failing.connect()
    assert "model.json" in (failing.last_failure or "")
    result = failing.draw(DrawRequest(PROMPT, **SMALL))
    assert result.wait(60) == "worker_gone" and "no base model" in result.message
    failing.close()


def test_ensure_worker_starts_one_that_exits_when_idle(repo: Repo, tmp_path: Path):
    run = tmp_path / "run"
    process = ensure_worker(repo.path, run, command(repo.path, idle_exit=1, run=run))
    assert process is not None
    assert ensure_worker(repo.path, run) is None  # one answers now: none is started
    with PlaygroundClient(repo.path, run_dir=run) as visitor:
        assert visitor.connect()["pid"] == process.pid
    assert process.wait(60) == 0  # no client for a second: it exits
    assert try_connect(run_dir(repo.path, run).socket) is None
    assert not stop_worker(repo.path, run)


STAGE_DRAW = """
import os, sys
from pathlib import Path
os.chdir(sys.argv[1])
from stages.common.determinism import deterministic_torch
from stages.common.params import GenerateParams
from stages.generate_text_to_image import draw
from stages.models.diffusion import load_pipeline, read_model_record
deterministic_torch()
settings = GenerateParams(prompts=[sys.argv[3]], seeds=[0, 1], num_inference_steps=3,
                          guidance_scale=4.0, scheduler="dpm++", batch_size=8, lora_scale=0.8)
pipe = load_pipeline(Path("outputs/lora"), record=read_model_record(), scheduler="dpm++")
pipe.disable_lora()
base = draw(pipe, settings, 1.0, "base")
pipe.enable_lora()
lora = draw(pipe, settings, settings.lora_scale, "lora")
for variant, images in (("base", base), ("lora", lora)):
    for seed, picture in zip(settings.seeds, images):
        picture.save(Path(sys.argv[2]) / f"{variant}-{seed}.png")
"""


def test_a_column_draws_bit_for_bit_what_the_generate_stage_draws(
    client: PlaygroundClient, repo: Repo, tmp_path: Path
):
    """What "Keep as experiment" promises: the experiment's generate_text_to_image, run with the
    playground's prompt, seeds, steps, guidance, sampler and scale, draws the very images the
    playground showed (the stage's draw() in a process of its own, on the workspace's LoRA)."""
    subprocess.run(
        [sys.executable, "-c", STAGE_DRAW, str(repo.path), str(tmp_path), PROMPT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = draw(
        client,
        BaseColumn(),
        LoraColumn("workspace", WORKSPACE, 0.8),
        size=None,
        num_inference_steps=3,
        guidance_scale=4.0,
        scheduler="dpm++",
    )
    for column, variant in ((0, "base"), (1, "lora")):
        for seed in (0, 1):
            stage = (tmp_path / f"{variant}-{seed}.png").read_bytes()
            assert same(result.images[(column, seed)], stage), (variant, seed)
    assert not same(result.images[(0, 0)], result.images[(1, 0)])  # the LoRA changed it
