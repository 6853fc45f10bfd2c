"""Benchmark: the dashboard with 200 and 1,000 experiments in a real DVC repository, in a real
Voila server and Debian's Chromium, against the figures of MLflow's UI measured on this kind of
machine (first 200 rows 3.1 s, 1,000 rows after nine "load more" clicks 12 s, sort 1.8 s,
filter 1.4 s, two-run comparison 2.0 s).

    python -m bench.dashboard                  # 200 and 1,000 experiments
    python -m bench.dashboard --sizes 200      # one size

Each size builds a repository of the quick stand-in pipeline (bench/harness/quick_pipeline): two
experiments run by `dvc exp run`, the rest copied with git plumbing from one of them (DVC lists
them like any other: `dvc exp show` reads each one). Times in the browser are taken in the page
(performance.now() when the awaited change is in the DOM), from the request or the click.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from bench.harness.browser import FIRST_ROW_SCRIPT, launch, voila_server
from bench.harness.quick_repo import clone_experiments, exp_run, make_quick_repo, run
from dashboard.data import filter_experiments
from dashboard.store import ExperimentStore

FILTER = "train_lora.rank >= 8 and type_fidelity_lora > 0.5"
# Runs `action` in the page, then resolves with the ms until `done` holds (checked after every
# DOM change and every 5 ms).
TIMED = """async ([action, done, limit]) => {
  const check = new Function(`return (${done});`);
  const start = performance.now();
  new Function(action)();
  return await new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => test());
    const test = () => {
      if (check()) { observer.disconnect(); resolve(performance.now() - start); }
      else if (performance.now() - start > limit) { observer.disconnect(); reject("timed out"); }
    };
    observer.observe(document.body, { childList: true, subtree: true, attributes: true });
    const poll = () => { test(); if (performance.now() - start <= limit) setTimeout(poll, 5); };
    poll();
  });
}"""


def timed(page: Page, action: str, done: str, limit_ms: float = 60_000) -> float:
    """Seconds from running `action` in the page until `done` holds there."""
    return page.evaluate(TIMED, [action, done, limit_ms]) / 1000


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def build(root: Path, count: int) -> Path:
    repo = make_quick_repo(root / f"repo-{count}")
    exp_run(repo, "template", "train_lora.rank=8")
    exp_run(repo, "second", "train_lora.rank=16")
    clone_experiments(repo, "template", count - 2)
    return repo


def measure(repo: Path, count: int, browser, log: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    figures["git for-each-ref refs/exps"] = seconds(
        lambda: run(repo, "git", "for-each-ref", "refs/exps")
    )
    figures["dvc exp show --json, first read (CLI)"] = seconds(
        lambda: run(repo, "dvc", "exp", "show", "--json", timeout=1200)
    )
    figures["dvc exp show --json, cached (CLI)"] = seconds(
        lambda: run(repo, "dvc", "exp", "show", "--json")
    )
    store = ExperimentStore(repo, timeout=600)
    store.exp_show()
    figures["exp show in-process, cached (the dashboard's read)"] = seconds(store.exp_show)
    frame = store.experiments()
    expected_filtered = len(filter_experiments(frame, FILTER))

    with voila_server(repo, log, pool_size=1) as served:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(FIRST_ROW_SCRIPT)
        first = context.new_page()  # the first page: a kernel started for it
        first.goto(served.url)
        first.wait_for_selector(".xt-row", timeout=120_000)
        figures["table on screen, first page after start (s)"] = (
            first.evaluate("window.__firstRow") / 1000
        )
        first.close()
        time.sleep(8)  # Voila refills its pool of preheated kernels
        page = context.new_page()
        page.goto(served.url)
        page.wait_for_selector(".xt-row", timeout=120_000)
        figures["table on screen, preheated kernel (s)"] = (
            page.evaluate("window.__firstRow") / 1000
        )
        page.wait_for_function(
            f"document.querySelector('.experiment-count')?.dataset.shown === '{len(frame)}'",
            timeout=60_000,
        )
        time.sleep(3)  # let the deferred plots draw
        figures["scroll to the last of all rows (no 'load more')"] = timed(
            page,
            "const s = document.querySelector('.xt-scroll'); s.scrollTop = s.scrollHeight;",
            "[...document.querySelectorAll('.xt-row')].some(r => r.dataset.name === "
            f"'{frame.iloc[-1]['name']}')",
        )
        page.evaluate("document.querySelector('.xt-scroll').scrollTop = 0")
        top = frame.sort_values("type_fidelity_lora", ascending=False, kind="stable")
        figures["sort all rows (header click to rows drawn)"] = timed(
            page,
            "document.querySelector('th[data-column=\"type_fidelity_lora\"]').click();",
            f"document.querySelector('.xt-row')?.dataset.name === '{top.iloc[0]['name']}'",
        )
        figures["filter all rows (Enter to rows drawn)"] = timed(
            page,
            "const box = document.querySelector('.dashboard-toolbar input');"
            f"box.value = {FILTER!r}; box.dispatchEvent(new Event('change', {{bubbles: true}}));",
            f"document.querySelector('.experiment-count')?.dataset.shown === "
            f"'{expected_filtered}'",
        )
        clear = (
            "const box = document.querySelector('.dashboard-toolbar input'); box.value = '';"
            "box.dispatchEvent(new Event('change', {bubbles: true}));"
        )
        timed(
            page,
            clear,
            f"document.querySelector('.experiment-count')?.dataset.shown === '{len(frame)}'",
        )
        # Compare the two best, as from a leaderboard: their plots were not read ahead.
        picks = [name for name in top["name"] if name not in ("workspace",)][:2]
        page.get_by_role("button", name="Clear picks").click()
        page.wait_for_function("document.querySelectorAll('.gl-col').length === 0")
        labels = " && ".join(
            f"[...document.querySelectorAll('.gl-label')].some(l => l.textContent.startsWith("
            f"'{name} ·'))"
            for name in picks
        )
        legend = " && ".join(
            f"[...document.querySelectorAll('.legendtext')].some(l => l.textContent === '{name}')"
            for name in picks
        )
        figures["compare two: curves and images (two clicks to drawn)"] = timed(
            page,
            "".join(
                f"document.querySelector('.xt-row[data-name=\"{n}\"]').click();" for n in picks
            ),
            "[...document.querySelectorAll('.gl-label')].filter(l => l.textContent.endsWith("
            f"'LoRA')).length === 2 && {labels} && {legend}",
        )
        experiments = int(page.get_attribute(".experiment-count", "data-experiments"))
        exp_run(repo, "fresh", "train_lora.rank=2")
        figures["new experiment in the table after `dvc exp run` returns"] = timed(
            page,
            "",
            f"document.querySelector('.experiment-count')?.dataset.experiments === "
            f"'{experiments + 1}'",
        )
        context.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--keep", type=Path, help="build the repositories here and keep them")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        root = args.keep or Path(tmp)
        browser = launch(playwright)
        for count in args.sizes:
            start = time.perf_counter()
            repo = build(root, count)
            print(f"built {count} experiments in {time.perf_counter() - start:.0f} s", flush=True)
            results[count] = measure(repo, count, browser, root / f"voila-{count}.log")
        browser.close()
    print(
        f"\n{platform.machine()}, {platform.python_version()}, Chromium headless, Voila with "
        "one preheated kernel\n"
    )
    print("| measure | " + " | ".join(f"{n} experiments (s)" for n in results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in next(iter(results.values())):
        print(f"| {name} | " + " | ".join(f"{r[name]:.3f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
