"""The benchmark's results tables (CSV files written by ``python -m i3ad evaluate``): reading them, the rows at given
settings, the summary tables of the README and ``python -m i3ad report``, and the comparison of two runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from i3ad.checks import error_summary
from i3ad.evaluation import BY_DEFECT_COLUMNS, METRIC_COLUMNS, NORMAL_ROW, RESULT_COLUMNS, SETTING_COLUMNS
from i3ad.scoring import DetectionSettings
from i3ad.shipped import SHIPPED_SETTINGS, ModelSettings


def _by_model(settings: DetectionSettings | ModelSettings) -> ModelSettings:
    """One DetectionSettings stands for every model."""
    return settings if isinstance(settings, ModelSettings) else ModelSettings(settings)


METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "image_f1_max": "image F1-max",
}


# Setting columns added after tables were written, and the value I3AD rows had before (autoencoder rows: none): each
# step-0 mask hid one group, masks were not cut, each step re-painted its mask at once and scored every pixel by its
# own reconstruction. A table written with evaluate's --shrinking-masks or --iteration-painting before its rule had
# columns is read as that default rule; the two such tables of results/ got the columns by hand.
_INPAINTING_COLUMNS_ADDED_LATER = {
    "step0_hidden_groups": 1.0,
    "shrinking_masks": False,
    "iteration_painting": "hole",
    "last_painting_scores": False,
}


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results CSV written by ``python -m i3ad evaluate``; a clear error when it is missing or not one."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a results CSV, such as {path / 'benchmark.csv'}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; create it with `python -m i3ad evaluate ... --out {path}`")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        summary = error_summary(error)
        raise ValueError(f"{path} is not a results table of `python -m i3ad evaluate` ({summary})") from None
    if "ssim_threshold" in table.columns:
        for column, value in _INPAINTING_COLUMNS_ADDED_LATER.items():
            if column not in table.columns:
                table[column] = pd.Series(value, index=table.index).where(table["ssim_threshold"].notna())
        # One dtype whatever the rows hold (an autoencoder-only table reads them as float NaN), so that two tables'
        # rows can be matched on them (compare_runs).
        table = table.astype({"shrinking_masks": object, "iteration_painting": object, "last_painting_scores": object})
    missing = set(RESULT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(
            f"{path} is not a results table of `python -m i3ad evaluate` (missing columns {sorted(missing)}); "
            "a per-defect table (--by-defect) is summarised when it holds the flagged_share column that evaluate "
            "now writes"
        )
    if table.empty:
        raise ValueError(f"{path} has no rows: its evaluation wrote only the header (was it interrupted?)")
    not_numbers = [c for c in ("iterations", *METRIC_COLUMNS) if not pd.api.types.is_numeric_dtype(table[c])]
    if not_numbers:
        raise ValueError(f"{path} is not a results table of `python -m i3ad evaluate`: {not_numbers[0]} holds text")
    return table


def is_by_defect_table(path: str | Path) -> bool:
    """True when ``path`` holds a per-defect table of ``python -m i3ad evaluate --by-defect`` with its verdicts."""
    try:
        columns = pd.read_csv(path, nrows=0).columns
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False  # load_results says what is wrong with it
    return set(BY_DEFECT_COLUMNS) <= set(columns)


def verdict_summary(by_defect: pd.DataFrame) -> pd.DataFrame:
    """Per category and model of a per-defect table: the share of normal test images its verdicts call anomalous
    (false alarms) and of defective ones (detections, every defect type's images together)."""
    rows = []
    for (category, model), group in by_defect.groupby(["category", "model"], sort=True):
        normal = group[group["defect"] == NORMAL_ROW]
        defects = group[group["defect"] != NORMAL_ROW]
        count = defects["defect_images"].sum()
        rows.append(
            {
                "category": category,
                "model": model,
                "T": int(group["iterations"].iloc[0]),
                "normal images": int(normal["defect_images"].sum()),
                "false alarms": normal["flagged_share"].mean() if len(normal) else math.nan,
                "defective images": int(count),
                "detected": (defects["flagged_share"] * defects["defect_images"]).sum() / count if count else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _scoring_values(settings: DetectionSettings) -> dict[str, object]:
    """The result columns every row scored like ``settings`` has, with their values."""
    return {
        "anomaly_measure": settings.anomaly_measure,
        "smoothing_sigma": settings.smoothing_sigma,
        "normal_error_subtracted": settings.subtract_normal_error,
    }


def _masking_values(settings: DetectionSettings) -> dict[str, object]:
    """The further columns an I3AD row at ``settings`` has: its step-0 masks, how its iterations mask and paint, and
    whether its pixels are scored by their last painting."""
    return {
        "step0_cell_size": settings.step0_cell_size,
        "step0_hidden_groups": settings.step0_hidden_groups,
        "shrinking_masks": settings.shrinking_masks,
        "iteration_painting": settings.iteration_painting,
        "last_painting_scores": settings.last_painting_scores,
    }


def _inpainting_values(settings: DetectionSettings) -> dict[str, object]:
    """Those of an I3AD row at ``settings`` and its calibrated tau."""
    return {**_masking_values(settings), "calibrated_threshold": True}


def _column(table: pd.DataFrame, column: str, value: object) -> pd.Series:
    return table[column].astype(bool) if isinstance(value, bool) else table[column]


def _matching(table: pd.DataFrame, values: dict[str, object]) -> pd.Series:
    matches = pd.Series(True, index=table.index)
    for column, value in values.items():
        matches &= _column(table, column, value) == value
    return matches


def _matching_per_model(
    table: pd.DataFrame, settings: ModelSettings, condition: Callable[[pd.DataFrame, DetectionSettings], pd.Series]
) -> pd.Series:
    """``condition`` of each row at its model's settings."""
    models = table["model"].to_numpy()
    matches = np.zeros(len(table), dtype=bool)
    for model in pd.unique(models):
        chosen = models == model  # by position: concatenated tables repeat index labels
        matches[chosen] = condition(table[chosen], settings.of(model)).to_numpy()
    return pd.Series(matches, index=table.index)


def _scored_like(rows: pd.DataFrame, settings: DetectionSettings) -> pd.Series:
    is_autoencoder = rows["ssim_threshold"].isna()
    inpainting = _matching(rows, _inpainting_values(settings))
    return _matching(rows, _scoring_values(settings)) & (is_autoencoder | inpainting)


def at_settings(table: pd.DataFrame, settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS) -> pd.DataFrame:
    """Rows scored like their model's settings (measure, smoothing, normal error; step-0 masks, iteration rule and
    calibrated tau for I3AD); one DetectionSettings for every model, or by default each at its shipped ones."""
    return table[_matching_per_model(table, _by_model(settings), _scored_like)]


def unmatched_settings(table: pd.DataFrame, settings: DetectionSettings) -> list[str]:
    """What keeps one model's rows ``table`` out of ``at_settings``: each setting none of them has, as "column: the
    values the rows hold (the summary's value)"."""
    wanted = _scoring_values(settings)
    if table["ssim_threshold"].notna().any():  # I3AD rows
        wanted |= _inpainting_values(settings)

    def shown(value: object) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    unmatched = []
    for column, value in wanted.items():
        held = _column(table, column, value)
        if value not in set(held):
            unmatched.append(f"{column}: {', '.join(map(shown, sorted(held.unique())))} (summary: {shown(value)})")
    return unmatched


def missing_rows(table: pd.DataFrame, settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS) -> list[str]:
    """Why a model is missing from the per-category table at these settings (by default each model's shipped ones):
    "no MODEL rows at its summary settings; the settings its rows lack", or "no MODEL rows at T = n", one per model
    left out (its rows still count in the scoring-variant tables)."""
    models = _by_model(settings)
    notes = []
    for model, rows in table.groupby("model"):
        model_settings = models.of(model)
        at_these = at_settings(rows, model_settings)
        if at_these.empty:
            reasons = unmatched_settings(rows, model_settings) or ["its rows have each of them, but not all together"]
            notes.append(f"no {model} rows at its summary settings; {'; '.join(reasons)}")
        elif rows["ssim_threshold"].notna().any() and model_settings.iterations not in set(at_these["iterations"]):
            held = f"{at_these['iterations'].min()}..{at_these['iterations'].max()}"
            notes.append(f"no {model} rows at T = {model_settings.iterations}; its rows hold T = {held}")
    return notes


def headline(table: pd.DataFrame, settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS) -> pd.DataFrame:
    """One row per category x model at its settings (by default the shipped ones): I3AD at its T with its
    calibrated tau, the autoencoder with its anomaly measure and smoothing."""
    models = _by_model(settings)
    rows = at_settings(table, models)
    iterations = rows["model"].map(lambda model: models.of(model).iterations)
    rows = rows[rows["ssim_threshold"].isna() | (rows["iterations"] == iterations)]
    return rows.sort_values(["category", "model"]).reset_index(drop=True)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A pandas table as GitHub markdown (numbers rounded; NaN shown as "-")."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "-" if pd.isna(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def summary_tables(
    table: pd.DataFrame, settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS
) -> dict[str, pd.DataFrame]:
    """The README's tables: metrics per category and model at their settings (by default the shipped ones), and
    I3AD's image AUROC against T."""
    rows = headline(table, settings)
    metrics = ["image_auroc", "pixel_auroc", "aupro", "image_f1_max"]
    per_category = rows.pivot_table(index="category", columns="model", values=metrics, dropna=False)
    per_category = per_category[[(m, model) for m in metrics for model in sorted(rows["model"].unique())]]
    if len(per_category.columns):  # no rows at these settings: nothing to average (pandas 2 refuses a row then)
        per_category.loc["mean"] = [_complete_mean(per_category, m, model) for m, model in per_category.columns]
    per_category.columns = [f"{model} {METRIC_LABELS[metric]}" for metric, model in per_category.columns]
    curves = at_settings(table, settings)
    curves = curves[~curves["ssim_threshold"].isna()]
    return {
        "per_category": per_category.rename_axis("category").reset_index(),
        "mean_by_iterations": _mean_over_categories(curves, ["model"]),
        "scoring_variants": scoring_variants(table),
        "thresholds": threshold_table(table, settings),
        "normal_error": normal_error_table(table, settings),
    }


def _complete_mean(per_category: pd.DataFrame, metric: str, model: str) -> float:
    """A model's mean of ``metric`` over the categories where any model has it (pixel metrics need masks); NaN when
    the model lacks one of them, so that means over different sets of categories never sit side by side."""
    measured = per_category[metric].notna().any(axis=1)
    values = per_category.loc[measured, (metric, model)]
    return values.mean() if values.notna().all() else math.nan


def _mean_over_categories(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean image AUROC over categories for each ``keys`` x T (columns "T=0", ...). When the means cover different
    sets of categories (a check table with some models trained on one category only), a "categories" column names
    each mean's set, so that they are not read as comparable."""
    means = rows.groupby([*keys, "iterations"])["image_auroc"].mean().unstack("iterations")
    means.columns = [f"T={t}" for t in means.columns]
    covered = rows.groupby(keys)["category"].agg(lambda categories: ", ".join(sorted(set(categories))))
    if covered.nunique() > 1:
        means.insert(0, "categories", covered)
    return means.reset_index()


def normal_error_table(
    table: pd.DataFrame, settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS
) -> pd.DataFrame:
    """Mean image AUROC over categories of every model with raw maps and with the normal error subtracted (otherwise
    scored like its settings), for each T."""
    models = _by_model(settings)
    rows = pd.concat([at_settings(table, models.with_(subtract_normal_error=flag)) for flag in (False, True)])
    return _mean_over_categories(rows, ["model", "normal_error_subtracted"])


def threshold_table(
    table: pd.DataFrame, settings: DetectionSettings | ModelSettings = SHIPPED_SETTINGS
) -> pd.DataFrame:
    """Mean image AUROC over categories of each inpainting model at each fixed tau and at the calibrated one
    (scored like its settings), for each T."""

    def scored_alike(rows: pd.DataFrame, model_settings: DetectionSettings) -> pd.Series:
        return _matching(rows, {**_scoring_values(model_settings), **_masking_values(model_settings)})

    same_scoring = _matching_per_model(table, _by_model(settings), scored_alike)
    rows = table[same_scoring & table["ssim_threshold"].notna()]
    # Each fixed tau as written (0.795 and 0.8 stay apart; rounding merged them into one mean).
    tau = rows["ssim_threshold"].map("{:g}".format).where(~rows["calibrated_threshold"].astype(bool), "calibrated")
    return _mean_over_categories(rows.assign(tau=tau), ["model", "tau"])


def compare_runs(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Per category and model, the largest change of image AUROC, pixel AUROC and AUPRO from ``reference`` to
    ``other`` over the rows both tables hold (the same settings, e.g. a float32 and a bfloat16 evaluation), and the
    row count."""

    def keyed(table: pd.DataFrame) -> pd.DataFrame:
        # Calibrated thresholds are written with 4 decimals; rounding makes both tables' values compare equal.
        return table.assign(ssim_threshold=table["ssim_threshold"].round(4))

    both = keyed(reference).merge(keyed(other), on=list(SETTING_COLUMNS), suffixes=("_reference", "_other"))
    if both.empty:
        raise ValueError("the two results tables share no settings; evaluate both with the same options")
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        both[f"largest change of {METRIC_LABELS[metric]}"] = (
            both[f"{metric}_other"] - both[f"{metric}_reference"]
        ).abs()
    changes = both.groupby(["category", "model"])[[c for c in both.columns if c.startswith("largest change")]].max()
    return changes.assign(rows=both.groupby(["category", "model"]).size()).reset_index()


def scoring_variants(table: pd.DataFrame) -> pd.DataFrame:
    """Mean image AUROC over categories of every inpainting model x step-0 masks (cell size, hidden groups) x
    iteration rule (shrinking masks, painting, last-painting scores) x measure x smoothing, at the calibrated tau, for
    each T (the ablation behind the defaults)."""
    rows = table[table["calibrated_threshold"].astype(bool)]
    keys = [
        "model",
        "step0_cell_size",
        "step0_hidden_groups",
        "shrinking_masks",
        "iteration_painting",
        "last_painting_scores",
        "anomaly_measure",
        "smoothing_sigma",
        "normal_error_subtracted",
    ]
    means = _mean_over_categories(rows, keys).astype({"step0_cell_size": int, "step0_hidden_groups": int})
    return means.assign(smoothing_sigma=means["smoothing_sigma"].map("{:g}".format))
