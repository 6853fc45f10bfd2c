"""The dashboard as a person uses it: a real Voila server, Debian's Chromium driven by
Playwright, a real DVC repository with experiments."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Page, expect, sync_playwright

from bench.harness.browser import launch, voila_server
from bench.harness.quick_repo import run

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]
WAIT = 60_000  # ms: the first page of a fresh server on 2 busy cores


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(dashboard_repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    with voila_server(dashboard_repo, log) as served:
        yield served.url  # the printed address, with its token


@pytest.fixture
def page(browser, server) -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector(".xt-row", timeout=WAIT)
    yield page
    context.close()


def row(page: Page, name: str):
    return page.locator(f'.xt-row[data-name="{name}"]')


def tab(page: Page, name: str) -> None:
    """Show one tab of the page (Experiments, Run experiments; Pokémon, Training curves, ...)."""
    page.get_by_role("tab", name=name, exact=True).click()


def gallery_labels(page: Page) -> list[str]:
    return page.locator(".gl-col .gl-label").all_inner_texts()


def test_the_table_shows_every_row_of_dvc_exp_show(page: Page, dashboard_repo: Path):
    exp_show = json.loads(run(dashboard_repo, "dvc", "exp", "show", "--json"))
    experiments = sum(len(c.get("experiments") or []) for c in exp_show)
    expect(page.locator(".xt-row")).to_have_count(len(exp_show) + experiments)
    count = page.locator(".experiment-count")
    expect(count).to_have_attribute("data-experiments", str(experiments))
    names = page.locator(".xt-row").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert set(names) == {"workspace", "main", "rank-8", "rank-16", "lr-high"}


def unpick_all(page: Page) -> None:
    """Click the picked rows off, one by one, until none is picked."""
    picked = page.locator(".xt-row.xt-picked")
    for remaining in range(picked.count(), 0, -1):
        picked.first.click()
        expect(picked).to_have_count(remaining - 1)


def test_picking_two_experiments_shows_both_columns_of_images(page: Page):
    unpick_all(page)  # start from nothing picked
    row(page, "rank-8").click()
    row(page, "rank-16").click()
    expect(page.locator(".gl-col")).to_have_count(3, timeout=WAIT)
    # the base model's images are the same for both: shown once
    assert gallery_labels(page) == ["rank-8 · base", "rank-8 · LoRA", "rank-16 · LoRA"]
    details = page.locator(".gl-col .gl-detail").all_inner_texts()
    assert "the same for rank-16" in details[0]
    assert "rank=8" in details[1] and "type_fidelity_lora" in details[1]
    expect(page.locator(".gl-thumb")).to_have_count(3 * 12)
    lora = page.locator('.gl-thumb[data-column$=":lora"]')
    sources = lora.evaluate_all("images => images.map(i => i.src)")
    pairs = list(zip(sources[::2], sources[1::2], strict=True))  # rank-8 and rank-16, per row
    assert len(pairs) == 12 and all(a != b for a, b in pairs)  # the rank shows in the Pokémon
    page.locator(".gl-thumb").first.click()
    expect(page.locator(".gl-overlay.gl-open")).to_be_visible()
    # the Pokémon tab's overlay (the playground's gallery has one of its own)
    expect(page.locator(".pokemon-panel .gl-caption")).to_contain_text("rank-8 · base")
    page.keyboard.press("Escape")
    expect(page.locator(".gl-overlay.gl-open")).to_have_count(0)
    tab(page, "Training curves")
    for name in ("rank-8", "rank-16"):  # both curves, in the legend of the training curves
        legend = page.locator(".js-plotly-plot .legendtext").filter(has_text=name)
        expect(legend.first).to_be_attached(timeout=WAIT)


def test_a_filter_narrows_the_rows(page: Page):
    box = page.get_by_placeholder("filter, e.g.", exact=False)
    box.fill("train_lora.rank >= 16")
    box.press("Enter")
    expect(page.locator(".xt-row")).to_have_count(3)  # rank-16, lr-high and the workspace
    expect(row(page, "rank-8")).to_have_count(0)
    box.fill("train_lora.rank >=")
    box.press("Enter")
    expect(page.locator(".filter-error")).to_contain_text("cannot filter by")
    expect(page.locator(".xt-row")).to_have_count(5)


def test_sorting_by_a_header_click_orders_the_whole_table(page: Page):
    page.locator('th[data-column="type_fidelity_lora"]').click()
    expect(page.locator('th[data-column="type_fidelity_lora"]')).to_contain_text("▼")
    expect(page.locator(".xt-row").last).to_have_attribute("data-name", "main")  # 0.5, the lowest
    names = page.locator(".xt-row").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names[0] in {"lr-high", "workspace"}  # 1.0, the highest


def test_export_to_csv_downloads_the_table_as_shown(page: Page):
    with page.expect_download() as download:
        page.get_by_role("button", name="CSV").click()
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 5 and {"name", "train_lora.rank", "type_fidelity_lora"} <= set(rows[0])


def test_the_first_view_shows_key_metrics_and_the_workspace_pokemon(browser, tmp_path: Path):
    """Right after `make demo` (the workspace and its commit, no experiment yet), without a
    click: the key metrics of every row with their intervals, in view without scrolling
    sideways at 1400 px, the workspace picked, and its Pokémon beside the table, in view."""
    from bench.harness.quick_repo import make_quick_repo

    repo = make_quick_repo(tmp_path / "repo")
    with voila_server(repo, tmp_path / "voila.log") as served:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(served.url)
        page.wait_for_selector(".xt-row", timeout=WAIT)
        workspace = row(page, "workspace")
        expect(workspace).to_have_class(re.compile("xt-picked"))
        columns = page.locator(".xt-table th").evaluate_all(
            "cells => cells.map(c => c.dataset.column || '')"
        )
        keys = ["type_fidelity_base", "type_fidelity_lora", "lift", "f1", "final_loss"]
        assert columns[1:3] == ["name", "state"] and columns[3:8] == keys, columns
        assert columns[8] == "created", columns
        # name, state and the key metrics in view: inside the page's width and not clipped by
        # the table's own sideways scroll
        scroller = page.locator(".xt-scroll").bounding_box()
        for name in ["name", "state", *keys]:
            box = page.locator(f'.xt-table th[data-column="{name}"]').bounding_box()
            left, right, shown = box["x"], box["x"] + box["width"], f"{name}: {box} {scroller}"
            assert left >= 0 and right <= 1400, shown
            assert scroller["x"] <= left and right <= scroller["x"] + scroller["width"], shown
        for name in ("workspace", "main"):
            cells = row(page, name).locator("td").all_inner_texts()
            values = {key: cells[columns.index(key)] for key in keys}
            assert all(re.match(r"-?\d", text) for text in values.values()), values
            for key in ("type_fidelity_base", "type_fidelity_lora"):
                assert re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", values[key]), values
        labels = page.locator(".gl-col .gl-label")
        expect(labels).to_have_text(["workspace · base", "workspace · LoRA"], timeout=WAIT)
        thumbs = page.locator(".gl-thumb")
        expect(thumbs).to_have_count(2 * 12)
        expect(thumbs.first).to_be_in_viewport()
        table, image = page.locator(".xt").bounding_box(), thumbs.first.bounding_box()
        assert image["x"] >= table["x"] + table["width"] - 1  # beside the table, not below
        expect(workspace.locator("img.xt-thumb")).to_have_count(1)  # its picture in the table
        assert page.locator(".launch-form").is_hidden()  # the form waits in its own tab
        page.close()


def test_not_a_dvc_repository_is_said_in_the_page(browser, tmp_path: Path):
    with voila_server(tmp_path, tmp_path / "voila.log", pool_size=0) as served:
        page = browser.new_page()
        page.goto(served.url)
        banner = page.locator(".dashboard-error")
        expect(banner).to_contain_text("is not a DVC repository", timeout=WAIT)
        expect(page.locator(".xt-empty")).to_be_visible()
        page.close()


def test_launch_a_grid_watch_it_run_and_apply_one(browser, tmp_path: Path):
    """Issue 6's flow in the page alone: fill the form, queue two experiments, start the queue,
    see both succeed in the table without reloading, apply one."""
    from bench.harness.quick_repo import make_quick_repo

    repo = make_quick_repo(tmp_path / "repo")
    try:
        with voila_server(repo, tmp_path / "voila.log") as served:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(served.url)
            page.wait_for_selector(".xt-row", timeout=WAIT)
            tab(page, "Run experiments")  # the form and the queue have a tab of their own
            form = page.locator(".launch-form")
            form.get_by_text("train_lora", exact=True).click()
            rank = page.locator(".param-train_lora-rank input")
            rank.fill("8, 16")
            rank.press("Enter")
            expect(page.locator(".launch-summary")).to_have_attribute("data-count", "2")
            page.get_by_placeholder("optional: name", exact=False).fill("grid")
            form.locator("button", has_text="Queue").click()
            expect(page.locator(".action-done")).to_contain_text(
                "Queued 2: grid-1, grid-2", timeout=WAIT
            )
            expect(row(page, "grid-1")).to_have_class(re.compile("xt-state-queued"))
            page.locator("button", has_text="Start queue").click()
            for name in ("grid-1", "grid-2"):
                expect(row(page, name)).to_have_class(
                    re.compile("xt-state-success"), timeout=180_000
                )
                # picked as it finishes: its Pokémon and its curve appear without a click
                expect(
                    page.locator(".gl-col .gl-label").filter(has_text=f"{name} · LoRA")
                ).to_have_count(1, timeout=WAIT)
                legend = page.locator(".js-plotly-plot .legendtext").filter(has_text=name)
                expect(legend.first).to_be_attached(timeout=WAIT)
            tab(page, "Experiments")
            page.locator("button", has_text="Clear picks").click()
            expect(page.locator(".xt-row.xt-picked")).to_have_count(0, timeout=WAIT)
            row(page, "grid-2").click()
            # the pick reaches the kernel before Apply asks about it (on 2 busy cores it may
            # wait behind the comparison of the last picks)
            expect(page.locator(".xt-row.xt-picked")).to_have_count(1, timeout=WAIT)
            expect(row(page, "grid-2")).to_have_class(re.compile("xt-picked"))
            page.locator("button", has_text="Apply").click()
            expect(page.locator(".confirm-text")).to_contain_text(
                "train_lora.rank: 4 → 16", timeout=WAIT
            )
            expect(page.locator(".confirm-yes")).to_be_visible(timeout=WAIT)
            page.locator(".confirm-yes").click()
            expect(page.locator(".action-done")).to_contain_text("Applied grid-2", timeout=WAIT)
            assert yaml.safe_load((repo / "params.yaml").read_text())["train_lora"]["rank"] == 16
            page.close()
    finally:
        run(repo, "dvc", "queue", "stop", "--kill")
