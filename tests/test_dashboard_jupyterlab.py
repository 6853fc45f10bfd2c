"""The dashboard in a JupyterLab notebook cell, as the README promises: a real JupyterLab server,
Debian's Chromium driven by Playwright, a real DVC repository with two experiments. Open the
notebook, run its cell, pick two rows, see both experiments' Pokémon."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.harness.browser import launch
from tests.jupyterlab_server import KERNEL_DISPLAY_NAME, KERNEL_NAME, jupyterlab_server

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
WAIT = 90_000  # ms: a fresh JupyterLab and kernel on 2 busy cores

# The dashboard's selectors, all here (the same as tests/test_dashboard_browser.py's): the
# layout may change, what a person does (pick two rows, see two columns of images) does not.
ROW = ".xt-row"
NAMED_ROW = '.xt-row[data-name="{name}"]'
PICKED_ROW = ".xt-row.xt-picked"
IMAGE_COLUMN = ".gl-col"  # a gallery header, its column's key in data-key
COLUMN_LABEL = ".gl-label"
LORA_LABEL = "{name} · LoRA"
COLUMN_IMAGES = '.gl-thumb[data-column="{key}"]'
# JupyterLab 4's own
NOTEBOOK_CELL = ".jp-NotebookPanel .jp-Cell"
CELL_EDITOR = ".jp-NotebookPanel .jp-Cell .jp-InputArea-editor"
CELL_OUTPUT = ".jp-NotebookPanel .jp-Cell .jp-OutputArea"
KERNEL_NAME_BUTTON = ".jp-NotebookPanel .jp-Toolbar-kernelName"
KERNEL_IDLE = '.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]'
CELL_PROMPT = ".jp-NotebookPanel .jp-Cell .jp-InputPrompt"
DIALOG = ".jp-Dialog"

EXPERIMENTS = ("rank-8", "rank-16")
NOTEBOOK = "dashboard.ipynb"


@pytest.fixture(scope="module")
def lab_repo(tmp_path_factory) -> Path:
    """A DVC repository with two experiments and a notebook whose one cell is the README's."""
    from bench.harness.quick_repo import exp_run, make_quick_repo

    repo = make_quick_repo(tmp_path_factory.mktemp("lab") / "repo")
    exp_run(repo, "rank-8", "train_lora.rank=8")
    exp_run(repo, "rank-16", "train_lora.rank=16")
    source = f"from dashboard import Dashboard\nDashboard({str(repo)!r})"
    kernelspec = {"name": KERNEL_NAME, "display_name": KERNEL_DISPLAY_NAME, "language": "python"}
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source)], metadata={"kernelspec": kernelspec}
    )
    nbformat.write(notebook, repo / NOTEBOOK)
    return repo


def choose_kernel_if_asked(page: Page) -> None:
    """JupyterLab asks for a kernel when it cannot tell which one the notebook wants: pick the
    venv's. Either way the toolbar ends up naming it."""
    kernel = page.locator(KERNEL_NAME_BUTTON).filter(has_text=KERNEL_DISPLAY_NAME)
    dialog = page.locator(DIALOG)
    expect(kernel.or_(dialog).first).to_be_visible(timeout=WAIT)
    if dialog.count():
        dialog.locator("select").select_option(label=KERNEL_DISPLAY_NAME)
        dialog.get_by_role("button", name="Select", exact=False).click()
    expect(kernel).to_be_visible(timeout=WAIT)
    # run the cell only once the kernel says it is idle: run sooner, it once gave no output
    expect(page.locator(KERNEL_IDLE)).to_be_visible(timeout=WAIT)


def wait_for_table(page: Page, log: Path) -> None:
    """The dashboard's table in the cell's output, or a failure that says what the cell did
    (with a screenshot beside the server's log)."""
    try:
        page.wait_for_selector(f"{CELL_OUTPUT} {ROW}", timeout=WAIT)
    except PlaywrightTimeout:
        page.screenshot(path=log.parent / "no-table.png")
        prompts = page.locator(CELL_PROMPT).all_inner_texts()
        output = page.locator(CELL_OUTPUT).all_inner_texts()
        pytest.fail(
            f"the dashboard did not render in JupyterLab: no table row in "
            f"{WAIT / 1000:.0f} s.\ncell prompts: {prompts}, cell output: {output}\n"
            f"server log:\n{log.read_text()[-3000:]}"
        )


def wait_for_images(page: Page, name: str, key: str) -> None:
    """Every image of the gallery column `key` decoded (naturalWidth > 0), at least one."""
    try:
        page.wait_for_function(
            "selector => { const images = [...document.querySelectorAll(selector)];"
            " return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);}",
            arg=COLUMN_IMAGES.format(key=key),
            timeout=WAIT,
        )
    except PlaywrightTimeout:
        pytest.fail(f"{name}'s column of images ({key}) has no image or one that did not load")


def test_the_dashboard_in_a_jupyterlab_cell_compares_two_experiments(lab_repo: Path, tmp_path):
    outside = []  # requests that leave this machine: there must be none
    with jupyterlab_server(lab_repo, tmp_path / "lab.log") as lab, sync_playwright() as pw:
        browser = launch(pw)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.on(
            "request",
            lambda request: (
                outside.append(request.url)
                if urllib.parse.urlsplit(request.url).hostname not in (None, "127.0.0.1")
                else None
            ),
        )
        page = context.new_page()
        page.goto(f"{lab.base}lab/tree/{NOTEBOOK}?token={lab.token}")
        expect(page.locator(NOTEBOOK_CELL).first).to_be_visible(timeout=WAIT)
        choose_kernel_if_asked(page)
        page.locator(CELL_EDITOR).first.click()
        page.keyboard.press("Shift+Enter")
        wait_for_table(page, lab.log)

        picked = page.locator(PICKED_ROW)
        for remaining in range(picked.count(), 0, -1):  # start from nothing picked
            picked.first.click()
            expect(picked).to_have_count(remaining - 1)
        for name in EXPERIMENTS:
            page.locator(NAMED_ROW.format(name=name)).click()
        for name in EXPERIMENTS:
            header = page.locator(IMAGE_COLUMN).filter(
                has=page.locator(COLUMN_LABEL, has_text=LORA_LABEL.format(name=name))
            )
            expect(header).to_have_count(1, timeout=WAIT)
            wait_for_images(page, name, header.get_attribute("data-key"))
        page.locator(IMAGE_COLUMN).first.scroll_into_view_if_needed()
        page.screenshot(path=tmp_path / "jupyterlab.png")
        browser.close()
    assert outside == [], f"the page reached beyond this machine: {outside}"
