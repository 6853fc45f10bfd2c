"""The dashboard app in-process, on real DVC repositories of the quick stand-in pipeline:
build it, pick, sort, filter, export, and read its state (no browser here: see
test_dashboard_browser.py)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bench.harness.quick_repo import exp_run, make_quick_repo, run
from dashboard import views
from dashboard.app import Dashboard, digest
from dashboard.data import experiments_frame

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def repo(dashboard_repo: Path) -> Path:
    return dashboard_repo


@pytest.fixture
def app(repo: Path) -> Dashboard:
    dashboard = Dashboard(repo, watch=False)
    assert dashboard.panels.header.banner.layout.display == "none", (
        dashboard.panels.header.banner.value
    )
    return dashboard


def labels(app: Dashboard) -> dict[str, str]:
    return views.labels(app.state.frame, app.state.picked)


def shown(app: Dashboard) -> list[str]:
    """Names of the rows in the table, in the order shown."""
    return [app.panels.table.table.row_info[i]["name"] for i in app.panels.table.table.order]


def column(app: Dashboard, name: str) -> list[str]:
    position = [h["name"] for h in app.panels.table.table.header].index(name)
    return [app.panels.table.table.cells[i][position] for i in app.panels.table.table.order]


def test_one_row_per_row_of_dvc_exp_show(app: Dashboard, repo: Path):
    exp_show = json.loads(run(repo, "dvc", "exp", "show", "--json"))
    experiments = sum(len(c.get("experiments") or []) for c in exp_show)
    assert experiments == 3
    assert len(app.panels.table.table.order) == len(exp_show) + experiments == 5
    assert set(shown(app)) == {"workspace", "main", "rank-8", "rank-16", "lr-high"}
    assert "3 experiments" in app.panels.table.count.value


def test_default_picks_compare_the_newest_experiment_with_its_baseline(app: Dashboard):
    assert [labels(app)[rev] for rev in app.state.picked] == ["main", "lr-high"]
    assert app.panels.table.table.picked == app.state.picked
    assert set(app.panels.table.table.colors) == set(app.state.picked)


def test_sort_on_any_column_across_the_whole_table(app: Dashboard):
    app.panels.table.table.sort = {"column": "train_lora.rank", "descending": True}
    ranks = [int(v) for v in column(app, "train_lora.rank")]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] == 16
    app.panels.table.table.sort = {"column": "name", "descending": False}
    assert shown(app) == sorted(shown(app))


def test_filter_narrows_rows_and_a_bad_filter_says_why(app: Dashboard):
    app.panels.table.filter.value = "train_lora.rank >= 8 and type_fidelity_lora > 0.95"
    assert set(shown(app)) == {"rank-16", "lr-high", "workspace"}
    assert "3 of 5 rows shown" in app.panels.table.count.value
    app.panels.table.filter.value = "train_lora.rank >="
    assert "cannot filter by" in app.panels.table.filter_message.value
    assert len(app.panels.table.table.order) == 5  # the table stays usable
    app.panels.table.filter.value = 'state == "success"'
    assert app.panels.table.filter_message.value == ""
    assert set(shown(app)) == {"main", "rank-8", "rank-16", "lr-high"}


def test_columns_only_differing_and_chosen(app: Dashboard):
    names = [h["name"] for h in app.panels.table.table.header]
    assert {"train_lora.rank", "train_lora.learning_rate", "type_fidelity_lora"} <= set(names)
    assert "generate.seeds" not in names  # the same everywhere
    app.panels.table.filter.value = 'name in ["rank-8", "rank-16"]'  # the same learning rate
    names = [h["name"] for h in app.panels.table.table.header]
    assert "train_lora.rank" in names and "train_lora.learning_rate" not in names
    app.panels.table.filter.value = ""
    app.panels.table.only_differing.value = False
    names = [h["name"] for h in app.panels.table.table.header]
    assert "generate.seeds" in names and "model.tiny.unet_steps" in names
    app.panels.table.column_picker.value = ("name", "state", "train_lora.rank", "lift")
    header = app.panels.table.table.header
    # the key metrics come first, before the params
    assert [h["name"] for h in header] == ["name", "state", "lift", "train_lora.rank"]
    assert [h["group"] for h in header] == ["fixed", "fixed", "metric", "param"]


def test_highlights_changed_params_and_best_metrics(app: Dashboard):
    table = app.panels.table.table
    names = [h["name"] for h in table.header]
    rank = names.index("train_lora.rank")
    fidelity = names.index("type_fidelity_lora")
    index = {info["name"]: i for i, info in enumerate(table.row_info)}
    assert table.marks.get(f"{index['rank-8']},{rank}") == "changed"
    assert f"{index['main']},{rank}" not in table.marks  # the baseline itself
    # a key metric's cell: its value and its interval, "0.5 [0.45, 0.55]"
    assert all(
        re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", v) for v in column(app, "type_fidelity_lora")
    )
    values = [float(v.split()[0]) for v in column(app, "type_fidelity_lora")]
    best = [i for i in table.order if table.marks.get(f"{i},{fidelity}") == "best"]
    assert best and all(
        float(table.cells[i][fidelity].split()[0]) == pytest.approx(max(values), abs=1e-3)
        for i in best
    )


def test_picking_two_compares_curves_images_and_confusion(app: Dashboard):
    start = time.perf_counter()
    app.pick(["rank-8", "rank-16"])
    print(f"pick two: {time.perf_counter() - start:.2f} s")
    figure = app.panels.curves.plot.figure
    assert {t.name for t in figure.data if t.showlegend is not False} == {"rank-8", "rank-16"}
    assert "train_lora" in figure.layout.title.text
    assert (
        len([t for t in app.panels.classifier.confusion.figure.data if t.type == "heatmap"]) == 2
    )
    labels = [c["label"] for c in app.panels.gallery.gallery.columns]
    # the base model's images are the same for both experiments: one column of them
    assert labels == ["rank-8 · base", "rank-8 · LoRA", "rank-16 · LoRA"]
    assert "the same for rank-16" in app.panels.gallery.gallery.columns[0]["detail"]
    assert "type_fidelity_base" in app.panels.gallery.gallery.columns[0]["detail"]
    assert "rank=8" in app.panels.gallery.gallery.columns[1]["detail"]
    assert "type_fidelity_lora" in app.panels.gallery.gallery.columns[1]["detail"]
    assert len(app.panels.gallery.gallery.rows) == 12  # 2 prompts x 6 seeds
    assert all(
        cell["src"].startswith("data:image/png;base64,")
        for cell in app.panels.gallery.gallery.rows[0]["cells"]
    )
    left, right = (
        app.panels.gallery.gallery.rows[0]["cells"][1]["src"],
        app.panels.gallery.gallery.rows[0]["cells"][2]["src"],
    )
    assert left != right  # rank changes the LoRA's Pokémon
    info = {i["name"]: i for i in app.panels.table.table.row_info}  # a picture in the table
    assert info["rank-8"]["thumb"].startswith("data:image/png;base64,")
    app.panels.gallery.mode.value = "lora"
    assert [c["label"] for c in app.panels.gallery.gallery.columns] == [
        "rank-8 · LoRA",
        "rank-16 · LoRA",
    ]


def test_base_columns_with_different_images_stay_apart(app: Dashboard):
    """Experiments with another base model (or size) have base images of their own."""
    app.pick(["rank-8", "rank-16", "lr-high"])
    files = {}
    for rev, color in zip(app.state.picked, ("red", "red", "blue"), strict=True):
        files[rev] = app.store._out / f"{rev}.png"  # where dvc plots diff -o writes: inside
        Image.new("RGB", (4, 4), color).save(files[rev])
    names = labels(app)
    columns = [
        {"rev": rev, "kind": kind, "label": f"{names[rev]} · {kind}", "detail": ""}
        for rev in app.state.picked
        for kind in ("base", "lora")
    ]
    lookup = {(rev, "base", "p", 0): str(file) for rev, file in files.items()}
    kept = views.one_column_per_base(
        app.state.frame, columns, lookup, [("p", 0)], lambda file: digest(file, app.store)
    )
    assert [c["label"] for c in kept] == [
        "rank-8 · base",
        "rank-8 · lora",
        "rank-16 · lora",
        "lr-high · base",
        "lr-high · lora",
    ]
    assert kept[0]["detail"].startswith("the same for rank-16")
    assert not kept[3]["detail"].startswith("the same")


def test_enlarging_an_image_sends_the_full_size_file(app: Dashboard, monkeypatch):
    app.pick(["rank-8"])
    sent = []
    monkeypatch.setattr(
        app.panels.gallery.gallery, "send", lambda content, buffers=None: sent.append(content)
    )
    key = app.panels.gallery.gallery.rows[0]["cells"][0]["key"]
    app.panels.gallery.gallery._on_message(app.panels.gallery.gallery, {"enlarge": key}, [])
    assert sent[0]["enlarged"]["key"] == key
    assert sent[0]["enlarged"]["src"].startswith("data:image/png;base64,")


def test_export_the_visible_table(app: Dashboard, monkeypatch):
    files = {}
    monkeypatch.setattr(
        app.panels.table.table, "download", lambda name, text, mime: files.update({name: text})
    )
    app.panels.table.filter.value = "train_lora.rank >= 8"
    app.panels.table.table.sort = {"column": "train_lora.rank", "descending": False}
    app.export("csv")
    app.export("markdown")
    rows = list(csv.DictReader(io.StringIO(files["experiments.csv"])))
    assert [r["name"] for r in rows] == shown(app)
    assert [int(r["train_lora.rank"]) for r in rows] == sorted(
        int(r["train_lora.rank"]) for r in rows
    )
    markdown = files["experiments.md"].splitlines()
    assert markdown[0].startswith("| id | name | state |")
    assert len(markdown) == 2 + len(rows)


def test_scatter_and_parallel_coordinates_cover_all_experiments(app: Dashboard):
    assert app.panels.overview.x_choice.value == "train_lora.rank"
    assert app.panels.overview.y_choice.value == "type_fidelity_lora"
    scatter = app.panels.overview.scatter.figure.data[0]
    assert len(scatter.x) == 4  # baseline and three experiments, not the workspace
    dimensions = [d.label for d in app.panels.overview.parallel.figure.data[0].dimensions]
    assert dimensions[-1] == "type_fidelity_lora" and "train_lora.rank" in dimensions


def test_plots_are_read_only_for_the_picked(app: Dashboard, monkeypatch):
    asked = []
    real = app.store.plots
    monkeypatch.setattr(
        app.store, "plots", lambda revs, *more: asked.append(list(revs)) or real(revs, *more)
    )
    app.pick(["rank-16"])
    assert asked == [[app.state.frame.set_index("name").loc["rank-16", "id"]]]


def test_a_running_experiment_missing_from_one_read_is_read_again(app: Dashboard, monkeypatch):
    """DVC's `exp show` can miss a run that ends while it reads (between the running tasks and
    the refs, with two queue workers: a CI failure): the page reads again rather than drop it,
    and accepts the loss when the experiment stays gone (removed)."""
    monkeypatch.setattr("dashboard.app.REREAD_PAUSE", 0)
    real = app.store.experiments
    reads: list[int] = []
    gone = {"rank-8"}

    def flaky(*args, **kwargs):
        frame = real(*args, **kwargs)
        reads.append(1)
        return frame[~frame["name"].isin(gone)] if len(reads) == 1 or "all" in gone else frame

    monkeypatch.setattr(app.store, "experiments", flaky)
    app.state.frame.loc[app.state.frame["name"] == "rank-8", "state"] = "running"
    assert app.refresh(force=True)
    assert len(reads) == 2 and "rank-8" in set(app.state.frame["name"])
    assert app.state.frame.set_index("name").loc["rank-8", "state"] == "success"
    reads.clear()
    app.state.frame.loc[app.state.frame["name"] == "rank-8", "state"] = "queued"
    gone.add("all")  # removed for good: read 1 + REREADS times, then shown without it
    assert app.refresh(force=True)
    assert len(reads) == 4 and "rank-8" not in set(app.state.frame["name"])
    reads.clear()
    assert app.refresh(force=True) and len(reads) == 1  # nothing active went missing


def test_not_a_dvc_repository_is_a_message(tmp_path: Path):
    app = Dashboard(tmp_path, watch=False)
    assert "is not a DVC repository" in app.panels.header.banner.value
    assert app.panels.header.banner.layout.display is None
    assert app.panels.table.table.order == []


def test_a_hanging_dvc_is_stopped_and_said(repo: Path):
    app = Dashboard(repo, watch=False, timeout=0.001)
    assert "took longer than 0.001 s" in app.panels.header.banner.value


def test_no_experiments_yet_and_a_failed_one(tmp_path: Path):
    app = Dashboard(make_quick_repo(tmp_path / "fresh"), watch=False)
    assert "No experiments yet" in app.panels.table.count.value
    assert app.state.picked == ["workspace"] and len(app.panels.gallery.gallery.rows) == 12
    data = json.loads((FIXTURES / "exp_show.json").read_text())
    revision = data[1]["experiments"][0]["revs"][0]
    revision["error"] = {"type": "ReproductionError", "msg": "failed to reproduce 'train_lora'"}
    app.set_frame(experiments_frame(data))
    assert "failed to reproduce &#x27;train_lora&#x27;" in app.panels.table.count.value
    info = {i["name"]: i for i in app.panels.table.table.row_info}
    assert info["lr-high"]["state"] == "failed" and not info["queued-16"]["pickable"]


def test_a_running_experiment_never_takes_a_best_value_star(app: Dashboard):
    data = json.loads((FIXTURES / "exp_show.json").read_text())
    running = next(e for e in data[1]["experiments"] if e["name"] == "rank-8")
    running["executor"] = {"state": "running", "name": "dvc-task", "local": {"pid": 1}}
    metrics = running["revs"][0]["data"]["metrics"]["outputs/evaluate/metrics.json"]["data"]
    metrics["type_fidelity_lora"] = 2.0  # its figure so far: higher than any finished run's
    lower = next(e for e in data[1]["experiments"] if e["name"] == "lr-high")
    lower["revs"][0]["data"]["metrics"]["outputs/evaluate/metrics.json"]["data"][
        "type_fidelity_lora"
    ] = 0.5  # the finished runs differ: the best of them gets the star
    app.set_frame(experiments_frame(data))
    fidelity = [h["name"] for h in app.panels.table.table.header].index("type_fidelity_lora")
    starred = [key for key, mark in app.panels.table.table.marks.items() if mark == "best"]
    rows = [int(key.split(",")[0]) for key in starred if key.endswith(f",{fidelity}")]
    best = {app.panels.table.table.row_info[row]["name"] for row in rows}
    assert best and "rank-8" not in best


def test_missing_plots_are_said_not_thrown(app: Dashboard):
    app.pick(["0" * 40])  # no such commit: its plots cannot be read
    assert app.panels.header.banner.layout.display == "none", app.panels.header.banner.value
    assert app.panels.header.banner.value == ""
    assert "No generated images for the picked experiments: 0000000: not in the table" in (
        app.panels.gallery.gallery.empty_text
    )


def test_all_branches_and_commits(repo: Path, tmp_path: Path):
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    run(clone, "git", "checkout", "-q", "-b", "other")
    (clone / "note.txt").write_text("x")
    run(clone, "git", "add", "note.txt")
    run(clone, "git", "commit", "-qm", "second")
    app = Dashboard(clone, watch=False)
    assert (app.state.frame["kind"] == "baseline").sum() == 1
    app.panels.table.all_commits.value = True
    assert (app.state.frame["kind"] == "baseline").sum() == 2


def test_a_new_experiment_appears_on_its_own(tmp_path: Path):
    path = make_quick_repo(tmp_path / "live")
    app = Dashboard(path, watch=True, poll_seconds=0.2)
    try:
        assert len(app.panels.table.table.order) == 2
        exp_run(path, "live-1", "train_lora.rank=2")
        finished = time.monotonic()
        deadline = finished + 30
        while time.monotonic() < deadline and "live-1" not in shown(app):
            time.sleep(0.05)
        print(f"new experiment in the table {time.monotonic() - finished:.2f} s after it finished")
        assert "live-1" in shown(app)
    finally:
        app.close()


def test_the_dashboard_never_imports_torch(repo: Path):
    code = (
        "import sys; from dashboard import Dashboard; Dashboard(sys.argv[1], watch=False); "
        "names = ('torch', 'diffusers', 'transformers', 'peft'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(repo)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_files_outside_the_repository_are_never_shown(app: Dashboard, tmp_path: Path):
    from dashboard.dvc_cli import DvcError

    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    with pytest.raises(DvcError, match="outside the repository"):
        app.store.inside(outside)
    with pytest.raises(DvcError, match="outside the repository"):
        app.store.inside(app.store.path / ".." / "elsewhere.png")
    inside = app.store.path / "outputs" / "generated"
    assert app.store.inside(inside) == inside.resolve()


def test_a_metric_with_an_interval_shows_it_beside_the_value():
    from dashboard.views import interval

    row = pd.Series({"lift": 0.58, "lift_low": 0.4029, "lift_high": 0.7103, "f1": 0.93})
    assert interval(row, "lift") == " [0.4, 0.71]"
    assert interval(row, "f1") == ""  # no interval written: nothing claimed
    row["lift_low"] = float("nan")  # a queued run's missing figure
    assert interval(row, "lift") == ""
