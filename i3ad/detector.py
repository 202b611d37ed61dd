"""A trained model bundled with everything needed to use it: preprocessing, detection settings, calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from i3ad.calibration import MAX_CALIBRATED_ITERATIONS, Calibration
from i3ad.checks import is_number, is_whole_number, shown
from i3ad.images import read_image
from i3ad.models import ConvAutoencoder, InpaintingUNet, for_device
from i3ad.normal_error import NormalError
from i3ad.preprocessing import Preprocessing
from i3ad.scoring import DetectionResult, DetectionSettings, detect_by_autoencoder, detect_by_inpainting


@dataclass
class AnomalyDetector:
    """What a checkpoint folder holds, ready to run.

    name: the variant, e.g. "i3ad", "i3ad-small" or "ae". settings: the default detection settings (the calibrated
    tau among them). info: training configuration and metrics, for the model card and the app.
    """

    model: InpaintingUNet | ConvAutoencoder
    preprocessing: Preprocessing
    settings: DetectionSettings
    calibration: Calibration
    category: str
    name: str
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A detector only detects: a BatchNorm must use its learnt statistics, neither the batch's nor updating them.
        self.model.eval()

    @property
    def kind(self) -> str:
        """ "i3ad" for the inpainting model, "ae" for the autoencoder baseline."""
        return "i3ad" if isinstance(self.model, InpaintingUNet) else "ae"

    @property
    def default_iterations(self) -> int:
        """T when none is asked for: the checkpoint's; 0 for the autoencoder, which has no iterations."""
        return self.settings.iterations if self.kind == "i3ad" else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> AnomalyDetector:
        self.model = for_device(self.model, device)
        return self

    def read(self, source: str | Path | bytes | Image.Image) -> Tensor:
        """Decode an image file for this model: [C, H, W] in [0, 1] at its own size (see ``i3ad.images.read_image``)."""
        return read_image(source, self.preprocessing.channels)

    def detect(
        self,
        images: Tensor,
        *,
        iterations: int | None = None,
        ssim_threshold: float | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> DetectionResult:
        """Detect anomalies in images [B, C, H, W] or [C, H, W] in [0, 1], of any size (fitted into the model's frame).

        iterations / ssim_threshold default to the checkpoint's calibrated settings. Maps are frames of the model's
        size (``crop`` gives the image's part) and, when the settings say so, the excess over the normal error
        calibrated with the checkpoint.
        """
        settings = self.settings
        if iterations is not None:
            settings = settings.with_(iterations=check_iterations(iterations))
        if ssim_threshold is not None:
            settings = settings.with_(ssim_threshold=ssim_threshold)
        batch = self.preprocessing(images).to(self.device)  # first: it checks the images' shape
        region = self.preprocessing.region(*images.shape[-2:], device=self.device)
        return self.run(batch, settings, autocast_dtype=autocast_dtype, region=region)

    def run(
        self,
        batch: Tensor,
        settings: DetectionSettings | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
        region: Tensor | None = None,
    ) -> DetectionResult:
        """Detection on images already preprocessed for this model and on its device, at ``settings`` (default: the
        checkpoint's); ``region``: where the images lie in their frames (``Preprocessing.region``; None: everywhere)."""
        settings = settings or self.settings
        detect = detect_by_inpainting if self.kind == "i3ad" else detect_by_autoencoder
        return detect(
            self.model,
            batch,
            settings,
            autocast_dtype=autocast_dtype,
            normal_error=self.normal_error_for(settings),
            region=region,
        )

    def normal_error_for(self, settings: DetectionSettings) -> NormalError | None:
        """The normal error that detection at ``settings`` subtracts from its maps (None: they are not subtracted)."""
        return self.calibration.normal_error if settings.subtract_normal_error else None

    def crop(self, frames: Tensor, image: Tensor) -> Tensor:
        """The part of frames [B, C, S, S] (maps, masks, reconstructions) that shows ``image`` [..., H, W]."""
        return self.preprocessing.crop(frames, *image.shape[-2:])

    def is_anomalous(self, scores: Tensor, iterations: int) -> Tensor:
        """Verdicts [B] (True = anomalous) at the score threshold calibrated for this iteration count."""
        return scores > self.calibration.score_threshold(check_iterations(iterations))


def verdict(score: float, threshold: float) -> str:
    """ "anomalous" when the score is above the calibrated score threshold, "normal" otherwise."""
    return "anomalous" if score > threshold else "normal"


def check_iterations(value: object) -> int:
    """An iteration count T asked for by a user: a whole number from 0 to MAX_CALIBRATED_ITERATIONS (the app's
    sliders send floats such as 2.0). ValueError naming the value otherwise."""
    if not is_whole_number(value):
        raise ValueError(f"iterations must be a whole number from 0 to {MAX_CALIBRATED_ITERATIONS}, got {shown(value)}")
    if not 0 <= value <= MAX_CALIBRATED_ITERATIONS:
        raise ValueError(
            f"iterations must be between 0 and {MAX_CALIBRATED_ITERATIONS} (the score thresholds are calibrated "
            f"up to there), got {shown(value)}"
        )
    return int(value)


def check_ssim_threshold(value: object) -> float | None:
    """An SSIM threshold tau asked for by a user: None (the calibrated one) or a number in SSIM's range [-1, 1]."""
    if value is None:
        return None
    if not is_number(value) or not -1.0 <= value <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"the SSIM threshold tau must be a number from -1 to 1, got {shown(value)}")
    return float(value)
