"""The launch form: every param of params.yaml, built from the same pydantic models that the
stages validate with (stages/params.py), with its type, range, description and current value;
validated in the page before anything is queued, each message next to its field.

A field may hold several values separated by commas (`4, 8`) to make a grid: rank 4, 8 and
learning rate 1e-4, 5e-4 queue four experiments. Lists (prompts, seeds) take one YAML list."""

from __future__ import annotations

import html
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ipywidgets as w
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML, YAMLError

from dashboard.actions import Launch, check_new_name, expand_grid
from dashboard.dvc_cli import error_text
from stages.common.params import SECTIONS, read_params_file

MAX_GRID = 64


@dataclass
class FieldSpec:
    """One param: `section`, `key` inside it (dotted when nested: tiny.unet_steps)."""

    section: str
    key: str
    annotation: Any
    default: Any
    description: str
    bounds: str

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def kind(self) -> str:
        """list, bool, int, float, choice, text."""
        args = [a for a in typing.get_args(self.annotation) if a is not type(None)]
        base = self.annotation
        if typing.get_origin(base) in (types.UnionType, typing.Union) and args:
            base = args[0]
        if typing.get_origin(base) is list:
            return "list"
        if typing.get_origin(base) is Literal:
            return "choice"
        return {bool: "bool", int: "int", float: "float"}.get(base, "text")

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.annotation)

    @property
    def choices(self) -> list[Any]:
        base = self.annotation
        for arg in (base, *typing.get_args(base)):
            if typing.get_origin(arg) is Literal:
                return list(typing.get_args(arg))
        return []


def _bounds(info) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for item in info.metadata:
        for attribute, sign in signs.items():
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(
                    f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}"
                )
    return ", ".join(parts)


def field_specs() -> list[FieldSpec]:
    """Every param of every section, nested sections (model.tiny) flattened."""
    specs = []

    def walk(section: str, model: type[BaseModel], prefix: str = "") -> None:
        for key, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(section, annotation, f"{prefix}{key}.")
                continue
            specs.append(
                FieldSpec(
                    section,
                    prefix + key,
                    annotation,
                    info.default,
                    info.description or "",
                    _bounds(info),
                )
            )

    for section, model in SECTIONS.items():
        walk(section, model)
    return specs


