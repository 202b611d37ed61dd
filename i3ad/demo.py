"""What the Gradio app (app.py) shows, without Gradio: loaded models, one image's detection as pictures and files,
example images and the benchmark view. Errors are i3ad's own (CheckpointError, ImageReadError, ValueError); the app
turns them into messages.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from PIL import Image
from torch import Tensor

from i3ad.checkpoints import CheckpointError
from i3ad.data import NORMAL, DatasetError, index_category
from i3ad.detector import AnomalyDetector, check_iterations, check_ssim_threshold, verdict
from i3ad.hub import CheckpointListing, CheckpointResolver, check_name
from i3ad.plots import auroc_bars, auroc_vs_iterations
from i3ad.results import headline, load_results, missing_rows
from i3ad.scoring import DetectionResult
from i3ad.shipped import SHIPPED_SETTINGS
from i3ad.synthetic import make_synthetic_category
from i3ad.visualize import (
    HEATMAP_RANGE,
    colorize,
    display_image,
    heatmap_picture,
    mask_picture,
    output_name,
    to_pil,
)

# The variant name of the autoencoder baseline; every other variant of a category is an I3AD model.
BASELINE_VARIANT = "ae"
# The variant a device opens with, in order of preference: the small network answers fast on a CPU, the benchmark
# one is the more accurate and costs little on a GPU.
PREFERRED_VARIANTS = {"cpu": ("i3ad-small", "i3ad"), "cuda": ("i3ad", "i3ad-small")}
# Resolution of the app's tau slider. A tau within half a step of the calibrated one is the calibrated one, so the
# default run reproduces the checkpoint's calibration exactly.
TAU_STEP = 0.001
# The tau slider spans the useful part of SSIM's range [-1, 1], widened for a checkpoint calibrated below it.
TAU_RANGE = (0.0, 1.0)
SYNTHETIC_SIZE = 256
# A detection's files (heat-map, mask, scores CSV) are kept this long for the user to download, then removed.
OUTPUT_MAX_AGE_S = 3600
OUTPUT_PREFIX = "detection_"
# A checkpoint listing made while the Hub repo could not be reached is kept this long before the Hub is asked again
# (not on every request: each attempt may wait for the network's time-outs).
HUB_RETRY_SECONDS = 60.0
# The benchmark table's columns (the others are the same in every row at the shipped settings).
TABLE_COLUMNS = (
    "category",
    "model",
    "iterations",
    "ssim_threshold",
    "shrinking_masks",
    "iteration_painting",
    "last_painting_scores",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_f1_max",
    "mean_mask_share",
)

logger = logging.getLogger(__name__)


def model_variants(variants: list[str]) -> list[str]:
    """The variants offered in the model menu: the I3AD ones (the baseline only if it is all there is)."""
    return [v for v in variants if v != BASELINE_VARIANT] or list(variants)


def default_variant(variants: list[str], device: torch.device | str = "cpu") -> str:
    choices = model_variants(variants)
    preferred = PREFERRED_VARIANTS.get(torch.device(device).type, PREFERRED_VARIANTS["cpu"])
    return next((variant for variant in preferred if variant in choices), choices[0])


class ModelStore:
    """Detectors loaded once per (category, variant) on one device and kept for later requests."""

    def __init__(
        self,
        resolver: CheckpointResolver,
        device: torch.device | str = "cpu",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.device = torch.device(device)
        self._loaded: dict[tuple[str, str], AnomalyDetector] = {}
        self._lock = threading.Lock()  # guards _model_locks
        self._model_locks: dict[tuple[str, str], threading.Lock] = {}
        self._listing_lock = threading.Lock()  # one listing at a time
        self._listing: CheckpointListing | None = None
        self._listed_at = 0.0
        self._clock = clock

    def current_listing(self) -> CheckpointListing:
        """The checkpoints found, and whether a Hub repo asked for could be listed (looked up as by ``available``)."""
        self.available()
        assert self._listing is not None
        return self._listing

    def available(self) -> dict[str, list[str]]:
        """{category: [variant, ...]}, looked up once; while a Hub repo cannot be listed (the listing then holds the
        local checkpoints only), looked up again after HUB_RETRY_SECONDS: the request that comes first after that
        waits for the Hub's answer, the others meanwhile get the last listing."""
        listing = self._listing
        if listing is not None and (listing.complete or self._clock() - self._listed_at < HUB_RETRY_SECONDS):
            return listing.checkpoints
        # Only the first listing, which has nothing to fall back on, waits for another request's.
        if not self._listing_lock.acquire(blocking=listing is None):
            return listing.checkpoints
        try:
            if self._listing is listing:  # not listed again by another request meanwhile
                self._listing, self._listed_at = self.resolver.listing(), self._clock()
            return self._listing.checkpoints
        finally:
            self._listing_lock.release()

    def get(self, category: str, variant: str) -> AnomalyDetector:
        """The loaded detector; CheckpointError for a category or variant without a checkpoint."""
        check_name("category", category)
        check_name("variant", variant)
        available = self.available()
        if category not in available:
            raise CheckpointError(f"no checkpoint for category {category!r} (have: {', '.join(available) or 'none'})")
        if variant not in available[category]:
            raise CheckpointError(
                f"category {category!r} has no model {variant!r} (have: {', '.join(available[category])})"
            )
        key = (category, variant)
        # One lock per model: two first requests for one model load it once, while requests for models already
        # loaded do not wait for it (a load may be a download from the Hub).
        with self._lock:
            model_lock = self._model_locks.setdefault(key, threading.Lock())
        with model_lock:
            if key not in self._loaded:
                self._loaded[key] = self.resolver.load(category, variant, self.device)
            return self._loaded[key]


@dataclass(frozen=True)
class ModelDefaults:
    """What the app's controls start at for one model: its default T and calibrated tau."""

    iterations: int
    ssim_threshold: float | None
    description: str


def model_defaults(detector: AnomalyDetector) -> ModelDefaults:
    tau = detector.calibration.ssim_threshold
    iterations = detector.default_iterations
    size = detector.preprocessing.image_size
    description = (
        f"**{detector.category} / {detector.name}** ({detector.kind}): {size}x{size} px, "
        f"{detector.preprocessing.channels} channel(s); calibrated on {detector.calibration.holdout_images} "
        "held-out normal images"
    )
    if tau is not None:
        description += f"; tau = {tau:.4f}, default T = {iterations}"
        if iterations == 0:
            # Such as the shipped i3ad-small (its benchmark mean peaks there), which would otherwise seem to ignore tau.
            description += " (step 0 alone; raise T to iterate: tau applies from T = 1)"
    return ModelDefaults(iterations, tau, description)


def first_working_model(store: ModelStore, categories: list[str]) -> tuple[str, str, ModelDefaults]:
    """(category, variant, defaults) of the first model that loads, trying each category's menu in turn with its
    default variant first: the page opens on it. A damaged checkpoint is logged and passed over (choosing it later
    says what is wrong); CheckpointError when none loads."""
    problems = []
    for category in categories:
        variants = model_variants(store.available()[category])
        preferred = default_variant(variants, store.device)
        for variant in [preferred, *(v for v in variants if v != preferred)]:
            try:
                return category, variant, model_defaults(store.get(category, variant))
            except CheckpointError as error:
                logger.warning("%s/%s cannot be loaded: %s", category, variant, error)
                problems.append(str(error))
    raise CheckpointError(f"no checkpoint could be loaded: {'; '.join(problems)}")


@dataclass
class BaselineView:
    """The autoencoder baseline's answer for the same image."""

    heatmap: Image.Image
    score: float
    threshold: float


@dataclass
class DetectionReport:
    """One image's detection, ready to show: pictures at the input's display size (``visualize.display_size``), step
    images, summary and files."""

    category: str
    variant: str
    iterations: int
    ssim_threshold: float | None
    calibrated_ssim_threshold: float | None
    score: float
    threshold: float
    heatmap: Image.Image
    mask: Image.Image
    steps: list[tuple[Image.Image, str]]  # per step: reconstruction, mask, anomaly map
    step_scores: list[float]
    step_thresholds: list[float]
    baseline: BaselineView | None = None
    input_note: str | None = None  # a warning about the input (``Preprocessing.distortion_note``)
    files: list[Path] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(self.score, self.threshold)

    def summary(self) -> str:
        """Markdown: the verdict, the score against the threshold used, and the settings."""
        comparison = ">" if self.verdict == "anomalous" else "<="
        lines = [
            f"## {self.verdict.upper()}",
            f"Anomaly score **{self.score:.4f}** {comparison} score threshold **{self.threshold:.4f}** "
            f"(calibrated for {self.category} / {self.variant} at T = {self.iterations}).",
        ]
        if self.ssim_threshold is not None and self.iterations == 0:
            lines.append("Iterations T = 0: step 0 alone, which thresholds nothing (tau is not used).")
        elif self.ssim_threshold is not None:
            lines.append(f"Iterations T = {self.iterations}, SSIM threshold tau = {self.ssim_threshold:.4f}.")
            if self.ssim_threshold != self.calibrated_ssim_threshold:
                lines.append(
                    f"The score thresholds were calibrated at tau = {self.calibrated_ssim_threshold:.4f}: "
                    "at another tau the verdict is only indicative."
                )
        if self.input_note is not None:
            lines.append(f"Note: {self.input_note}.")
        if self.baseline is not None:
            lines.append(
                f"Autoencoder baseline: score {self.baseline.score:.4f}, threshold {self.baseline.threshold:.4f} "
                f"-> {verdict(self.baseline.score, self.baseline.threshold)}."
            )
        return "\n\n".join(lines)


def _step_images(
    result: DetectionResult, thresholds: list[float], crop: Callable[[Tensor], Tensor], step0_paintings: int
) -> list[tuple[Image.Image, str]]:
    """Per step t: the reconstruction, the mask of hidden pixels and the anomaly map (coloured like the heat-map,
    against the score threshold of T = t), each with a caption; ``crop`` cuts the image's part out of a frame;
    ``step0_paintings``: how often step 0 paints each pixel (its settings' ``step0_hidden_groups``)."""
    step0 = "every pixel once" if step0_paintings == 1 else f"every pixel {step0_paintings} times, averaged"
    items = []
    for t, (reconstruction, mask, amap, score) in enumerate(
        zip(result.reconstructions, result.masks, result.anomaly_maps, result.step_scores[:, 0], strict=True)
    ):
        reconstruction, mask, amap = crop(reconstruction), crop(mask), crop(amap)
        hidden = f"{step0}, by grid masks" if t == 0 else f"{mask[0].float().mean().item():.0%} hidden"
        items += [
            (to_pil(reconstruction[0]), f"step {t}: reconstruction"),
            (to_pil(mask[0]), f"step {t}: mask ({hidden})"),
            (
                Image.fromarray(colorize(amap[0], HEATMAP_RANGE * thresholds[t])),
                f"step {t}: anomaly map, score {score:.3f}",
            ),
        ]
    return items


def _effective_tau(calibrated: float | None, requested: float | None) -> float | None:
    """The tau to run with: the calibrated one, unless another was asked for (a slider value within half a step of
    the calibrated tau is the calibrated tau)."""
    if requested is None or (calibrated is not None and abs(requested - calibrated) <= TAU_STEP / 2):
        return calibrated
    return requested


def detect_image(
    store: ModelStore,
    category: str,
    variant: str,
    image_path: str | Path,
    *,
    iterations: int | float | None = None,
    ssim_threshold: float | None = None,
    out_dir: str | Path,
    with_baseline: bool = True,
) -> DetectionReport:
    """Run one model (and the category's autoencoder baseline when it has one) on an image file.

    iterations / ssim_threshold: default the checkpoint's; they may come straight from a request, and are checked
    (check_iterations, check_ssim_threshold) before anything is loaded. Writes ``<name>_heatmap.png``,
    ``<name>_mask.png`` and ``<name>_scores.csv`` to ``out_dir``. Raises CheckpointError, ImageReadError or
    ValueError.
    """
    requested_iterations = None if iterations is None else check_iterations(iterations)
    requested_tau = check_ssim_threshold(ssim_threshold)
    detector = store.get(category, variant)
    if detector.kind == "i3ad":
        iterations = detector.default_iterations if requested_iterations is None else requested_iterations
        tau = _effective_tau(detector.calibration.ssim_threshold, requested_tau)
    else:
        iterations, tau = 0, None
    image = detector.read(image_path)
    result = detector.detect(image, iterations=iterations, ssim_threshold=tau)
    step_thresholds = [detector.calibration.score_threshold(t) for t in range(iterations + 1)]
    threshold = step_thresholds[-1]
    anomaly_map = detector.crop(result.anomaly_map, image)[0].cpu()
    shown = display_image(image)
    report = DetectionReport(
        category=category,
        variant=variant,
        iterations=iterations,
        ssim_threshold=tau,
        calibrated_ssim_threshold=detector.calibration.ssim_threshold,
        score=result.scores[0].item(),
        threshold=threshold,
        heatmap=heatmap_picture(shown, anomaly_map, threshold),
        mask=mask_picture(shown, anomaly_map, threshold),
        steps=_step_images(
            result,
            step_thresholds,
            lambda frames: detector.crop(frames, image),
            detector.settings.step0_hidden_groups,
        ),
        step_scores=result.step_scores[:, 0].tolist(),
        step_thresholds=step_thresholds,
        input_note=detector.preprocessing.distortion_note(*image.shape[-2:]),
    )
    baseline = _baseline(store, category) if with_baseline and variant != BASELINE_VARIANT else None
    if baseline is not None:
        # The same decoded image when the channels agree: a large input is decoded once, not twice.
        same_channels = baseline.preprocessing.channels == detector.preprocessing.channels
        baseline_image = image if same_channels else baseline.read(image_path)
        baseline_result = baseline.detect(baseline_image)
        baseline_threshold = baseline.calibration.score_threshold(0)
        report.baseline = BaselineView(
            heatmap=heatmap_picture(
                shown if same_channels else baseline_image,
                baseline.crop(baseline_result.anomaly_map, baseline_image)[0].cpu(),
                baseline_threshold,
            ),
            score=baseline_result.scores[0].item(),
            threshold=baseline_threshold,
        )
    report.files = save_report(report, output_name(image_path), out_dir)
    return report


def _baseline(store: ModelStore, category: str) -> AnomalyDetector | None:
    """The category's autoencoder baseline, or None when it has none or its checkpoint cannot be loaded (the chosen
    model's result is shown all the same)."""
    if BASELINE_VARIANT not in store.available()[category]:
        return None
    try:
        return store.get(category, BASELINE_VARIANT)
    except CheckpointError as error:
        logger.warning("%s: the autoencoder baseline is left out: %s", category, error)
        return None


def new_output_folder(root: str | Path) -> Path:
    """A fresh folder under ``root`` for one detection's files; those of earlier detections older than
    OUTPUT_MAX_AGE_S are removed first, so that a long-running app does not fill its disk."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for old in root.glob(f"{OUTPUT_PREFIX}*"):
        with contextlib.suppress(OSError):  # another request may be removing it too
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old)
    return Path(tempfile.mkdtemp(prefix=OUTPUT_PREFIX, dir=root))


def save_report(report: DetectionReport, name: str, out_dir: str | Path) -> list[Path]:
    """Write the heat-map and mask (PNG, lossless) and the scores CSV (one row per step, and the baseline's)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    heatmap, mask, scores = (out_dir / f"{name}_{suffix}" for suffix in ("heatmap.png", "mask.png", "scores.csv"))
    report.heatmap.save(heatmap)
    report.mask.save(mask)
    rows = [
        {
            "model": report.variant,
            "iterations": t,
            # Step 0 paints the complementary grids and thresholds nothing: tau applies from T = 1 on.
            "ssim_threshold": "" if report.ssim_threshold is None or t == 0 else f"{report.ssim_threshold:.4f}",
            "score": f"{score:.4f}",
            "score_threshold": f"{limit:.4f}",
            "verdict": verdict(score, limit),
        }
        for t, (score, limit) in enumerate(zip(report.step_scores, report.step_thresholds, strict=True))
    ]
    if report.baseline is not None:
        rows.append(
            {
                "model": BASELINE_VARIANT,
                "iterations": 0,
                "ssim_threshold": "",
                "score": f"{report.baseline.score:.4f}",
                "score_threshold": f"{report.baseline.threshold:.4f}",
                "verdict": verdict(report.baseline.score, report.baseline.threshold),
            }
        )
    with open(scores, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "category", *rows[0]])
        writer.writeheader()
        writer.writerows({"image": name, "category": report.category, **row} for row in rows)
    return [heatmap, mask, scores]


def synthetic_examples(folder: str | Path) -> list[Path]:
    """Three 256-px synthetic images (normal, dark spot, bright scratch) written to ``folder``."""
    root = make_synthetic_category(
        folder, "synthetic", size=SYNTHETIC_SIZE, train=0, test_good=1, test_per_defect=1, seed=0
    )
    return sorted(root.glob("test/*/*.png"), key=lambda p: (p.parent.name != NORMAL, p.parent.name))


def data_examples(data_root: str | Path | None, category: str, limit: int = 4) -> list[Path]:
    """A few test images of ``category`` under ``data_root`` (MVTec AD layout): the first normal one and the first
    of each defect type. [] without a data root or when it lacks the category (with a logged warning)."""
    if not data_root:
        return []
    try:
        samples = index_category(data_root, category).test
    except DatasetError as error:
        logger.warning("no example images for %s: %s", category, error)
        return []
    first: dict[str, Path] = {}
    for sample in samples:
        first.setdefault(sample.defect, sample.image)
    ordered = sorted(first.items(), key=lambda item: (item[0] != NORMAL, item[0]))
    return [path for _, path in ordered][:limit]


@dataclass
class BenchmarkView:
    """The benchmark tab: a message, the headline table and the figures (None when there is nothing to show)."""

    message: str
    table: pd.DataFrame | None = None
    image_auroc: go.Figure | None = None
    pixel_auroc: go.Figure | None = None
    auroc_vs_iterations: go.Figure | None = None


def benchmark_view(results: str | Path) -> BenchmarkView:
    """Figures and table from a results CSV, or a message saying why there are none."""
    try:
        table = load_results(results)
        rows = headline(table)
    except (FileNotFoundError, ValueError) as error:
        return BenchmarkView(f"**No benchmark results to show.** {error}")
    # A model of one's own trained under a shipped name but other settings would otherwise vanish without a word.
    notes = "".join(f" Note: {note}." for note in missing_rows(table))
    if rows.empty:
        return BenchmarkView(f"**No benchmark results to show.** {results} has no rows at the shipped settings.{notes}")
    has_pixel = rows["pixel_auroc"].notna().any()
    message = (
        f"From `{results}` ({len(table)} rows), each model at the shipped checkpoints' default settings "
        f"({SHIPPED_SETTINGS.describe()}); I3AD with each category's calibrated tau.{notes}"
    )
    return BenchmarkView(
        message=message,
        table=rows[list(TABLE_COLUMNS)],
        image_auroc=auroc_bars(table, "image_auroc"),
        pixel_auroc=auroc_bars(table, "pixel_auroc") if has_pixel else None,
        auroc_vs_iterations=auroc_vs_iterations(table, "image_auroc"),
    )
