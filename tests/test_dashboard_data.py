"""The dashboard's parsers, on JSON recorded from real runs of this pipeline
(tests/fixtures/record_dvc_json.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dashboard.data import (
    FilterError,
    carry_picks,
    curve_points,
    differing_columns,
    experiments_frame,
    filter_experiments,
    flatten,
    image_files,
    mark_lost,
)
from dashboard.store import live_curve

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }


def test_one_row_per_workspace_baseline_and_experiment():
    frame = experiments_frame(load("exp_show.json"))
    assert frame["kind"].tolist() == [
        "workspace",
        "baseline",
        "experiment",
        "experiment",
        "experiment",
    ]
    by_name = frame.set_index("name")
    assert by_name.loc["rank-8", "train_lora.rank"] == 8
    assert by_name.loc["lr-high", "train_lora.learning_rate"] == 0.002
    assert by_name.loc["queued-16", "state"] == "queued"
    assert by_name.loc["rank-8", "state"] == "success"
    assert by_name.loc["workspace", "state"] == "workspace"
    baseline = frame[frame["kind"] == "baseline"].iloc[0]
    assert (frame[frame["kind"] == "experiment"]["parent"] == baseline["id"]).all()
    assert baseline["name"] == "main"
    assert isinstance(by_name.loc["rank-8", "created"], pd.Timestamp)


def test_a_task_listed_as_running_and_finished_is_one_finished_row():
    """For a moment after a queue task ends, `dvc exp show` lists it twice: running (the queue
    entry, with the executor's work in progress as a second revision) and finished (its ref)."""
    data = load("exp_show.json")
    experiments = data[1]["experiments"]
    finished = next(e for e in experiments if e["name"] == "rank-8")
    running = {
        "name": "rank-8",
        "executor": {"state": "running", "name": "dvc-task", "local": {"pid": 1}},
        "revs": [
            {**finished["revs"][0], "rev": "a" * 40, "name": "rank-8"},
            {**finished["revs"][0], "rev": "b" * 40, "name": None},
        ],
    }
    for order in ([running, *experiments], [*experiments, running]):
        data[1]["experiments"] = order
        frame = experiments_frame(data)
        rows = frame[frame["name"] == "rank-8"]
        assert len(rows) == 1 and len(frame) == 5
        assert rows.iloc[0]["state"] == "success"
        assert rows.iloc[0]["id"] == finished["revs"][0]["rev"]


def test_columns_for_every_param_metric_and_dep():
    frame = experiments_frame(load("exp_show.json"))
    assert {"train_lora.rank", "generate.seeds", "model.tiny.unet_steps"} <= set(
        frame.attrs["params"]
    )
    metrics = set(frame.attrs["metrics"])
    assert {"lift", "type_fidelity_lora", "f1", "final_loss"} <= metrics
    assert {"train_lora/step", "train_classifier/step"} <= metrics  # a shared name, told apart
    assert "dep:stages/train_lora.py" in frame.attrs["deps"]
    finished = frame[frame["state"] == "success"]
    assert finished["lift"].notna().all()
    assert pd.isna(frame.set_index("name").loc["queued-16", "lift"])  # queued: no metrics yet


def test_curve_points_are_numbers_per_revision():
    points = curve_points(load("plots_diff.json"), "outputs/train_lora/plots/metrics/loss.tsv")
    assert set(points["rev"]) == {"rank-8", "lr-high"}
    assert points["step"].dtype.kind in "if" and points["value"].dtype.kind == "f"
    steps = points[points["rev"] == "rank-8"]["step"].tolist()
    assert steps == sorted(steps) and steps[0] == 0
    assert curve_points(load("plots_diff.json"), "no/such.tsv").empty


def test_image_files_per_revision_and_path():
    files = image_files(load("plots_diff.json"), prefix="outputs/generated/lora/")
    key = ("rank-8", "outputs/generated/lora/a-pkmnlora-pokemon/seed-0.png")
    assert files[key].startswith("PLOTS/")
    assert {rev for rev, _ in files} == {"rank-8", "lr-high"}
    assert not any("base" in path for _, path in files)


def test_filter_by_param_and_metric_expressions():
    # `dvc exp run -S` leaves its values in the workspace: lr-high ran after rank-8 and
    # kept rank 8; the workspace holds both changes
    frame = experiments_frame(load("exp_show.json"))
    ranked = filter_experiments(frame, "train_lora.rank >= 8")
    assert ranked["name"].tolist() == ["workspace", "lr-high", "rank-8", "queued-16"]
    fast = filter_experiments(frame, "train_lora.learning_rate > 0.001")
    assert fast["name"].tolist() == ["workspace", "lr-high", "queued-16"]
    both = filter_experiments(frame, 'state == "success" and train_lora.rank == 4')
    assert both["name"].tolist() == ["main"]
    assert len(filter_experiments(frame, "   ")) == len(frame)
    assert len(filter_experiments(frame, "train_classifier/step > 0")) == 4  # not the queued


@pytest.mark.parametrize(
    "expression",
    [
        "rank >>= 3",
        "no_such_column > 1",
        "train_lora.rank",
        "train_lora.rank >=",
        "`nope` > 1",
        "9 ** 9 ** 9 ** 9 > 1",
        "name * 100000000 == 'x'",
        "lift is None",
        "name.str.lower() == 'x'",
        "name.str.contains(name)",
        "train_lora.rank in lift",
        "b'x' == name",
        "{'a': 1}",
        "not " * 2000 + "lift > 0",
    ],
)
def test_bad_filters_say_why(expression):
    frame = experiments_frame(load("exp_show.json"))
    with pytest.raises(FilterError, match="cannot filter by"):
        filter_experiments(frame, expression)


def test_an_unknown_column_is_named_with_the_close_ones():
    frame = experiments_frame(load("exp_show.json"))
    with pytest.raises(
        FilterError, match=r"no column 'train_lora\.rnk' \(did you mean train_lora\.rank"
    ):
        filter_experiments(frame, "train_lora.rnk > 1")


def pandas_query_filter(frame: pd.DataFrame, expression: str) -> pd.DataFrame:
    """The filter as it was: `DataFrame.query(engine="python")` over backquoted names. Kept as
    the reference for the filters that worked with it (it runs code: trusted text only)."""
    names = sorted((c for c in frame.columns if isinstance(c, str)), key=len, reverse=True)
    pattern = "|".join(re.escape(name) for name in names)
    quoted = re.sub(rf"(?<![\w.`/:])({pattern})(?![\w.`/])", r"`\1`", expression.strip())
    return frame.query(quoted, engine="python")


# Every filter of the tests, the README, the filter box's placeholder and help and the benchmark,
# and the pandas forms people write.
WORKING_FILTERS = [
    "train_lora.rank >= 8",
    "train_lora.learning_rate > 0.001",
    'state == "success" and train_lora.rank == 4',
    "train_classifier/step > 0",
    "train_lora.rank >= 8 and type_fidelity_lora > 0.5",
    "train_lora.rank >= 8 and type_fidelity_lora > 0.95",
    'state == "failed"',
    'state == "success"',
    "train_lora.rank >= 16",
    'name in ["rank-8", "rank-16"]',
    'name not in ("main", "workspace")',
    'name == ["main", "rank-8"]',
    'name != ["main", "rank-8"]',
    "train_lora.rank in [8, 16]",
    "0 < train_lora.rank < 10",
    "0.001 <= train_lora.learning_rate <= 0.001",
    "train_lora.rank > 1 & lift >= 0",
    "train_lora.rank > 4 | state == 'queued'",
    "(train_lora.rank > 4) & (state != 'queued')",
    "~(train_lora.rank > 4)",
    "not train_lora.rank > 4",
    "train_lora.rank > 4 and not state == 'queued'",
    "(lift >= 0) and (f1 > 0 or state == 'queued')",
    "`train_lora.rank` > 4",
    'created > "2026-11-23 03:44"',
    "lift != lift",
    "train_lora.rank % 8 == 0",
    "train_lora.rank ** 2 > 20",
    "-train_lora.rank < -4",
    "train_lora.learning_rate * 1000 >= 2",
    "train_lora.rank / 2 + 1 == 5",
    "train_lora.rank - train_lora.alpha > 0",
    "dep:stages/train_lora.py == dep:stages/train_lora.py",
    'dep:stages/train_lora.py != "x"',
    "test.accuracy >= 0 and train.loss >= 0",
    "classifier.augment",
    "train_lora.train_text_encoder == False",
    "pid > 3",
    'name.str.contains("rank")',
    "name.str.startswith('r')",
    'name.str.endswith("16")',
    'state == "success" and name.str.contains("-")',
    'name == "lift"',  # a column's name inside a string is text
    "train_lora.rank>=8",
    "  train_lora.rank >= 8  ",
]


@pytest.mark.parametrize("expression", WORKING_FILTERS)
def test_every_filter_that_worked_with_pandas_query_gives_the_same_rows(expression):
    frame = experiments_frame(load("exp_show.json"))
    expected = pandas_query_filter(frame, expression)
    assert filter_experiments(frame, expression)["id"].tolist() == expected["id"].tolist()


def canary_payloads(canary: Path) -> dict[str, str]:
    """Filters that try to create `canary`; the first ones did, through DataFrame.query."""
    touch, path = repr(f"touch {canary}"), repr(str(canary))
    chain = "name.__class__.__init__.__globals__['sys'].modules"
    return {
        "dunder attributes": f"{chain}['os'].system({touch})",
        "a builtin through subscripts": f"{chain}['builtins'].open({path}, 'w')",
        "exec through subscripts": f"{chain}['builtins'].exec('open(' + {path!r} + ', \"w\")')",
        "the str accessor's dunders": (
            f"name.str.__class__.__init__.__globals__['sys'].modules['os'].system({touch})"
        ),
        "an allowed method, a call as its text": (
            f"name.str.contains(__import__('os').system({touch}))"
        ),
        "a backquoted column's dunders": (
            f"`name`.__class__.__init__.__globals__['sys'].modules['os'].system({touch})"
        ),
        "an attribute": "name.__class__ == name",
        "a lambda as a value": "(lambda: 0) == name",
        "import": f"__import__('os').system({touch}) == 0",
        "a call": f"open({path}, 'w').close() == 1",
        "globals": f"globals()['__builtins__'].open({path}, 'w')",
        "a lambda": f"(lambda: __import__('os').system({touch}))() == 0",
        "a comprehension": f"[__import__('os').system({touch}) for _ in [1]] == [0]",
        "a generator": f"any(__import__('os').system({touch}) for _ in [1])",
        "walrus": f"(x := __import__('os').system({touch})) == 0",
        "an f-string": f"f\"{{__import__('os').system({touch})}}\" == name",
        "an f-string of a column": "f'{name.__class__}' == name",
        "a subscript of a column": f"name[0] == {path}",
        "in a list": f"name in [__import__('os').system({touch})]",
        "arithmetic": f"lift + __import__('os').system({touch}) > 0",
    }


@pytest.mark.parametrize("payload", list(canary_payloads(Path("CANARY"))))
def test_a_filter_that_tries_to_run_code_runs_nothing(payload: str, tmp_path: Path):
    canary = tmp_path / "CANARY"
    frame = experiments_frame(load("exp_show.json"))
    with pytest.raises(FilterError, match=r"cannot filter by .*are not allowed in a filter; "):
        filter_experiments(frame, canary_payloads(canary)[payload])
    assert not canary.exists()


def test_only_columns_that_differ():
    frame = experiments_frame(load("exp_show.json"))
    differing = differing_columns(frame, frame.attrs["params"])
    assert set(differing) == {"train_lora.rank", "train_lora.learning_rate"}
    # a queued or failed experiment has no metrics: an empty cell is not a difference
    assert frame["lift"].isna().any() and differing_columns(frame, ["lift", "f1"]) == []
    partial = pd.DataFrame(
        {"same": [1.0, None, 1.0], "text": ["a", None, "a"], "other": ["a", None, "b"]}
    )
    assert differing_columns(partial, ["same", "text", "other"]) == ["other"]


def test_a_running_task_is_lost_only_when_its_process_ended_without_an_exit_status():
    frame = pd.DataFrame(
        {
            "id": ["working", "collecting", "lost", "queued"],
            "state": ["running", "running", "running", "queued"],
            "pid": [11, 12, 13, None],
            "error": [None] * 4,
        }
    )
    marked = mark_lost(frame, alive=lambda pid: pid == 11, exited=lambda rev: rev == "collecting")
    assert marked["state"].tolist() == ["running", "running", "lost", "queued"]
    assert "process 13 is gone" in marked.set_index("id").loc["lost", "error"]


def test_a_failed_queue_task_shows_its_params_not_its_baselines_metrics():
    """DVC lists a failed queue task with the files of the commit it was queued from: its params
    are its own, the metrics are its baseline's."""
    data = load("exp_show.json")
    rank8 = next(e for e in data[1]["experiments"] if e["name"] == "rank-8")
    rank8["executor"] = {"state": "failed", "name": None, "local": None}
    rank8["revs"][0]["error"] = {"type": "", "msg": "Experiment run failed"}
    row = experiments_frame(data).set_index("name").loc["rank-8"]
    assert row["state"] == "failed" and row["error"] == "Experiment run failed"
    assert row["train_lora.rank"] == 8
    assert pd.isna(row["type_fidelity_lora"]) and pd.isna(row["lift"])


def test_picks_follow_a_queue_task_whose_id_changes_when_it_ends():
    def frame(rows):
        return pd.DataFrame(rows, columns=["id", "name", "kind", "parent"])

    old = frame(
        [
            ("workspace", "workspace", "workspace", None),
            ("b1", "main", "baseline", None),
            ("stash-a", "a", "experiment", "b1"),
            ("stash-b", "b", "experiment", "b1"),
        ]
    )
    new = frame(
        [
            ("workspace", "workspace", "workspace", None),
            ("b1", "main", "baseline", None),
            ("exp-a", "a", "experiment", "b1"),
            ("stash-b", "b", "experiment", "b1"),
        ]
    )
    assert carry_picks(old, new, ["stash-a", "b1", "stash-b"]) == ["exp-a", "b1", "stash-b"]
    gone = frame([("workspace", "workspace", "workspace", None), ("b1", "main", "baseline", None)])
    assert carry_picks(old, gone, ["stash-a", "workspace"]) == ["workspace"]


def test_a_curve_being_written_is_read_up_to_its_last_whole_line(tmp_path: Path):
    file = tmp_path / "loss.tsv"
    file.write_text("step\tloss\n0\t0.9\n1\t0.7\n2\t0.")  # the run is writing line 2
    points = live_curve(file, "abc")
    assert points["step"].tolist() == [0, 1] and points["value"].tolist() == [0.9, 0.7]
    file.write_text("step\tloss\n0\t0.9\n1\t")
    assert live_curve(file, "abc")["value"].tolist() == [0.9]
    file.write_text("")  # emptied for a rewrite
    assert live_curve(file, "abc").empty
    assert live_curve(tmp_path / "gone.tsv", "abc").empty
    other = tmp_path / "lr.csv"
    other.write_text("timestamp,step,learning_rate\n5,0,0.001\n")
    assert live_curve(other, "abc")[["step", "value"]].values.tolist() == [[0, 0.001]]


def test_check_params_deps_are_not_columns():
    data = load("exp_show.json")
    for commit in data:
        deps = commit["data"].setdefault("deps", {})
        deps["params.yaml"] = {"hash": "1" * 32}  # differs in every experiment
        deps["outputs/params_checked.txt"] = {"hash": "2" * 32}
    frame = experiments_frame(data)
    assert "dep:stages/train_lora.py" in frame.attrs["deps"]
    assert not {"dep:params.yaml", "dep:outputs/params_checked.txt"} & set(frame.columns)
