"""Per-category thresholds chosen on normal images held out from training (never on test images)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from i3ad.batching import map_batches
from i3ad.checks import is_count, is_finite_number, shown
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.normal_error import NormalError
from i3ad.scoring import (
    DetectionSettings,
    detect_by_autoencoder,
    detect_by_inpainting,
    image_scores,
    inpaint_step0,
    ssim_map,
)

# With this share of held-out normal pixels below tau at step 0, normal images get almost empty masks.
DEFAULT_SSIM_QUANTILE = 0.01
# Score thresholds are calibrated for every iteration count up to this one (the app's slider range).
MAX_CALIBRATED_ITERATIONS = 10
# Subtracting the normal error scores each held-out image against the mean of the others: it needs two at least.
MIN_HOLDOUT_WITH_NORMAL_ERROR = 2


@dataclass(frozen=True)
class Calibration:
    """Thresholds of one checkpoint.

    ssim_threshold: tau calibrated as the ``ssim_quantile`` of held-out normal pixels' step-0 SSIM (None for the
        autoencoder). score_thresholds[t]: the highest held-out normal image score after t iterations at that tau;
        images scoring above it are called anomalous.
    normal_error: the held-out normal images' mean map per step (None when the settings do not subtract it); it is
        saved in its own file, not in ``to_dict``.
    """

    ssim_threshold: float | None
    ssim_quantile: float | None
    score_thresholds: list[float]
    holdout_images: int
    normal_error: NormalError | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        thresholds = self.score_thresholds
        if not isinstance(thresholds, (list, tuple)) or not thresholds or not all(map(is_finite_number, thresholds)):
            raise ValueError(f"score_thresholds must be a non-empty list of finite numbers, got {thresholds!r}")
        if self.ssim_threshold is not None and not is_finite_number(self.ssim_threshold):
            raise ValueError(f"ssim_threshold must be a finite number or None, got {self.ssim_threshold!r}")
        check_ssim_quantile(self.ssim_quantile)
        if not is_count(self.holdout_images):
            raise ValueError(f"holdout_images must be a whole number of at least 1, got {shown(self.holdout_images)}")

    @property
    def tau_text(self) -> str:
        """tau for people: 4 decimals, or "n/a" for the autoencoder, which has none."""
        return "n/a" if self.ssim_threshold is None else f"{self.ssim_threshold:.4f}"

    def score_threshold(self, iterations: int) -> float:
        return self.score_thresholds[min(iterations, len(self.score_thresholds) - 1)]

    def to_dict(self) -> dict:
        return {
            "ssim_threshold": self.ssim_threshold,
            "ssim_quantile": self.ssim_quantile,
            "score_thresholds": list(self.score_thresholds),
            "holdout_images": self.holdout_images,
        }


def check_ssim_quantile(value: float | None) -> None:
    """tau's quantile must lie strictly between 0 and 1 (None: keep a given tau). ValueError otherwise."""
    if value is not None and not (is_finite_number(value) and 0 < value < 1):
        raise ValueError(f"the SSIM quantile for tau must lie strictly between 0 and 1, got {value!r}")


def quantile(values: Tensor, q: float) -> float:
    """The q-quantile (nearest rank) of any number of values (torch.quantile refuses more than 16 M)."""
    flat = values.flatten().float()
    index = min(flat.numel() - 1, max(0, round(q * (flat.numel() - 1))))
    return flat.kthvalue(index + 1).values.item()


