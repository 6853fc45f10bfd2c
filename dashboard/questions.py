"""The text of the dashboard's questions and answers about acting on experiments, as HTML: what
an Apply overwrites, what an Undo brings back, the params an Apply changes. Pure: the commands
(dashboard.commands) ask them, the actions panel draws them."""

from __future__ import annotations

import html

from dashboard import workspace

SHOWN_FILES = 30  # files named per group in a question; the rest are counted
LOG_LINES = 60


def tail(text: str, lines: int = LOG_LINES) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept)


def pre(text: str, css: str = "") -> str:
    style = "max-height:320px;overflow:auto;background:#f6f8fa;padding:8px;font-size:12px"
    return f"<pre class='{css}' style='{style}'>{html.escape(text)}</pre>"


def files_text(paths: list[str] | dict[str, str]) -> str:
    """Paths (with what changed, for outputs), escaped, the first SHOWN_FILES of them."""
    items = [f"{p} ({paths[p]})" if isinstance(paths, dict) else p for p in paths]
    more = f" and {len(items) - SHOWN_FILES} more" if len(items) > SHOWN_FILES else ""
    return html.escape(", ".join(items[:SHOWN_FILES]) + more)


def list_items(groups: list[tuple[str, str, list]], between: str) -> str:
    """`<li class=css>title<between>files</li>` for each (css, title, files) that has files."""
    return "".join(
        f"<li class='{css}'>{title}{between}{files_text(paths)}</li>"
        for css, title, paths in groups
        if paths
    )


def overwritten_html(what: workspace.Overwritten) -> str:
    """What an apply overwrites, grouped, for its question; and that Undo brings it back."""
    if not what:
        return (
            "<div class='apply-safe'>Nothing of yours is overwritten: no edited or untracked "
            "file of the experiment's, no changed output. <b>Undo</b> brings the workspace "
            "back as it is now.</div>"
        )
    groups = [
        ("apply-edited", "Edited files", what.edited),
        ("apply-untracked", "Untracked files that the experiment also has", what.untracked),
        ("apply-outputs", "Outputs changed since the last <code>dvc commit</code>", what.outputs),
    ]
    items = list_items(groups, ": ")
    return (
        "<div class='apply-warning' style='color:#9a6700'>⚠ This replaces your version of:"
        f"<ul class='apply-overwrites'>{items}</ul>It is kept first "
        f"(<code>{workspace.UNDO_REFS}</code>, <code>{workspace.UNDO_FILES}</code>): "
        "<b>Undo</b> brings it back, with the workspace as it is now.</div>"
    )


def undo_html(plan: workspace.UndoPlan) -> str:
    """What an Undo brings back, and what changed since the apply that it replaces."""
    kept = plan.entry.kept
    text = (
        f"Undo the Apply of <b>{html.escape(plan.entry.experiment)}</b>? The workspace comes "
        "back as it was before it: params.yaml, dvc.lock and the outputs"
    )
    groups = [
        ("undo-edited", "your edits of", kept.edited),
        ("undo-untracked", "your untracked", kept.untracked),
        ("undo-outputs", "your changed outputs", kept.outputs),
    ]
    items = list_items(groups, " ")
    text += f", and <ul class='undo-back'>{items}</ul>" if items else ".<br>"
    replaced = [*plan.changed_since, *plan.outputs_changed_since]
    if replaced:
        text += (
            "<div class='undo-warning' style='color:#9a6700'>⚠ Changed since the Apply, "
            f"and replaced: {files_text(replaced)}</div>"
        )
    return text


def apply_question(shown_name: str, changes: list[str]) -> str:
    """The question of an Apply: the experiment (`shown_name`, HTML) and the params it changes."""
    question = (
        f"Apply {shown_name} to the workspace? params.yaml, dvc.lock and the outputs "
        "become the experiment's."
    )
    if changes:
        items = "".join(f"<li>{html.escape(c)}</li>" for c in changes)
        return question + f"<ul class='apply-changes'>{items}</ul>"
    return question + "<br>The params are the same as the workspace's."


def changed_note(what: str, new: list[str]) -> str:
    """Said above a question asked again: the workspace changed since it was first asked."""
    return (
        "<div class='apply-changed' style='color:#cf222e'>The workspace changed since you were "
        f"asked ({files_text(new)}): nothing was {what}. Look again:</div>"
    )


def shown_name(name: str, rev: str, why: str | None) -> str:
    """An experiment's name for a question, as it is; with its ref when the name alone would
    be misread (`why`: a teammate's `-A`, `main`)."""
    text = f"<b>{html.escape(name)}</b>"
    if why:
        text += (
            f" <span class='odd-name' style='color:#9a6700'>(its name {html.escape(why)};"
            f" acted on by its ref <code>{html.escape(rev)}</code>)</span>"
        )
    return text
