"""The dashboard's view models (dashboard.views) on recorded `dvc exp show --json` and
`dvc plots diff --json` output: no git, no DVC, no widgets."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dashboard import views
from dashboard.data import changed_params, experiments_frame
from dashboard.state import DashboardState, ExperimentState
from dashboard.store import Plots

FIXTURES = Path(__file__).parent / "fixtures"
EXP_SHOW = json.loads((FIXTURES / "exp_show.json").read_text())
PLOTS_DIFF = json.loads((FIXTURES / "plots_diff.json").read_text())


def frame_of(exp_show=EXP_SHOW) -> pd.DataFrame:
    return experiments_frame(copy.deepcopy(exp_show))


def state_of(frame: pd.DataFrame | None = None, **settings) -> DashboardState:
    frame = frame_of() if frame is None else frame
    return DashboardState(frame=frame, changed=changed_params(frame), **settings)


def ids(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["name"], frame["id"], strict=True))


def names(model: views.TableModel) -> list[str]:
    return [model.row_info[i]["name"] for i in model.order]


def column(model: views.TableModel, name: str) -> list[str]:
    position = model.columns.index(name)
    return [model.cells[i][position] for i in model.order]


def test_states_are_one_enum_that_reads_as_the_strings_dvc_writes():
    frame = frame_of()
    assert set(frame["state"]) <= set(ExperimentState)
    assert ExperimentState.QUEUED == "queued"
    assert frame["state"].isin({ExperimentState.QUEUED}).sum() == 1


def test_key_metrics_come_first_and_are_never_hidden():
    model = views.table_model(state_of())
    assert model.columns[:8] == [
        "name",
        "state",
        "type_fidelity_base",
        "type_fidelity_lora",
        "lift",
        "f1",
        "final_loss",
        "created",
    ]
    # the same value in every row: hidden, unless it is a key metric
    assert "generate.seeds" not in model.columns
    assert len(set(column(model, "type_fidelity_lora")) - {""}) == 1
    assert "type_fidelity_lora" in model.columns


def test_a_column_that_only_one_row_has_is_shown():
    """Right after `make demo` the workspace is the only row with metrics."""
    frame = frame_of()
    workspace = frame[frame["kind"] == "workspace"].copy()
    baseline = frame[frame["kind"] == "baseline"].copy()
    baseline["diversity_lora"] = float("nan")
    two = pd.concat([workspace, baseline], ignore_index=True)
    two.attrs = frame.attrs
    model = views.table_model(state_of(two))
    assert "diversity_lora" in model.columns
    assert column(model, "diversity_lora")[1] == ""


def test_key_metric_cells_show_their_interval():
    frame = frame_of()
    frame["type_fidelity_lora_low"] = 0.75
    frame["type_fidelity_lora_high"] = 1.0
    frame.attrs["metrics"] = [
        *frame.attrs["metrics"],
        "type_fidelity_lora_low",
        "type_fidelity_lora_high",
    ]
    model = views.table_model(state_of(frame))
    assert "type_fidelity_lora_low" not in model.columns  # in the cell, not a column of its own
    assert column(model, "type_fidelity_lora")[0] == "1 [0.75, 1]"
    assert "type_fidelity_lora_low" in views.column_options(frame)  # still choosable


def test_marks_changed_params_and_stars_the_best_finished_value():
    frame = frame_of()
    model = views.table_model(state_of(frame))
    rank = model.columns.index("train_lora.rank")
    index = {info["name"]: i for i, info in enumerate(model.row_info)}
    assert model.marks[f"{index['rank-8']},{rank}"] == "changed"
    assert f"{index['main']},{rank}" not in model.marks
    assert not model.row_info[index["queued-16"]]["pickable"]


def test_a_running_experiment_never_takes_a_star():
    data = copy.deepcopy(EXP_SHOW)
    running = next(e for e in data[1]["experiments"] if e["name"] == "rank-8")
    running["executor"] = {"state": "running", "name": "dvc-task", "local": {"pid": 1}}
    metrics = running["revs"][0]["data"]["metrics"]["outputs/evaluate/metrics.json"]["data"]
    metrics["type_fidelity_lora"] = 2.0
    other = next(e for e in data[1]["experiments"] if e["name"] == "lr-high")
    other["revs"][0]["data"]["metrics"]["outputs/evaluate/metrics.json"]["data"][
        "type_fidelity_lora"
    ] = 0.5
    model = views.table_model(state_of(frame_of(data)))
    fidelity = model.columns.index("type_fidelity_lora")
    starred = {
        model.row_info[int(key.split(",")[0])]["name"]
        for key, mark in model.marks.items()
        if mark == "best" and key.endswith(f",{fidelity}")
    }
    assert starred and "rank-8" not in starred


def test_filter_sort_and_a_bad_filter():
    state = state_of(filter="train_lora.rank >= 8", sort={"column": "train_lora.rank"})
    model = views.table_model(state)
    assert names(model) == ["workspace", "lr-high", "rank-8", "queued-16"]
    state.filter = "train_lora.rank >="
    model = views.table_model(state)
    assert "cannot filter by" in model.filter_error and len(model.order) == 5
    assert "filter-error" in views.filter_message(model.filter_error)


def test_chosen_columns_and_all_columns():
    state = state_of(only_differing=False)
    assert "generate.seeds" in views.table_model(state).columns
    state.columns = ("name", "train_lora.rank", "lift")
    assert views.table_model(state).columns == ["name", "lift", "train_lora.rank"]


def test_default_picks():
    frame = frame_of()
    assert views.default_picks(frame) == [ids(frame)["main"], ids(frame)["lr-high"]]
    only_workspace = frame[frame["kind"] != "experiment"]
    assert views.default_picks(only_workspace) == ["workspace"]
    assert views.default_picks(frame.iloc[:0]) == []


def test_newly_started_follow_launched_experiments():
    frame = frame_of()
    follow, ended = views.newly_started(frame, {"rank-8", "queued-16"})
    assert follow == [ids(frame)["rank-8"]] and ended == {"rank-8"}
    assert views.auto_picks(["a"] * 7, ["b", "c"]) == ["a"] * 7 + ["b"]


def test_count_says_failures_with_their_log():
    data = copy.deepcopy(EXP_SHOW)
    revision = data[1]["experiments"][0]["revs"][0]
    revision["error"] = {"type": "ReproductionError", "msg": "failed to reproduce 'train_lora'"}
    state = state_of(frame_of(data), failure_logs={"lr-high": "Traceback: boom"})
    text = views.count_html(state, 5)
    assert "3 experiments" in text and "1 failed" in text
    assert "failed to reproduce &#x27;train_lora&#x27;" in text and "Traceback: boom" in text


def test_queue_summary():
    summary = views.queue_summary(frame_of())
    assert "data-queued='1'" in summary.html and "start the queue" in summary.html
    assert summary.log_names == ["lr-high", "rank-8", "queued-16"]


def test_apply_preview_lists_the_params_that_change():
    frame = frame_of()
    row = frame.set_index("name").loc["queued-16"].to_dict()
    assert views.apply_preview(frame, row) == ["train_lora.rank: 8 → 16"]


def gallery_state(picked: list[str], mode: str = "both") -> DashboardState:
    frame = frame_of()
    plots = Plots.parse(PLOTS_DIFF)
    plots.images["rev"] = plots.images["rev"].map(ids(frame))  # the fixture names revisions
    return state_of(frame, picked=[ids(frame)[n] for n in picked], plots=plots, gallery_mode=mode)


def test_gallery_one_base_column_when_the_base_images_are_the_same():
    state = gallery_state(["rank-8", "lr-high"])
    model = views.gallery_model(state, digest=lambda file: "same", inside=lambda file: file)
    labels = [c["label"] for c in model.columns]
    assert labels == ["rank-8 · base", "rank-8 · LoRA", "lr-high · LoRA"]
    assert model.columns[0]["detail"].startswith("the same for lr-high")
    assert "rank=8" in model.columns[1]["detail"]
    assert len(model.rows) == 4 and all(len(row["cells"]) == 3 for row in model.rows)
    assert model.rows[0]["cells"][1]["file"].endswith("lora_a-fire-type-pokemon_seed-0.png")


def test_gallery_base_columns_stay_apart_when_their_images_differ():
    state = gallery_state(["rank-8", "lr-high"])
    model = views.gallery_model(state, digest=lambda file: file, inside=lambda file: file)
    assert [c["label"] for c in model.columns] == [
        "rank-8 · base",
        "rank-8 · LoRA",
        "lr-high · base",
        "lr-high · LoRA",
    ]
    lora = views.gallery_model(gallery_state(["rank-8"], "lora"), str, str)
    assert [c["label"] for c in lora.columns] == ["rank-8 · LoRA"]


def test_gallery_a_file_the_store_refuses_is_a_reason():
    def inside(file: str):
        raise ValueError(f"{file} is outside the repository")

    model = views.gallery_model(gallery_state(["rank-8"]), str, inside)
    assert all("outside the repository" in cell["missing"] for cell in model.rows[0]["cells"])
    assert views.gallery_model(state_of(), str, str).empty_text.startswith("Pick experiments")


def test_curves_and_axes():
    plots = Plots.parse(PLOTS_DIFF)
    options, chosen = views.curve_choice(plots.curves, None)
    assert chosen == "outputs/train_lora/plots/metrics/loss.tsv" and chosen in options
    assert views.curve_choice(plots.curves, options[0])[1] == options[0]
    x_options, x, _, y = views.axis_choices(frame_of())
    assert x == "train_lora.rank" and y == "type_fidelity_lora"
    assert "train_lora.learning_rate" in x_options


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"lift": 0.58, "lift_low": 0.4029, "lift_high": 0.7103}, " [0.4, 0.71]"),
        ({"lift": 0.58}, ""),
        ({"lift": 0.58, "lift_low": float("nan"), "lift_high": 0.7}, ""),
    ],
)
def test_interval(row, expected):
    assert views.interval(pd.Series(row), "lift") == expected


def test_views_and_commands_import_no_widgets():
    code = (
        "import sys, dashboard.views, dashboard.state, dashboard.commands; "
        "found = sorted({'ipywidgets', 'anywidget', 'traitlets'} & set(sys.modules)); "
        "print(found); sys.exit(1 if found else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_panels_never_reach_into_each_other():
    """A panel imports its view model and widgets, never another panel nor the controller."""
    import ast

    folder = Path(views.__file__).parent / "panels"
    for file in sorted(folder.glob("*.py")):
        tree = ast.parse(file.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        others = {m for m in imported if m and m.startswith("dashboard.panels.")}
        assert not others and "dashboard.app" not in imported, (file.name, imported)


def test_rows_whose_images_are_read_get_a_thumbnail():
    state = gallery_state(["rank-8"])
    files = views.row_thumbnails(state.plots.images)
    frame = state.frame
    assert set(files) == {ids(frame)["rank-8"], ids(frame)["lr-high"]}
    assert files[ids(frame)["rank-8"]].endswith(
        "rank-8_outputs_generated_lora_a-fire-type-pokemon_seed-0.png"
    )
    state.thumbs = files
    model = views.table_model(state)
    shown = {model.row_info[i]["name"] for i in model.thumbs}
    assert shown == {"rank-8", "lr-high"}