def calibrate_inpainting(
    model: InpaintingUNet,
    holdout: Tensor,
    settings: DetectionSettings,
    *,
    ssim_quantile: float | None = DEFAULT_SSIM_QUANTILE,
    batch_size: int = 16,
    regions: Tensor | None = None,
) -> Calibration:
    """Choose tau (unless ``ssim_quantile`` is None: then settings.ssim_threshold is kept), the normal error (if the
    settings subtract it) and the score thresholds on preprocessed held-out normal images [N, C, S, S], ``batch_size``
    images at a time; ``regions`` [N, 1, S, S]: where each image lies in its frame (None: everywhere). In float32,
    as every verdict is given."""
    check_ssim_quantile(ssim_quantile)
    _check_holdout(holdout)
    tau = settings.ssim_threshold
    if ssim_quantile is not None:
        step0_ssim = map_batches(
            lambda b, r: ssim_map(b, inpaint_step0(model, b, settings, region=r)),
            holdout,
            regions,
            batch_size=batch_size,
        )
        pixels = torch.cat(step0_ssim)
        if regions is not None:
            pixels = pixels[regions.to(pixels.device) > 0.5]  # the images only, not the mirrored fill
        tau = quantile(pixels, ssim_quantile)
    run = settings.with_(ssim_threshold=tau, iterations=MAX_CALIBRATED_ITERATIONS)
    normal_error, step_scores = _normal_error_and_scores(
        lambda b, r: detect_by_inpainting(model, b, run, region=r).anomaly_maps,
        holdout,
        subtract=settings.subtract_normal_error,
        batch_size=batch_size,
        regions=regions,
    )
    return Calibration(tau, ssim_quantile, step_scores.amax(dim=1).tolist(), len(holdout), normal_error)


def calibrate_autoencoder(
    model: ConvAutoencoder,
    holdout: Tensor,
    settings: DetectionSettings,
    *,
    batch_size: int = 16,
    regions: Tensor | None = None,
) -> Calibration:
    """The autoencoder's normal error (if the settings subtract it) and score threshold on held-out normal images
    (``regions``: as for ``calibrate_inpainting``)."""
    _check_holdout(holdout)
    normal_error, step_scores = _normal_error_and_scores(
        lambda b, _regions: detect_by_autoencoder(model, b, settings).anomaly_maps,
        holdout,
        subtract=settings.subtract_normal_error,
        batch_size=batch_size,
        regions=regions,
    )
    # No iterations: one score threshold, the highest held-out normal score.
    return Calibration(None, None, [step_scores[0].max().item()], len(holdout), normal_error)


def _check_holdout(holdout: Tensor) -> None:
    if len(holdout) == 0:
        raise ValueError("calibration needs held-out normal images; use a holdout_fraction > 0")


def _normal_error_and_scores(
    step_maps: Callable[[Tensor, Tensor | None], list[Tensor]],
    holdout: Tensor,
    *,
    subtract: bool,
    batch_size: int,
    regions: Tensor | None,
) -> tuple[NormalError | None, Tensor]:
    """From one detection pass over the held-out images (``step_maps``: a batch's raw maps per step, from the batch and
    its regions): their normal error (None unless ``subtract``) and their image scores per step [steps, N], on the
    maps as they will be scored.

    With the normal error subtracted, each image is scored against the mean of the *other* held-out images: against
    a mean it is part of, an image partly subtracts itself, scores low, and the threshold then flags normal images
    (toothbrush's 5 held-out images put 9 of its 10 normal test images above it)."""
    batches = map_batches(lambda b, r: torch.stack(step_maps(b, r)), holdout, regions, batch_size=batch_size)
    maps = torch.cat(batches, dim=1)  # [steps, N, 1, H, W]
    if not subtract:
        return None, torch.stack([image_scores(step, regions) for step in maps])
    count = maps.shape[1]
    if count < MIN_HOLDOUT_WITH_NORMAL_ERROR:
        raise ValueError(
            f"subtracting the normal error needs at least {MIN_HOLDOUT_WITH_NORMAL_ERROR} held-out normal images "
            "(each is scored against the others); use more training images or a larger holdout_fraction"
        )
    total = maps.sum(dim=1)
    scores = torch.empty(len(maps), count, device=maps.device)
    for i in range(count):
        others = NormalError.from_mean_maps((total - maps[:, i]) / (count - 1))
        region = None if regions is None else regions[i : i + 1]
        for t, step in enumerate(maps[:, i : i + 1]):
            scores[t, i] = image_scores(others.subtract(step, t), region)[0]
    return NormalError.from_mean_maps(total / count), scores
