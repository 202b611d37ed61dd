"""Untrained checkpoints for tests that need a checkpoint folder but no trained network (the Hub, bad inputs)."""

from __future__ import annotations

from pathlib import Path

import torch

from i3ad.calibration import Calibration
from i3ad.checkpoints import save_checkpoint
from i3ad.detector import AnomalyDetector
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.normal_error import NormalError
from i3ad.preprocessing import Preprocessing
from i3ad.scoring import DetectionSettings


def save_untrained_checkpoint(folder: Path, category: str, variant: str, *, size: int, channels: int = 3) -> Path:
    """``folder/category/variant``: a tiny untrained network with made-up thresholds (score threshold 0.3 at every
    T; tau 0.4) and a small constant normal error, so that every input also goes through its subtraction and a
    download must bring its file along. Variant "ae" is the autoencoder baseline, any other an inpainting U-Net."""
    torch.manual_seed(channels + len(variant))
    if variant == "ae":
        model, tau = ConvAutoencoder(channels=channels, image_size=size, base_width=4, latent_dim=8), None
    else:
        model = InpaintingUNet(channels=channels, base_width=4, width_multipliers=(1, 2), bottleneck_blocks=1)
        tau = 0.4
    calibration = Calibration(tau, 0.01 if tau else None, [0.3] * 11, 4, NormalError(torch.full((11, 1, 8, 8), 0.01)))
    settings = DetectionSettings(iterations=1, ssim_threshold=tau or 0.5, smoothing_sigma=2.0)
    detector = AnomalyDetector(model.eval(), Preprocessing(size, channels), settings, calibration, category, variant)
    save_checkpoint(detector, folder / category / variant)
    return folder / category / variant
