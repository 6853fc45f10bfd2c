"""Plotly figures of the dashboard, built from the data layer's frames: curves of the picked
experiments, a metric against a param and parallel coordinates over all experiments, and
confusion matrices side by side.

No widgets here: figures are plain `go.Figure`s, shown in an Output widget through plotly's
mime renderer (dashboard.panels.compare.PlotBox), not `FigureWidget`s: a FigureWidget brings
its own 4.6 MB copy of plotly.js, which the browser compiles again on every page load (6 s of
the first render here), while the mime renderer's copy is loaded once with JupyterLab's and
Voila's extensions and cached."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

PALETTE = qualitative.D3
LAYOUT = dict(
    template="plotly_white",
    height=340,
    margin=dict(l=60, r=20, t=40, b=50),
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
)


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard's smoothing: an exponential moving average with weight `weight` in [0, 1),
    debiased so that the first points are not pulled towards zero."""
    if weight <= 0:
        return values
    return values.ewm(alpha=1.0 - weight, adjust=True).mean()


def empty_figure(message: str, height: int = 200) -> go.Figure:
    figure = go.Figure(layout={**LAYOUT, "height": height})
    figure.add_annotation(
        text=message,
        showarrow=False,
        font=dict(size=14, color="#57606a"),
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


def curves_figure(
    points: pd.DataFrame,
    labels: Mapping[str, str],
    colors: Mapping[str, str],
    title: str,
    weight: float = 0.6,
) -> go.Figure:
    """One line per revision of `points` (rev, step, value): the raw values faint, the smoothed
    ones solid, in the revision's colour."""
    traces = []
    for rev in labels:
        curve = points[points["rev"] == rev]
        if curve.empty:
            continue
        color, name = colors.get(rev, "#444"), labels[rev]
        if weight > 0:
            traces.append(
                go.Scatter(
                    x=curve["step"],
                    y=curve["value"],
                    mode="lines",
                    name=f"{name} (raw)",
                    line=dict(color=color, width=1),
                    opacity=0.3,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        traces.append(
            go.Scatter(
                x=curve["step"],
                y=smooth(curve["value"], weight),
                mode="lines",
                name=name,
                line=dict(color=color, width=2),
            )
        )
    if not traces:
        return empty_figure(f"No {title} for the picked experiments.")
    layout = {**LAYOUT, "title": title, "xaxis_title": "step"}
    return go.Figure(data=traces, layout=layout)


def scatter_figure(frame: pd.DataFrame, x: str, y: str, colors: Mapping[str, str]) -> go.Figure:
    """`y` against `x` over every row given; picked experiments in their colours."""
    data = frame[["id", "name", x, y]].copy()
    data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data.dropna(subset=[y])
    if data.empty:
        return empty_figure(f"No experiment has {y} yet.")
    marker_colors = [colors.get(rev, "#8c959f") for rev in data["id"]]
    sizes = [13 if rev in colors else 8 for rev in data["id"]]
    trace = go.Scatter(
        x=data[x].map(lambda v: v if isinstance(v, int | float) else str(v)),
        y=data[y],
        mode="markers",
        text=data["name"],
        marker=dict(color=marker_colors, size=sizes),
        hovertemplate=f"%{{text}}<br>{x}=%{{x}}<br>{y}=%{{y}}<extra></extra>",
    )
    layout = {**LAYOUT, "title": f"{y} against {x}", "xaxis_title": x, "yaxis_title": y}
    return go.Figure(data=[trace], layout=layout)


def _dimension(values: pd.Series, name: str) -> dict | None:
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        return dict(label=name, values=numbers)
    texts = values.map(str)
    categories = sorted(texts.unique())
    if len(categories) > 30:
        return None
    codes = texts.map({c: i for i, c in enumerate(categories)})
    return dict(
        label=name, values=codes, tickvals=list(range(len(categories))), ticktext=categories
    )


def parallel_figure(frame: pd.DataFrame, params: list[str], metric: str) -> go.Figure:
    """Parallel coordinates over every row given: one axis per param, the metric last and as
    the colour, so that the lines that end high show which settings work."""
    data = frame.copy()
    data[metric] = pd.to_numeric(data[metric], errors="coerce")
    data = data.dropna(subset=[metric])
    if data.empty or not params:
        return empty_figure(
            f"Parallel coordinates need experiments that differ in a param and report {metric}."
        )
    dimensions = [d for p in params if (d := _dimension(data[p], p)) is not None]
    dimensions.append(dict(label=metric, values=data[metric]))
    trace = go.Parcoords(
        line=dict(
            color=data[metric], colorscale="Viridis", showscale=True, colorbar=dict(title=metric)
        ),
        dimensions=dimensions,
    )
    layout = {**LAYOUT, "title": f"Params and {metric}", "margin": dict(l=80, r=80, t=80, b=30)}
    return go.Figure(data=[trace], layout=layout)


def confusion_figure(matrices: Mapping[str, pd.DataFrame], labels: Mapping[str, str]) -> go.Figure:
    """The confusion matrices of the picked experiments side by side, counts in the cells."""
    revs = [rev for rev in labels if rev in matrices]
    if not revs:
        return empty_figure("No confusion matrix for the picked experiments.")
    figure = make_subplots(
        rows=1, cols=len(revs), subplot_titles=[labels[r] for r in revs], horizontal_spacing=0.08
    )
    for column, rev in enumerate(revs, start=1):
        matrix = matrices[rev]
        figure.add_trace(
            go.Heatmap(
                z=matrix.values,
                x=[str(c) for c in matrix.columns],
                y=[str(i) for i in matrix.index],
                text=matrix.values,
                texttemplate="%{text}",
                colorscale="Blues",
                showscale=False,
                hovertemplate="actual %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="predicted", row=1, col=column)
        figure.update_yaxes(
            title_text="actual" if column == 1 else None, autorange="reversed", row=1, col=column
        )
    figure.update_layout(**{**LAYOUT, "height": 320, "title": "Classifier confusion matrices"})
    return go.Figure(figure)
