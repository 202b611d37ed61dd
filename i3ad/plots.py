"""Plotly figures of benchmark results (results/benchmark.csv), shared by the app and the notebooks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from i3ad.scoring import DetectionSettings

METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "image_f1_max": "image F1-max",
}


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results CSV written by ``python -m i3ad evaluate``; a clear error when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; create it with `python -m i3ad evaluate ... --out {path}`")
    table = pd.read_csv(path)
    missing = {"category", "model", "iterations", "image_auroc"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not an i3ad results table (missing columns {sorted(missing)})")
    return table


def _at_settings(table: pd.DataFrame, settings: DetectionSettings) -> pd.DataFrame:
    """Rows scored like ``settings`` (measure, smoothing; step-0 cell size and calibrated tau for I3AD)."""
    same_scoring = (table["anomaly_measure"] == settings.anomaly_measure) & (
        table["smoothing_sigma"] == settings.smoothing_sigma
    )
    is_autoencoder = table["ssim_threshold"].isna()
    inpainting = table["calibrated_threshold"].astype(bool) & (table["step0_cell_size"] == settings.step0_cell_size)
    return table[same_scoring & (is_autoencoder | inpainting)]


def headline(table: pd.DataFrame, settings: DetectionSettings = DetectionSettings()) -> pd.DataFrame:
    """One row per category x model at the shipped defaults: I3AD at T = settings.iterations with its calibrated
    tau, the autoencoder with the same anomaly measure and smoothing."""
    rows = _at_settings(table, settings)
    rows = rows[rows["ssim_threshold"].isna() | (rows["iterations"] == settings.iterations)]
    return rows.sort_values(["category", "model"]).reset_index(drop=True)


def auroc_bars(
    table: pd.DataFrame, metric: str = "image_auroc", settings: DetectionSettings = DetectionSettings()
) -> go.Figure:
    """Grouped bars: ``metric`` per category, one bar per model (I3AD variants and the AE baseline)."""
    rows = headline(table, settings).dropna(subset=[metric])
    figure = px.bar(
        rows,
        x="category",
        y=metric,
        color="model",
        barmode="group",
        text_auto=".3f",
        labels={metric: METRIC_LABELS.get(metric, metric)},
        title=f"{METRIC_LABELS.get(metric, metric)}: I3AD (T = {settings.iterations}) vs autoencoder baseline",
    )
    return figure.update_yaxes(range=[0, 1.05])


def auroc_vs_iterations(
    table: pd.DataFrame,
    metric: str = "image_auroc",
    model: str = "i3ad",
    settings: DetectionSettings = DetectionSettings(),
) -> go.Figure:
    """Lines: ``metric`` against the iteration count T per category (calibrated tau), with the mean over categories."""
    rows = _at_settings(table, settings)
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
