"""The pictures shown to people: a heat-map and a mask at the input's size must show what the verdict is about."""

from __future__ import annotations

import numpy as np
import torch

from i3ad.visualize import binary_mask_image, colorize, heatmap_overlay


def _blob(size: int = 256, peak: float = 0.30, sigma: float = 8.0) -> torch.Tensor:
    """A [1, size, size] map: one small Gaussian bump, off the pixel grid of any integer downscale."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return (peak * torch.exp(-((x - 101.3) ** 2 + (y - 57.7) ** 2) / (2 * sigma**2)))[None]


def test_a_region_above_the_threshold_stays_in_the_mask_of_a_smaller_image():
    anomaly_map = _blob()
    assert (anomaly_map > 0.299).sum() >= 1  # the verdict sees it
    for side in (200, 128, 100, 64, 17):
        mask = np.asarray(binary_mask_image(anomaly_map, 0.299, (side, side)))
        assert mask.max() == 255, side  # sampled instead of pooled, it vanished at 128, 100 and 64 px


def test_a_region_above_the_threshold_stays_in_the_mask_of_an_image_smaller_one_way_and_larger_the_other():
    anomaly_map = torch.zeros(1, 256, 256)
    anomaly_map[0, 101, 57] = 0.3  # a single pixel above the threshold
    for size in [(400, 200), (200, 400), (300, 17)]:  # e.g. a 400 x 200 upload to a 256-px model
        mask = np.asarray(binary_mask_image(anomaly_map, 0.299, size))
        assert mask.max() == 255, size  # sampled when only one side shrank, it vanished


def test_an_enlarged_mask_keeps_its_shape():
    anomaly_map = torch.zeros(1, 4, 4)
    anomaly_map[0, 1, 2] = 1.0
    mask = np.asarray(binary_mask_image(anomaly_map, 0.5, (8, 8)))
    assert (mask == 255).sum() == 4 and mask[2:4, 4:6].min() == 255


def test_a_shrunk_heatmap_keeps_the_peak_colour():
    anomaly_map = _blob(sigma=1.0)  # a pixel-sized defect, which sampling or averaging would dim
    vmax = 0.6
    image = torch.zeros(3, 64, 64)
    overlay = np.asarray(heatmap_overlay(image, anomaly_map, vmax, alpha=1.0))
    peak_colour = colorize(anomaly_map.max().reshape(1, 1, 1), vmax)[0, 0]
    assert (overlay.reshape(-1, 3) == peak_colour).all(axis=1).any()
