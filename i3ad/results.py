"""The benchmark's results tables (CSV files written by ``python -m i3ad evaluate``): reading them, the rows at given
settings, the summary tables of the README and ``python -m i3ad report``, and the comparison of two runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from i3ad.checks import error_summary
from i3ad.evaluation import BY_DEFECT_COLUMNS, NORMAL_ROW, RESULT_COLUMNS, SETTING_COLUMNS
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
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a results CSV, such as {path / 'benchmark.csv'}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; create it with `python -m i3ad evaluate ... --out {path}`")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        summary = error_summary(error)
        raise ValueError(f"{path} is not a results table of `python -m i3ad evaluate` ({summary})") from None
    if "step0_hidden_groups" not in table.columns and "ssim_threshold" in table.columns:
        # Written before the setting existed, when each step-0 mask hid one group (autoencoder rows: none).
        table["step0_hidden_groups"] = pd.Series(1.0, index=table.index).where(table["ssim_threshold"].notna())
    missing = set(RESULT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(
            f"{path} is not a results table of `python -m i3ad evaluate` (missing columns {sorted(missing)}); "
            "a per-defect table (--by-defect) is summarised when it holds the flagged_share column that evaluate "
            "now writes"
        )
    if table.empty:
        raise ValueError(f"{path} has no rows: its evaluation wrote only the header (was it interrupted?)")
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


def _step0_values(settings: DetectionSettings) -> dict[str, object]:
    """The further columns an I3AD row at ``settings`` has: its step-0 masks."""
    return {"step0_cell_size": settings.step0_cell_size, "step0_hidden_groups": settings.step0_hidden_groups}


def _inpainting_values(settings: DetectionSettings) -> dict[str, object]:
    """Those of an I3AD row at ``settings`` and its calibrated tau."""
    return {**_step0_values(settings), "calibrated_threshold": True}


def _column(table: pd.DataFrame, column: str, value: object) -> pd.Series:
    return table[column].astype(bool) if isinstance(value, bool) else table[column]


def _matching(table: pd.DataFrame, values: dict[str, object]) -> pd.Series:
    matches = pd.Series(True, index=table.index)
    for column, value in values.items():
        matches &= _column(table, column, value) == value
    return matches


def at_settings(table: pd.DataFrame, settings: DetectionSettings) -> pd.DataFrame:
    """Rows scored like ``settings`` (measure, smoothing, normal error; step-0 masks and calibrated tau for
    I3AD)."""
    is_autoencoder = table["ssim_threshold"].isna()
    inpainting = _matching(table, _inpainting_values(settings))
    return table[_matching(table, _scoring_values(settings)) & (is_autoencoder | inpainting)]


def unmatched_settings(table: pd.DataFrame, settings: DetectionSettings) -> list[str]:
    """What keeps one model's rows ``table`` out of ``at_settings``: each setting none of them has, as "column: the
    values the rows hold (the report's value)"."""
    wanted = _scoring_values(settings)
    if table["ssim_threshold"].notna().any():  # I3AD rows
        wanted |= _inpainting_values(settings)

    def shown(value: object) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    unmatched = []
    for column, value in wanted.items():
        held = _column(table, column, value)
        if value not in set(held):
            unmatched.append(f"{column}: {', '.join(map(shown, sorted(held.unique())))} (the report's: {shown(value)})")
    return unmatched


def headline(table: pd.DataFrame, settings: DetectionSettings = DetectionSettings()) -> pd.DataFrame:
    """One row per category x model at the shipped defaults: I3AD at T = settings.iterations with its calibrated
    tau, the autoencoder with the same anomaly measure and smoothing."""
    rows = at_settings(table, settings)
    rows = rows[rows["ssim_threshold"].isna() | (rows["iterations"] == settings.iterations)]
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


def summary_tables(table: pd.DataFrame, settings: DetectionSettings = DetectionSettings()) -> dict[str, pd.DataFrame]:
    """The README's tables: metrics per category and model at the defaults, and I3AD's image AUROC against T."""
    rows = headline(table, settings)
    metrics = ["image_auroc", "pixel_auroc", "aupro", "image_f1_max"]
    per_category = rows.pivot_table(index="category", columns="model", values=metrics, dropna=False)
    per_category = per_category[[(m, model) for m in metrics for model in sorted(rows["model"].unique())]]
    per_category.loc["mean"] = [_complete_mean(per_category, metric, model) for metric, model in per_category.columns]
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


def normal_error_table(table: pd.DataFrame, settings: DetectionSettings = DetectionSettings()) -> pd.DataFrame:
    """Mean image AUROC over categories of every model with raw maps and with the normal error subtracted (otherwise
    scored like ``settings``), for each T."""
    rows = pd.concat([at_settings(table, settings.with_(subtract_normal_error=flag)) for flag in (False, True)])
    return _mean_over_categories(rows, ["model", "normal_error_subtracted"])


def threshold_table(table: pd.DataFrame, settings: DetectionSettings = DetectionSettings()) -> pd.DataFrame:
    """Mean image AUROC over categories of each inpainting model at each fixed tau and at the calibrated one
    (scored like ``settings``), for each T."""
    same_scoring = _matching(table, {**_scoring_values(settings), **_step0_values(settings)})
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
    """Mean image AUROC over categories of every inpainting model x step-0 masks (cell size, hidden groups) x measure
    x smoothing, at the calibrated tau, for each T (the ablation behind the defaults)."""
    rows = table[table["calibrated_threshold"].astype(bool)]
    keys = [
        "model",
        "step0_cell_size",
        "step0_hidden_groups",
        "anomaly_measure",
        "smoothing_sigma",
        "normal_error_subtracted",
    ]
    means = _mean_over_categories(rows, keys).astype({"step0_cell_size": int, "step0_hidden_groups": int})
    return means.assign(smoothing_sigma=means["smoothing_sigma"].map("{:g}".format))
