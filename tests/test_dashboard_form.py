"""The launch form, built from the stages' own params models: every param shown with its type,
range and value, grids expanded, bad values rejected next to their field, and values that look
like shell reaching DVC as literal strings."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from bench.harness.project import REPO, default_params
from dashboard.actions import Launch, check_name, expand_grid, set_args, yaml_value
from dashboard.data import flatten
from dashboard.form import LaunchForm, field_specs, parse_values


@pytest.fixture
def form(tmp_path: Path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    sent = {"queue": [], "run": []}
    form = LaunchForm(tmp_path, on_queue=sent["queue"].append, on_run=sent["run"].append)
    form.sent = sent
    return form


def error(form: LaunchForm, name: str) -> str:
    return html.unescape(form.messages[name].value)


def test_every_param_of_params_yaml_has_a_field():
    names = {spec.name for spec in field_specs()}
    assert names == set(flatten(default_params()))
    by_name = {spec.name: spec for spec in field_specs()}
    rank = by_name["train_lora.rank"]
    assert (rank.kind, rank.bounds) == ("int", "≥ 1, ≤ 512")
    assert "LoRA rank" in rank.description
    assert by_name["train_lora.learning_rate"].kind == "float"
    assert by_name["train_lora.mixed_precision"].choices == ["no", "fp16", "bf16"]
    assert by_name["generate.prompts"].kind == "list"
    assert by_name["model.tiny.unet_steps"].section == "model"
    assert by_name["model.revision"].optional


def test_fields_show_the_workspace_values(form: LaunchForm):
    assert form.inputs["train_lora.rank"].value == "4"
    assert form.inputs["train_lora.learning_rate"].value == "0.001"
    assert form.inputs["generate.prompts"].value == '["a pkmnlora pokemon", "a pokemon"]'
    assert form.inputs["model.revision"].value == "null"
    assert "Change a value" in form.summary.value


def test_a_grid_of_two_params_queues_four_named_experiments(form: LaunchForm):
    form.inputs["train_lora.rank"].value = "4, 8"  # 4 is the current value: still in the grid
    form.inputs["train_lora.learning_rate"].value = "1e-4, 5e-4"
    assert "data-count='4'" in form.summary.value
    form.name.value = "grid"
    form.queue_button.click()
    (launches,) = form.sent["queue"]
    assert [launch.name for launch in launches] == ["grid-1", "grid-2", "grid-3", "grid-4"]
    assert [launch.assignments for launch in launches] == [
        {"train_lora.rank": r, "train_lora.learning_rate": lr}
        for r in (4, 8)
        for lr in (1e-4, 5e-4)
    ]
    assert form.inputs["train_lora.rank"].value == "4"  # the form resets after queueing


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("train_lora.rank", "1; rm -rf ~", "valid integer"),
        ("train_lora.rank", "0", "greater than or equal to 1"),
        ("train_lora.rank", "8, 600", "less than or equal to 512"),
        ("train_lora.learning_rate", "fast", "valid number"),
        ("train_lora.mixed_precision", "fp8", "'no', 'fp16' or 'bf16'"),
        ("train_lora.random_flip", "maybe", "valid boolean"),
        ("generate.seeds", "[1, 1]", "distinct"),
        ("generate.prompts", "[a, ", "is not a value"),
        ("resize.background", "not-a-colour", "colour"),
        ("train_lora.rank", "4,,8", "empty value"),
    ],
)
def test_bad_values_are_rejected_next_to_their_field(form, name, value, message):
    form.inputs[name].value = value
    assert message in error(form, name), error(form, name)
    assert "to fix" in form.summary.value
    form.queue_button.click()
    assert form.sent["queue"] == []
    assert "to fix" in form.message.value


def test_shell_looking_text_is_a_literal_string(form: LaunchForm):
    form.inputs["train_lora.validation_prompt"].value = "$(id); rm -rf ~"
    form.run_button.click()
    (launch,) = form.sent["run"]
    assert launch.assignments == {"train_lora.validation_prompt": "$(id); rm -rf ~"}
    assert launch.args() == ["-S", 'train_lora.validation_prompt="$(id); rm -rf ~"']


def test_run_now_takes_one_experiment_not_a_grid(form: LaunchForm):
    form.inputs["train_lora.rank"].value = "8, 16"
    form.run_button.click()
    assert form.sent["run"] == [] and "queue it instead" in form.message.value


def test_nothing_changed_and_bad_names(form: LaunchForm):
    form.queue_button.click()
    assert "nothing changed" in form.message.value
    form.inputs["train_lora.rank"].value = "8"
    form.name.value = "bad name; rm"
    form.queue_button.click()
    assert "is not allowed" in form.message.value and form.sent["queue"] == []


def test_values_are_read_as_dvc_reads_them():
    specs = {spec.name: spec for spec in field_specs()}
    assert parse_values(specs["train_lora.rank"], "4, 8") == [4, 8]
    assert parse_values(specs["train_lora.learning_rate"], "1e-4") == [0.0001]
    assert parse_values(specs["train_lora.mixed_precision"], "no") == ["no"]  # not False
    assert parse_values(specs["model.revision"], "null") == [None]
    assert parse_values(specs["resize.caption_template"], "a {name}, b") == ["a {name}, b"]
    assert yaml_value("no") == '"no"' and yaml_value(1e-4) == "0.0001"
    assert set_args({"a.b": [1, 2]}) == ["-S", "a.b=[1, 2]"]


def test_grid_names_and_checks():
    launches = expand_grid({"x.a": [1, 2], "x.b": [3]}, "g")
    assert [(launch.name, launch.assignments) for launch in launches] == [
        ("g-1", {"x.a": 1, "x.b": 3}),
        ("g-2", {"x.a": 2, "x.b": 3}),
    ]
    assert expand_grid({"x.a": [1]}, "one")[0].name == "one"
    assert Launch({"x.a": 1}).args() == ["-S", "x.a=1"]
    with pytest.raises(ValueError, match="not allowed"):
        check_name("-rf")
