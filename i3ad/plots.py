"""Plotly figures of benchmark results (results/benchmark.csv) and of detection steps, shared by the app and the
notebooks."""

from __future__ import annotations

import base64
import io

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from i3ad.results import METRIC_LABELS, at_settings, headline
from i3ad.scoring import DetectionSettings
from i3ad.shipped import SHIPPED_SETTINGS, ModelSettings


def auroc_bars(
    table: pd.DataFrame,
    metric: str = "image_auroc",
    settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS,
) -> go.Figure:
    """Grouped bars: ``metric`` per category, one bar per model (I3AD variants and the AE baseline), each at its
    settings (by default the shipped ones)."""
    rows = headline(table, settings).dropna(subset=[metric])
    at = f"T = {settings.iterations}" if isinstance(settings, DetectionSettings) else "each at its own T"
    figure = px.bar(
        rows,
        x="category",
        y=metric,
        color="model",
        barmode="group",
        text_auto=".3f",
        labels={metric: METRIC_LABELS.get(metric, metric)},
        title=f"{METRIC_LABELS.get(metric, metric)}: I3AD ({at}) vs autoencoder baseline",
    )
    return figure.update_yaxes(range=[0, 1.05])


def auroc_vs_iterations(
    table: pd.DataFrame,
    metric: str = "image_auroc",
    model: str | None = None,
    settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS,
) -> go.Figure:
    """Lines: ``metric`` against the iteration count T per category (calibrated tau), with the mean over categories,
    of one I3AD ``model`` (default: "i3ad" if the table has it, else its first inpainting model) at its settings (by
    default the shipped ones)."""
    rows = at_settings(table, settings)
    if model is None:
        inpainting = sorted(rows.loc[rows["ssim_threshold"].notna(), "model"].unique())
        model = "i3ad" if "i3ad" in inpainting or not inpainting else inpainting[0]
    rows = rows[rows["model"] == model].dropna(subset=[metric])
    curves = rows.groupby(["category", "iterations"], as_index=False)[metric].mean()
    mean = curves.groupby("iterations", as_index=False)[metric].mean().assign(category="mean")
    figure = px.line(
        pd.concat([curves, mean]),
        x="iterations",
        y=metric,
        color="category",
        markers=True,
        labels={metric: METRIC_LABELS.get(metric, metric), "iterations": "iterations T"},
        title=f"{METRIC_LABELS.get(metric, metric)} of {model} against the number of iterations",
    )
    return figure.update_traces(selector={"name": "mean"}, line={"dash": "dash", "width": 3})


def image_grid(panels: list[list], title: str, panel_size: int = 180) -> go.Figure:
    """Rows of image panels, each (caption, PIL image) or None (left empty), as one figure (e.g. the steps of a
    detection)."""

    def data_uri(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    rows, columns = len(panels), max(len(row) for row in panels)
    padded = [row + [None] * (columns - len(row)) for row in panels]
    figure = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[panel[0] if panel else "" for row in padded for panel in row],
        horizontal_spacing=0.01,
        vertical_spacing=0.25 / rows,
    )
    for r, row in enumerate(padded, start=1):
        for c, panel in enumerate(row, start=1):
            if panel is not None:
                figure.add_trace(go.Image(source=data_uri(panel[1]), name=panel[0]), row=r, col=c)
    figure.update_xaxes(visible=False).update_yaxes(visible=False).update_annotations(font_size=11)
    return figure.update_layout(
        title=title, width=columns * panel_size + 40, height=rows * (panel_size + 30) + 90, margin={"t": 90}
    )
