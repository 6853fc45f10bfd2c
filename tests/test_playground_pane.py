"""The prompt playground's view models and commands (dashboard.playground.views, .commands) on
the recorded `dvc exp show --json`: which columns a draw has in each mode, how the pane shows
images as they arrive, and what "Keep as experiment" queues. The worker itself is tested in
tests/test_playground_worker.py and the whole pane in the browser (test_dashboard_browser.py)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dashboard.actions import Launch, set_args
from dashboard.playground import views
from dashboard.playground.commands import Playground
from dashboard.playground.protocol import BaseColumn, BlendColumn, LoraColumn
from dashboard.state import DashboardState, PlaygroundState
from tests.test_dashboard_views import frame_of, ids, state_of


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def picked_state(*names: str) -> DashboardState:
    state = state_of()
    by_name = ids(state.frame)
    state.picked = [by_name[name] for name in names]
    return state


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0-3", (0, 1, 2, 3)), ("0, 5, 9", (0, 5, 9)), ("2-3, 10, 3", (2, 3, 10)), ("7", (7,))],
)
def test_seeds_are_a_list_or_a_range(text, seeds):
    assert views.parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "at least one"),
        ("a, b", "'a' is not a seed"),
        ("5-2", "backwards"),
        ("-1", "not a seed"),
        ("0-100", "at most 64"),
    ],
)
def test_bad_seeds_say_what_is_allowed(text, says):
    with pytest.raises(ValueError, match=says):
        views.parse_seeds(text)


def test_a_count_of_seeds_is_a_range_from_zero():
    assert views.seed_text(4) == "0-3"
    assert views.parse_seeds(views.seed_text(1)) == (0,)


def test_side_by_side_draws_the_base_and_each_picked_lora_at_the_scale():
    state = picked_state("main", "rank-8", "queued-16")
    form = PlaygroundState(scale=0.75)
    columns = views.draw_columns(form, state)
    by_name = ids(state.frame)
    assert columns.columns == (
        BaseColumn("base"),
        LoraColumn("main", by_name["main"], 0.75),
        LoraColumn("rank-8", by_name["rank-8"], 0.75),
    )
    assert columns.labels == ["base", "main", "rank-8"]
    # each LoRA column is labelled with what its experiment changed
    assert columns.details[1] == "baseline params"
    assert columns.details[2] == "rank=8"
    # the queued experiment has no LoRA yet, and the pane says so
    assert columns.notes == ["queued-16 is queued: it has no LoRA to draw with yet"]


def test_a_strip_draws_the_first_picked_lora_at_each_scale():
    state = picked_state("rank-8", "lr-high")
    form = PlaygroundState(mode="strip", strip="0, 0.5, 1, 1.5")
    columns = views.draw_columns(form, state)
    rev = ids(state.frame)["rank-8"]
    assert [c.scale for c in columns.columns[1:]] == [0, 0.5, 1, 1.5]
    assert {c.rev for c in columns.columns[1:]} == {rev}
    assert columns.labels[1:] == ["rank-8 ×0", "rank-8 ×0.5", "rank-8 ×1", "rank-8 ×1.5"]
    assert "lr-high" in columns.notes[0]


def test_a_blend_mixes_the_first_two_picked_loras_with_their_weights():
    state = picked_state("rank-8", "lr-high")
    form = PlaygroundState(mode="blend", weights="0.7, 0.3")
    columns = views.draw_columns(form, state)
    blend = columns.columns[1]
    assert isinstance(blend, BlendColumn)
    assert [(p.label, p.weight) for p in blend.parts] == [("rank-8", 0.7), ("lr-high", 0.3)]
    assert columns.labels[1] == "0.7 rank-8 + 0.3 lr-high"
    assert columns.labels[2:] == ["rank-8", "lr-high"]  # each alone beside it


@pytest.mark.parametrize(
    ("mode", "picks", "fields", "says"),
    [
        ("blend", ["rank-8"], {}, "two picked experiments"),
        ("blend", ["rank-8", "lr-high"], {"weights": "1"}, "type two"),
        ("strip", [], {}, "one picked experiment"),
        ("strip", ["rank-8"], {"strip": "0, x"}, "'x' is not a number"),
    ],
)
def test_a_mode_that_cannot_draw_says_why(mode, picks, fields, says):
    with pytest.raises(ValueError, match=says):
        views.draw_columns(PlaygroundState(mode=mode, **fields), picked_state(*picks))


def test_the_request_is_checked_as_params_yaml_is():
    state = picked_state("rank-8")
    form = PlaygroundState(num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        views.draw_request(form, views.draw_columns(form, state))
    form = PlaygroundState(prompt="  ")
    with pytest.raises(ValueError, match="prompt"):
        views.draw_request(form, views.draw_columns(form, state))
    form = PlaygroundState(prompt=" a pokemon ", seeds="1, 2")
    request = views.draw_request(form, views.draw_columns(form, state))
    assert (request.prompt, request.seeds) == ("a pokemon", (1, 2))


def test_the_fields_start_from_the_workspace_generate_params():
    frame = frame_of()
    workspace = frame[frame["id"] == "workspace"].iloc[0].to_dict()
    form = PlaygroundState()
    views.defaults_from_row(form, workspace)
    assert form.num_inference_steps == workspace["generate.num_inference_steps"]
    assert form.guidance_scale == workspace["generate.guidance_scale"]
    assert form.scheduler == workspace["generate.scheduler"]
    assert form.defaults_from == "workspace"


def drawn_form(images=None, errors=None, outcome=None) -> PlaygroundState:
    state = picked_state("main", "rank-8")
    form = PlaygroundState(seeds="0-1")
    columns = views.draw_columns(form, state)
    form.request = views.draw_request(form, columns)
    form.column_labels, form.column_details = columns.labels, columns.details
    form.column_colors = columns.colors
    form.images, form.errors, form.outcome = images or {}, errors or {}, outcome
    return form


def test_the_gallery_fills_in_as_images_arrive():
    red = png("red")
    form = drawn_form(images={(0, 0): red}, errors={2: "rank-8: no LoRA file"})
    model = views.gallery(form)
    assert [c["label"] for c in model["columns"]] == ["base", "main", "rank-8"]
    assert [r["label"] for r in model["rows"]] == ["seed 0", "seed 1"]
    first, second = model["rows"]
    assert base64.b64decode(first["cells"][0]["src"].split(",", 1)[1]) == red
    assert first["cells"][1] == {"missing": "drawing…", "text": "drawing…"}
    assert first["cells"][2] == {"missing": "rank-8: no LoRA file", "text": "failed"}
    assert [cell.get("text") for cell in second["cells"]] == ["drawing…", "drawing…", "failed"]
    assert model["images"] == {"play:0:0": red}  # what a click enlarges
    assert "1 of 6 images" in views.progress_html(form)
    assert "rank-8: rank-8: no LoRA file" in views.progress_html(form)  # not only in a tooltip


def test_the_progress_says_how_a_draw_ended():
    form = drawn_form(images={(i, s): b"" for i in range(3) for s in (0, 1)}, outcome="finished")
    form.seconds = 2.5
    assert "6 images in 2.5 s" in views.progress_html(form)
    form = drawn_form(outcome="cancelled")
    form.outcome_text = "cancelled"
    assert "0 of 6 images · cancelled" in views.progress_html(form)
    assert views.gallery(form)["rows"][0]["cells"][0]["text"] == "cancelled"


def test_the_pane_says_what_the_worker_runs_on():
    form = PlaygroundState(worker={"base": "tiny <x> model", "device": "cpu", "dtype": "float32"})
    text = views.worker_html(form)
    assert "tiny &lt;x&gt; model" in text and "cpu" in text and "float32" in text
    form.worker_error = "cannot load the base model"
    assert "cannot load the base model" in views.worker_html(form)


def test_keep_queues_the_picked_experiment_with_the_playground_generate_params():
    state = picked_state("rank-8", "lr-high")
    form = PlaygroundState(
        prompt="a pkmnlora pokemon with a flame tail",
        negative_prompt="blurry",
        seeds="0-3",
        num_inference_steps=20,
        guidance_scale=6.0,
        scheduler="euler",
        scale=1.25,
    )
    plan = views.keep_plan(form, state)
    # the workspace has rank 8 and lr 0.002 (lr-high's params): rank-8 differs in lr only,
    # which it keeps from its baseline
    frame = state.frame
    baseline_lr = frame.loc[frame["name"] == "main", "train_lora.learning_rate"].item()
    assert baseline_lr != 0.002
    assert plan.assignments == {
        "train_lora.learning_rate": baseline_lr,
        "generate.prompts": ["a pkmnlora pokemon with a flame tail"],
        "generate.seeds": [0, 1, 2, 3],
        "generate.num_inference_steps": 20,
        "generate.guidance_scale": 6.0,
        "generate.scheduler": "euler",
        "generate.lora_scale": 1.25,
    }
    assert plan.based_on == "rank-8"
    assert any("negative prompt" in note for note in plan.notes)
    assert any("lr-high" in note for note in plan.notes)
    # what dvc is given: every value as YAML, the prompt quoted
    args = set_args(Launch(plan.assignments).assignments)
    assert 'generate.prompts=["a pkmnlora pokemon with a flame tail"]' in args


@pytest.mark.parametrize(
    ("mode", "says"), [("blend", "no param"), ("strip", "one generate.lora_scale")]
)
def test_keep_says_plainly_what_params_cannot_hold(mode, says):
    with pytest.raises(ValueError, match=says):
        views.keep_plan(PlaygroundState(mode=mode), picked_state("rank-8", "lr-high"))


class FakeClient:
    """The worker's client as the commands see it: draws recorded, events sent by the test."""

    def __init__(self):
        self.ready = {"base": "tiny", "device": "cpu", "dtype": "float32"}
        self.draws, self.cancelled = [], 0

    def connect_in_background(self, done):
        done(self.ready)

    def draw(self, request, on_event=None):
        self.draws.append((request, on_event))

    def cancel(self):
        self.cancelled += 1

    def close(self):
        pass


