"""The prompt playground as a person uses it: a real Voila server (which starts the generation
worker), Debian's Chromium, a real DVC repository whose experiments have real LoRAs of the
shipped tiny model (bench/harness/playground_repo.py). Pick two experiments, type a prompt,
Draw, see base and both LoRAs; change the scale; keep the finding as an experiment and see it
run into the table."""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from safetensors.torch import load

from bench.harness.browser import launch, voila_server
from bench.harness.playground_repo import add_playground_experiment, make_playground_repo
from bench.harness.quick_repo import run
from tests.test_dashboard_browser import WAIT, row, tab, unpick_all

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]
PROMPT = "a pkmnlora pokemon with a flame tail"
SEEDS = 2


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    path = make_playground_repo(tmp_path_factory.mktemp("play") / "repo")
    add_playground_experiment(path, "rank-8", "train_lora.rank=8")
    add_playground_experiment(path, "lr-high", "train_lora.learning_rate=0.002")
    return path


@pytest.fixture(scope="module")
def served(repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    with voila_server(repo, log) as server:
        yield server


@pytest.fixture(scope="module")
def page(served):
    with sync_playwright() as playwright:
        browser = launch(playwright)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(served.url)
        page.wait_for_selector(".xt-row", timeout=WAIT)
        yield page
        browser.close()


def thumbs(page: Page, column: int):
    return page.locator(f'.playground-gallery .gl-thumb[data-column="play:{column}"]')


def sources(page: Page, column: int) -> list[str]:
    return thumbs(page, column).evaluate_all("images => images.map(i => i.src)")


def new_draw(page: Page, before: list[list[str]]) -> list[list[str]]:
    """The three columns' images once a draw other than `before` has finished in the page."""
    progress = page.locator(".playground-panel .playground-progress")
    deadline = time.monotonic() + WAIT / 1000
    while True:
        now = [sources(page, c) for c in range(3)]
        done = "images in" in (progress.text_content() or "")
        if done and now[1] != before[1] and all(len(column) == SEEDS for column in now):
            return now
        assert time.monotonic() < deadline, f"no new draw in the page: {progress.text_content()}"
        page.wait_for_timeout(100)


def kernel_pids(server_pid: int) -> list[int]:
    """The page kernels: processes below the server running ipykernel."""
    found, todo = [], [server_pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            todo.append(child)
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"ipykernel" in command:
                found.append(child)
    return found


def test_draw_shows_the_base_and_both_picked_loras_side_by_side(page: Page, served):
    unpick_all(page)
    row(page, "rank-8").click()
    row(page, "lr-high").click()
    tab(page, "Playground")
    pane = page.locator(".playground-panel")
    expect(pane.locator(".playground-worker")).to_contain_text("cpu", timeout=WAIT)
    expect(pane.locator(".playground-worker")).to_contain_text("tiny")
    pane.get_by_label("Prompt").fill(PROMPT)
    pane.get_by_label("Seeds").fill(f"0-{SEEDS - 1}")
    pane.get_by_label("Steps").fill("6")
    pane.get_by_label("Steps").press("Enter")
    page.locator(".action-draw").click()
    labels = pane.locator(".gl-col .gl-label")
    expect(labels).to_have_text(["base", "rank-8", "lr-high"], timeout=WAIT)
    expect(pane.locator(".gl-col .gl-detail").nth(1)).to_contain_text("rank=8")
    for column in range(3):
        expect(thumbs(page, column)).to_have_count(SEEDS, timeout=WAIT)
    expect(pane.locator(".playground-progress")).to_contain_text(f"{3 * SEEDS} images in")
    base, rank8, lr_high = (sources(page, c) for c in range(3))
    assert len({*base, *rank8, *lr_high}) == 3 * SEEDS  # every image its own
    # the page's kernel drew nothing itself: no torch in any kernel process
    kernels = kernel_pids(served.pid)
    assert kernels, "no page kernel found under the server"
    for pid in kernels:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, f"kernel {pid} loaded torch"


def test_a_new_scale_draws_again_with_the_same_base(page: Page):
    pane = page.locator(".playground-panel")
    before = [sources(page, c) for c in range(3)]
    readout = pane.locator(".widget-readout").first  # the LoRA scale slider's value
    readout.click()
    readout.fill("0.00")
    readout.press("Enter")
    # "6 images in" also ends the draw before this one: wait for the LoRA columns to change
    after = new_draw(page, before)
    assert after[0] == before[0]  # the base, from the same noise
    assert after[1] != before[1] and after[2] != before[2]
    # at scale 0 a LoRA draws what the base draws
    assert after[1] == after[0] and after[2] == after[0]


def test_keep_as_experiment_queues_it_and_it_runs_into_the_table(page: Page, repo: Path):
    pane = page.locator(".playground-panel")
    readout = pane.locator(".widget-readout").first
    readout.click()
    readout.fill("1.50")
    readout.press("Enter")
    expect(pane.locator(".playground-progress")).to_contain_text(
        f"{3 * SEEDS} images in", timeout=WAIT
    )
    rows_before = page.locator(".xt-row").count()
    page.locator(".action-keep-as-experiment").click()
    expect(page.locator(".action-status")).to_contain_text("Kept as experiment", timeout=WAIT)
    expect(page.locator(".xt-row")).to_have_count(rows_before + 1, timeout=WAIT)
    # it runs through the queue and lands with the playground's generate params
    done = page.locator(".xt-row.xt-experiment.xt-state-success")
    expect(done).to_have_count(3, timeout=240_000)  # rank-8, lr-high and the kept one
    kept = [
        params for params in experiment_params(repo) if params["generate"]["prompts"] == [PROMPT]
    ]
    assert len(kept) == 1
    assert kept[0]["generate"]["lora_scale"] == 1.5
    assert kept[0]["generate"]["seeds"] == list(range(SEEDS))
    assert kept[0]["generate"]["num_inference_steps"] == 6
    assert kept[0]["train_lora"]["rank"] == 8  # rank-8's params: the first picked


def experiment_params(repo: Path) -> list[dict]:
    """params.yaml of every experiment, as `dvc exp show --json` has it."""
    found = []
    for commit in json.loads(run(repo, "dvc", "exp", "show", "--json")):
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                files = (revision.get("data") or {}).get("params") or {}
                found.append(files["params.yaml"]["data"])
    return found


def test_the_lora_files_button_saves_the_picked_experiments_lora(page: Page, tmp_path: Path):
    """The zip comes through the page's widget as a binary buffer and the browser saves it."""
    unpick_all(page)
    row(page, "rank-8").click()
    expect(row(page, "rank-8")).to_have_class(re.compile("xt-picked"))
    with page.expect_download(timeout=WAIT) as info:
        page.locator(".action-lora-files").click()
    download = info.value
    assert download.suggested_filename == "pokemon-lora-rank-8.zip"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        weights = load(archive.read("pokemon-lora-rank-8/pytorch_lora_weights.safetensors"))
    assert next(t for k, t in weights.items() if ".lora.down." in k).shape[0] == 8