def show_value(value: Any) -> str:
    """A value as the form shows it: YAML flow style (null, true, [a, b]), strings bare."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_quoted(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def _quoted(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return show_value(value)


def _yaml(text: str) -> Any:
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ValueError(f"{text!r} is not a value: {str(error).splitlines()[0]}") from None


def parse_values(spec: FieldSpec, text: str) -> list[Any]:
    """The values typed in a field: several for a grid (`4, 8`), one for text and lists.
    Strings are taken as typed, never evaluated; numbers, booleans and lists are read as YAML
    1.2, as DVC reads `-S` values."""
    text = text.strip()
    if spec.optional and text in ("", "null", "~"):
        return [None]
    if spec.kind == "text":
        return [text]
    if spec.kind == "list":
        value = _yaml(text)
        return [value]
    parts = [part.strip() for part in text.split(",")]
    if any(part == "" for part in parts):
        raise ValueError(f"{text!r}: an empty value between commas")
    values = [_yaml(part) if spec.kind != "choice" else part for part in parts]
    return list(dict.fromkeys(values))


def nested_set(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *folders, last = dotted.split(".")
    for folder in folders:
        mapping = mapping.setdefault(folder, {})
    mapping[last] = value


def nested_get(mapping: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return default
        mapping = mapping[part]
    return mapping


def section_errors(section: str, content: dict[str, Any]) -> dict[str, str]:
    """{key: message} of what the stages' own model says about this section's content."""
    try:
        SECTIONS[section].model_validate(content)
    except ValidationError as error:
        errors = {}
        for item in error.errors():
            key = ".".join(map(str, item["loc"]))
            errors[key] = item["msg"].removeprefix("Value error, ")
        return errors
    return {}


class LaunchForm:
    """The form's widgets and state over the repository at `repo`; `launches()` validates and
    returns the experiments to run, or raises ValueError (messages are next to the fields).

    Queue and Run now hand the launches to `on_queue` / `on_run` through `perform`, the page's
    one error path (ManagePanel._do: it shows any error and logs it, and returns whether the
    action succeeded); alone, the form shows errors itself."""

    def __init__(
        self,
        repo: Path,
        on_queue: Callable[[list[Launch]], None],
        on_run: Callable[[Launch], None],
        perform: Callable[[Callable[[], None]], bool] | None = None,
    ):
        self.repo = Path(repo)
        self.perform = perform or self._perform
        self.specs = field_specs()
        self.current: dict[str, Any] = {}
        self.inputs: dict[str, w.Text] = {}
        self.messages: dict[str, w.HTML] = {}
        self.edited: set[str] = set()
        self._loading = False
        sections = []
        for section in SECTIONS:
            rows = [self._row(spec) for spec in self.specs if spec.section == section]
            sections.append(w.VBox(rows))
        self.sections = w.Accordion(children=sections, selected_index=None)
        for index, section in enumerate(SECTIONS):
            self.sections.set_title(index, section)
        self.name = w.Text(
            placeholder="optional: name (grid: name-1, name-2, ...)",
            description="Name",
            layout=w.Layout(width="360px"),
        )
        self.summary = w.HTML()
        self.queue_button = w.Button(
            description="Queue",
            icon="plus",
            button_style="primary",
            tooltip="add the experiment(s) to the DVC queue",
        )
        self.run_button = w.Button(
            description="Run now", icon="play", tooltip="run one experiment in the workspace now"
        )
        self.reset_button = w.Button(
            description="Reset", icon="undo", tooltip="back to the workspace's params.yaml"
        )
        self.message = w.HTML()
        self.queue_button.on_click(lambda _: self._submit(on_queue))
        self.run_button.on_click(lambda _: self._submit(lambda ls: on_run(ls[0]), single=True))
        self.reset_button.on_click(lambda _: self.load(reset=True))
        buttons = w.HBox([self.name, self.queue_button, self.run_button, self.reset_button])
        self.widget = w.VBox([self.sections, self.summary, buttons, self.message])
        self.widget.add_class("launch-form")
        self.load()

    def _row(self, spec: FieldSpec) -> w.HBox:
        text = w.Text(continuous_update=False, layout=w.Layout(width="300px"))
        text.add_class("param-input")
        text.add_class(f"param-{spec.name.replace('.', '-')}")
        text.observe(lambda change, name=spec.name: self._changed(name), "value")
        self.inputs[spec.name] = text
        kind = (
            spec.kind if spec.kind != "choice" else "one of " + ", ".join(map(str, spec.choices))
        )
        hint = " · ".join(p for p in (kind, spec.bounds) if p)
        if spec.kind in ("int", "float", "choice", "bool"):
            hint += " · commas for a grid"
        label = w.HTML(
            f"<b title='{html.escape(spec.description, quote=True)}'>{html.escape(spec.key)}</b>",
            layout=w.Layout(width="210px"),
        )
        info = w.HTML(
            f"<span style='color:#57606a'>{html.escape(spec.description)}"
            f" <i>({html.escape(hint)})</i></span>"
        )
        message = w.HTML()
        message.add_class("param-error")
        self.messages[spec.name] = message
        return w.HBox(
            [label, text, w.VBox([info, message])], layout=w.Layout(align_items="flex-start")
        )

    def load(self, reset: bool = False) -> None:
        """Show the workspace's params.yaml (fields the person edited stay, unless `reset`)."""
        try:
            raw = read_params_file(self.repo / "params.yaml")
        except Exception as error:  # the form still shows the defaults
            raw = {}
            self.message.value = f"<span style='color:#cf222e'>{html.escape(str(error))}</span>"
        self.current = {}
        self._loading = True
        try:
            for spec in self.specs:
                value = nested_get(raw.get(spec.section) or {}, spec.key, spec.default)
                self.current[spec.name] = value
                if reset or spec.name not in self.edited:
                    self.inputs[spec.name].value = show_value(value)
            if reset:
                self.edited.clear()
                self.name.value = ""
        finally:
            self._loading = False
        self._validate()

    def _changed(self, name: str) -> None:
        if self._loading:
            return
        self.edited.add(name)
        self._validate()

    def choices(self) -> tuple[dict[str, list[Any]], dict[str, str]]:
        """{param: values} of the fields that differ from the workspace, and {param: message}
        of the fields that cannot be read."""
        choices, errors = {}, {}
        for spec in self.specs:
            try:
                values = parse_values(spec, self.inputs[spec.name].value)
            except ValueError as error:
                errors[spec.name] = str(error)
                continue
            if values != [self.current.get(spec.name)]:
                choices[spec.name] = values
        return choices, errors

    def _check(self, spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
        """The value as the stages will read it (pydantic's coercion), or the message of the
        stages' model about it; the section's other keys as they are."""
        content = self._section_content(spec.section, {spec.name: value})
        try:
            model = SECTIONS[spec.section].model_validate(content)
        except ValidationError:
            problem = section_errors(spec.section, content).get(spec.key)
            return value, (f"{show_value(value)}: {problem}" if problem else None)
        return nested_get(model.model_dump(), spec.key, value), None

    def _validate(self) -> tuple[dict[str, list[Any]], dict[str, str]]:
        """Check every value with the stages' models, each alone and then each combination;
        messages next to the fields and a summary. Returns the checked choices and errors."""
        choices, errors = self.choices()
        by_name = {spec.name: spec for spec in self.specs}
        checked: dict[str, list[Any]] = {}
        for name, values in choices.items():
            checked[name] = []
            for value in values:
                value, problem = self._check(by_name[name], value)
                if problem:
                    errors[name] = problem
                    break
                checked[name].append(value)
        size = 1
        for values in checked.values():
            size *= len(values)
        if not errors and size <= MAX_GRID:
            for launch in expand_grid(checked):  # combinations: checks across keys
                for section in {name.split(".", 1)[0] for name in launch.assignments}:
                    content = self._section_content(section, launch.assignments)
                    for key, problem in section_errors(section, content).items():
                        errors.setdefault(f"{section}.{key}", problem)
        for name, message in self.messages.items():
            text = errors.get(name, "")
            message.value = (
                f"<span class='param-error-text' style='color:#cf222e'>{html.escape(text)}</span>"
                if text
                else ""
            )
        if errors:
            self.summary.value = (
                f"<span style='color:#cf222e'>{len(errors)} field(s) to fix "
                "before launching</span>"
            )
        elif size > MAX_GRID:
            self.summary.value = (
                f"<span style='color:#cf222e'>a grid of {size} experiments: "
                f"at most {MAX_GRID} at once</span>"
            )
        elif not checked:
            self.summary.value = (
                "Change a value to launch an experiment (the fields show "
                "the workspace's params.yaml)."
            )
        else:
            changed = ", ".join(
                f"{k} = {' | '.join(map(show_value, v))}" for k, v in checked.items()
            )
            self.summary.value = (
                f"<span class='launch-summary' data-count='{size}'><b>{size} "
                f"experiment{'s' if size > 1 else ''}</b>: "
                f"{html.escape(changed)}</span>"
            )
        return checked, errors

    def _section_content(self, section: str, overrides: dict[str, Any]) -> dict[str, Any]:
        content: dict[str, Any] = {}
        for spec in self.specs:
            if spec.section == section:
                nested_set(content, spec.key, self.current.get(spec.name))
        for name, value in overrides.items():
            if name.split(".", 1)[0] == section:
                nested_set(content, name.split(".", 1)[1], value)
        return content

    def launches(self) -> list[Launch]:
        """The experiments the form describes, named; ValueError when something is wrong."""
        checked, errors = self._validate()
        if errors:
            raise ValueError(
                f"{len(errors)} field(s) to fix: "
                + "; ".join(f"{name}: {message}" for name, message in errors.items())
            )
        if not checked:
            raise ValueError("nothing changed: edit a value first")
        launches = expand_grid(checked, self.name.value.strip() or None)
        if len(launches) > MAX_GRID:
            raise ValueError(f"a grid of {len(launches)} experiments: at most {MAX_GRID}")
        for launch in launches:  # not '-x' (an option), nor a branch, tag or commit of git
            if launch.name:
                check_new_name(self.repo, launch.name)
        return launches

    def _submit(self, action: Callable[[list[Launch]], None], single: bool = False) -> None:
        try:  # what the form itself finds wrong is said next to it, before anything runs
            launches = self.launches()
            if single and len(launches) != 1:
                raise ValueError(
                    f"Run now runs one experiment; this is a grid of "
                    f"{len(launches)}: queue it instead"
                )
        except ValueError as error:
            self._say(str(error))
            return
        self.message.value = ""

        def launch() -> None:
            action(launches)

        launch.__name__ = "run now" if single else "queue"
        if self.perform(launch):  # failed: the fields stay as typed, to fix and try again
            self.load(reset=True)

    def _say(self, message: str) -> None:
        self.message.value = (
            f"<span class='launch-error' style='color:#cf222e'>{html.escape(message)}</span>"
        )

    def _perform(self, action: Callable[[], None]) -> bool:
        """The error path of a form used alone (no panel): say the error here, log it."""
        try:
            action()
        except Exception as error:
            logging.getLogger("dashboard").warning("launching failed", exc_info=error)
            self._say(error_text(error, "launching"))
            return False
        return True