class FakeController:
    def __init__(self, state, repo: Path):
        self.state, self.repo, self.renders = state, repo, 0

    def perform(self, action, name=None, banner=False):
        action()
        return True

    def say(self, message, error=False):
        self.message = message

    def render_playground(self):
        self.renders += 1


def with_base_model(repo: Path) -> Path:
    record = repo / "outputs" / "base_model" / "model.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"kind": "tiny", "path": "outputs/base_model/pipeline"}')
    return repo


def test_no_worker_starts_before_the_pipeline_has_a_base_model(tmp_path: Path):
    controller = FakeController(picked_state("rank-8"), tmp_path)
    client = FakeClient()
    Playground(controller, client).start()
    form = controller.state.playground
    assert form.worker is None and "run the pipeline" in form.worker_error
    assert "outputs/base_model/model.json" in form.worker_error


def test_a_new_draw_drops_the_events_of_the_one_it_replaced(tmp_path: Path):
    controller = FakeController(picked_state("rank-8"), with_base_model(tmp_path))
    client = FakeClient()
    playground = Playground(controller, client)
    playground.start()
    assert controller.state.playground.worker["device"] == "cpu"
    playground.set_fields(seeds="0")
    playground.draw()
    playground.set_fields(prompt="a pokemon")
    playground.draw()
    (_, old), (request, new) = client.draws
    old({"type": "image", "column": 0, "seed": 0, "png": base64.b64encode(png("red")).decode()})
    assert controller.state.playground.images == {}
    new({"type": "image", "column": 1, "seed": 0, "png": png("blue")})
    new({"type": "column_failed", "column": 0, "message": "boom"})
    new({"type": "finished", "seconds": 1.0})
    form = controller.state.playground
    assert form.images == {(1, 0): png("blue")} and form.errors == {0: "boom"}
    assert form.outcome == "finished" and form.request is request
    with pytest.raises(TypeError, match="not a playground field"):
        playground.set_fields(prompts="x")


def test_a_gone_worker_is_said_in_the_pane(tmp_path: Path):
    controller = FakeController(picked_state("rank-8"), tmp_path)
    client = FakeClient()
    playground = Playground(controller, client)
    playground.draw()
    _, events = client.draws[0]
    events({"type": "worker_gone", "message": "killed by signal 9"})
    form = controller.state.playground
    assert form.outcome == "worker_gone"
    assert (
        "killed by signal 9" in form.worker_error and "Draw starts it again" in form.worker_error
    )


def test_the_pane_modules_import_no_torch():
    code = (
        "import sys, dashboard.playground.views, dashboard.playground.commands, "
        "dashboard.panels.playground; "
        "print(json.dumps(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft', 'dvc') "
        "if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []
