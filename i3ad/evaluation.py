"""Evaluating a trained model on a category's test set, for every iteration count and threshold in one pass."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from i3ad.batching import map_batches
from i3ad.metrics import aupro, binary_auroc, f1_max, region_labels
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.normal_error import NormalError
from i3ad.preprocessing import content_slices
from i3ad.scoring import (
    DetectionSettings,
    anomaly_map,
    detect_by_autoencoder,
    detect_by_inpainting,
    image_scores,
    inpaint_step0,
    keep_unpainted_scores,
)

METRIC_COLUMNS = ("image_auroc", "image_f1_max", "pixel_auroc", "aupro")
# The columns that name what a results row measured: one row per combination.
SETTING_COLUMNS = (
    "category",
    "model",
    "iterations",
    "ssim_threshold",
    "calibrated_threshold",
    "step0_cell_size",
    "step0_hidden_groups",
    "shrinking_masks",
    "iteration_painting",
    "last_painting_scores",
    "anomaly_measure",
    "smoothing_sigma",
    "normal_error_subtracted",
)
# Column order of every results table (``python -m i3ad evaluate`` writes exactly these).
RESULT_COLUMNS = (*SETTING_COLUMNS, "mean_mask_share", *METRIC_COLUMNS)


# Columns of the per-defect table (``python -m i3ad evaluate --by-defect``): a checkpoint's, then each type's.
_PER_DEFECT_COLUMNS = ("defect", "defect_images", "defect_pixel_share", *METRIC_COLUMNS, "flagged_share")
BY_DEFECT_COLUMNS = ("category", "model", "iterations", *_PER_DEFECT_COLUMNS)
# The row of the per-defect table that holds the normal test images (their flagged share: the false alarms).
NORMAL_ROW = "good"


class TestSet:
    """Preprocessed test images [N, C, S, S], labels [N] and ground-truth masks [N, 1, S, S] (None without masks),
    on one device, with the defect regions labelled once for AUPRO. ``defects``: each image's test sub-folder
    ("good" for normal ones), for metrics per defect type. ``regions`` [N, 1, S, S]: where each image lies in its
    frame (``Preprocessing.region``; None: the whole frame); the masks show the image stretched to S x S."""

    __test__ = False  # a data class, not a pytest test class

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Tensor | None,
        defects: list[str] | None = None,
        regions: Tensor | None = None,
    ) -> None:
        if len(images) != len(labels) or (masks is not None and len(masks) != len(images)):
            raise ValueError("images, labels and masks must have the same length")
        if defects is not None and len(defects) != len(images):
            raise ValueError("one defect name per image is needed")
        if regions is not None and (len(regions) != len(images) or regions.shape[-2:] != images.shape[-2:]):
            raise ValueError("one region of the images' size per image is needed")
        if regions is not None and bool((regions > 0.5).all()):
            regions = None  # every image fills its frame
        self.images, self.labels, self.masks, self.defects, self.regions = images, labels, masks, defects, regions
        self.mask_regions = region_labels(masks) if masks is not None else None
        # Each image's rows and columns in its frame, found once for every table row that is scored.
        self._boxes = None if regions is None else content_slices(regions)

    def subset(self, chosen: Tensor) -> TestSet:
        """The images where ``chosen`` [N] (bool) is True."""
        return TestSet(
            self.images[chosen],
            self.labels[chosen],
            None if self.masks is None else self.masks[chosen],
            None if self.defects is None else [d for d, c in zip(self.defects, chosen.tolist(), strict=True) if c],
            None if self.regions is None else self.regions[chosen],
        )

    def _stretched(self, maps: Tensor) -> Tensor:
        """Maps [N, 1, S, S] of the frames -> maps of the images alone, stretched to the masks' S x S."""
        if self._boxes is None:
            return maps
        stretched = []
        for image_map, (rows, columns) in zip(maps, self._boxes, strict=True):
            content = image_map[None, :, rows, columns].float()
            stretched.append(F.interpolate(content, size=maps.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(stretched)

    def metrics(self, maps: Tensor) -> dict[str, float]:
        """All metrics of anomaly maps [N, 1, S, S] of the frames (image score = map maximum inside the image)."""
        scores = image_scores(maps, self.regions)
        row = {
            "image_auroc": binary_auroc(scores, self.labels),
            "image_f1_max": f1_max(scores, self.labels),
            "pixel_auroc": math.nan,
            "aupro": math.nan,
        }
        if self.masks is not None:
            stretched = self._stretched(maps)
            row["pixel_auroc"] = binary_auroc(stretched, self.masks)
            row["aupro"] = aupro(stretched, self.masks, regions=self.mask_regions)
        return row


def metrics_by_defect(test: TestSet, maps: Tensor, score_threshold: float | None = None) -> pd.DataFrame:
    """One row per defect type: the metrics of that type's images against all normal ones. A pooled pixel AUROC is
    dominated by the defects that cover the most pixels; this table shows each kind on its own.

    With the score threshold of a verdict, ``flagged_share`` is the share of each type's images called anomalous, and
    a first row (``NORMAL_ROW``, no metrics) gives that share for the normal images: what a user of the verdicts sees
    as detections and as false alarms."""
    if test.defects is None:
        raise ValueError("this test set has no defect names")
    normal = test.labels == 0
    flagged = (image_scores(maps, test.regions) > score_threshold).float() if score_threshold is not None else None

    def flagged_share(chosen: Tensor) -> float:
        return flagged[chosen].mean().item() if flagged is not None else math.nan

    rows = []
    if normal.any():
        rows.append(
            {
                "defect": NORMAL_ROW,
                "defect_images": int(normal.sum()),
                "defect_pixel_share": 0.0 if test.masks is not None else math.nan,
                **dict.fromkeys(METRIC_COLUMNS, math.nan),
                "flagged_share": flagged_share(normal),
            }
        )
    for defect in sorted({d for d, label in zip(test.defects, test.labels.tolist(), strict=True) if label == 1}):
        chosen = torch.tensor([d == defect for d in test.defects], device=test.labels.device)
        subset = chosen | normal
        part = test.subset(subset)
        rows.append(
            {
                "defect": defect,
                "defect_images": int(chosen.sum()),
                "defect_pixel_share": test.masks[chosen].float().mean().item() if test.masks is not None else math.nan,
                **part.metrics(maps[subset]),
                "flagged_share": flagged_share(chosen),
            }
        )
    # A test set without images keeps the table's columns.
    return pd.DataFrame(rows, columns=list(_PER_DEFECT_COLUMNS))


def _variants(settings: DetectionSettings, measures: Iterable[str] | None, sigmas: Iterable[float] | None):
    return [
        settings.with_(anomaly_measure=m, smoothing_sigma=s)
        for m in (measures or [settings.anomaly_measure])
        for s in (sigmas or [settings.smoothing_sigma])
    ]


def sweep_inpainting(
    model: InpaintingUNet,
    test: TestSet,
    settings: DetectionSettings,
    *,
    thresholds: Iterable[float],
    max_iterations: int,
    cell_sizes: Iterable[int] | None = None,
    measures: Iterable[str] | None = None,
    sigmas: Iterable[float] | None = None,
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    holdout: Tensor | None = None,
    holdout_regions: Tensor | None = None,
) -> pd.DataFrame:
    """One row per step-0 cell size x threshold x iteration count (0..max_iterations) x anomaly measure x smoothing,
    with the raw maps and, when held-out normal images [N, C, S, S] are given (``holdout_regions``: where each lies
    in its frame, None: everywhere), once more with each setting's own normal error (their mean map,
    ``i3ad.normal_error``) subtracted.

    Step 0 is computed once for all thresholds and every iteration count comes out of the same loop: T = t is
    scored from step t of the T = max_iterations run, which is exactly what a run with T = t returns.
    """
    tables = []
    for cell_size in cell_sizes or [settings.step0_cell_size]:
        table = _sweep_thresholds(
            model,
            test,
            settings.with_(step0_cell_size=cell_size),
            thresholds=thresholds,
            max_iterations=max_iterations,
            variants=_variants(settings, measures, sigmas),
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            holdout=holdout,
            holdout_regions=holdout_regions,
        )
        tables.append(
            table.assign(
                step0_cell_size=cell_size,
                step0_hidden_groups=settings.step0_hidden_groups,
                shrinking_masks=settings.shrinking_masks,
                iteration_painting=settings.iteration_painting,
                last_painting_scores=settings.last_painting_scores,
            )
        )
    return pd.concat(tables, ignore_index=True)


class _ScoredBatch(NamedTuple):
    """One batch of a sweep: the share of hidden pixels per step ([T + 1] tensors [B]), and the anomaly maps per
    step and scoring variant ([T + 1][variants] tensors [B, 1, H, W])."""

    hidden_share: list[Tensor]
    maps: list[list[Tensor]]


def _sweep_thresholds(
    model: InpaintingUNet,
    test: TestSet,
    settings: DetectionSettings,
    *,
    thresholds: Iterable[float],
    max_iterations: int,
    variants: list[DetectionSettings],
    batch_size: int,
    autocast_dtype: torch.dtype | None,
    holdout: Tensor | None,
    holdout_regions: Tensor | None,
) -> pd.DataFrame:
    def reconstruct(images: Tensor, regions: Tensor | None) -> Tensor:
        return torch.cat(
            map_batches(
                lambda batch, region: inpaint_step0(
                    model, batch, settings, autocast_dtype=autocast_dtype, region=region
                ),
                images,
                regions,
                batch_size=batch_size,
            )
        )

    step0 = reconstruct(test.images, test.regions)
    holdout_step0 = reconstruct(holdout, holdout_regions) if holdout is not None else None
    steps = range(max_iterations + 1)
    rows = []
    for threshold in thresholds:
        run = settings.with_(iterations=max_iterations, ssim_threshold=threshold)

        def score_steps(images: Tensor, reconstruction0: Tensor, region: Tensor | None, run=run) -> _ScoredBatch:
            result = detect_by_inpainting(
                model, images, run, autocast_dtype=autocast_dtype, step0=reconstruction0, region=region
            )
            per_step = zip(result.reconstructions, result.ssim_maps, strict=True)
            # Kept in float32 (2.4 GB for magnetic_tile's 412 images, T = 0..10, two measures): half precision
            # rounded the many near-zero values of raw maps (unmasked pixels after T >= 1) to a few tied ones.
            maps = [[anomaly_map(images, r, variant, ssim) for variant in variants] for r, ssim in per_step]
            if run.last_painting_scores:  # as DetectionResult.raw_map scores them, step after step
                for t in range(1, len(maps)):
                    last = maps[t - 1]
                    maps[t] = [keep_unpainted_scores(m, result.masks[t], last[v]) for v, m in enumerate(maps[t])]
            return _ScoredBatch([m.flatten(1).mean(1) for m in result.masks], maps)

        def maps_of(batches: list[_ScoredBatch]) -> dict[tuple[int, int], Tensor]:
            """{(variant, step): the maps of every image}."""
            return {(v, t): torch.cat([b.maps[t][v] for b in batches]) for t in steps for v in range(len(variants))}

        batches = map_batches(score_steps, test.images, step0, test.regions, batch_size=batch_size)
        hidden = {t: torch.cat([b.hidden_share[t] for b in batches]) for t in steps}
        maps = maps_of(batches)
        normal_errors = {}
        if holdout is not None:
            normal_maps = maps_of(
                map_batches(score_steps, holdout, holdout_step0, holdout_regions, batch_size=batch_size)
            )
            for v in range(len(variants)):
                mean_maps = torch.stack([normal_maps[v, t].mean(dim=0) for t in steps])
                normal_errors[v] = NormalError.from_mean_maps(mean_maps)
        for (v, t), step_maps in maps.items():
            scored = [(False, step_maps)]
            if v in normal_errors:
                scored.append((True, normal_errors[v].subtract(step_maps, t)))
            for subtracted, scored_maps in scored:
                rows.append(
                    {
                        "iterations": t,
                        "ssim_threshold": threshold,
                        "anomaly_measure": variants[v].anomaly_measure,
                        "smoothing_sigma": variants[v].smoothing_sigma,
                        "normal_error_subtracted": subtracted,
                        "mean_mask_share": hidden[t].mean().item() if t > 0 else 1.0,
                        **test.metrics(scored_maps),
                    }
                )
    return pd.DataFrame(rows)


def sweep_autoencoder(
    model: ConvAutoencoder,
    test: TestSet,
    settings: DetectionSettings,
    *,
    measures: Iterable[str] | None = None,
    sigmas: Iterable[float] | None = None,
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    holdout: Tensor | None = None,
) -> pd.DataFrame:
    """The AE-SSIM baseline's rows (iterations 0, no threshold), one per anomaly measure x smoothing, raw and (with
    held-out normal images) with the normal error subtracted."""
    rows = []
    for variant in _variants(settings, measures, sigmas):

        def maps_of(images: Tensor, variant=variant) -> Tensor:
            parts = map_batches(
                lambda batch: detect_by_autoencoder(model, batch, variant, autocast_dtype=autocast_dtype).anomaly_map,
                images,
                batch_size=batch_size,
            )
            return torch.cat(parts)

        maps = maps_of(test.images)
        scored = [(False, maps)]
        if holdout is not None:
            normal_error = NormalError.from_mean_maps(maps_of(holdout).mean(dim=0, keepdim=True))
            scored.append((True, normal_error.subtract(maps, 0)))
        for subtracted, scored_maps in scored:
            rows.append(
                {
                    "iterations": 0,
                    "ssim_threshold": math.nan,
                    "step0_cell_size": math.nan,
                    "step0_hidden_groups": math.nan,
                    "shrinking_masks": math.nan,
                    "iteration_painting": math.nan,
                    "last_painting_scores": math.nan,
                    "anomaly_measure": variant.anomaly_measure,
                    "smoothing_sigma": variant.smoothing_sigma,
                    "normal_error_subtracted": subtracted,
                    "mean_mask_share": 1.0,
                    **test.metrics(scored_maps),
                }
            )
    return pd.DataFrame(rows)
