"""Images for people: anomaly heat-maps over the input and binary masks, and the names of their files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from plotly.colors import sample_colorscale, unlabel_rgb
from torch import Tensor

# Heat-maps are coloured from 0 to this multiple of the score threshold, so the threshold sits mid-scale: normal images
# stay dark, anomalies glow.
HEATMAP_RANGE = 2.0
# The heat-map and mask are drawn at the input's size, but at most this many pixels a side: the maps themselves are at
# the model's resolution, and a full-size overlay of a 40-megapixel photo would take gigabytes.
DISPLAY_MAX_SIDE = 2048
# Output files are named after the input; longer names are cut so that "<name>_heatmap.png" fits the file system.
MAX_NAME_LENGTH = 100

_LUT = np.array([unlabel_rgb(c) for c in sample_colorscale("Inferno", np.linspace(0, 1, 256))], dtype=np.uint8)


def to_pil(image: Tensor) -> Image.Image:
    """[C, H, W] in [0, 1] (C = 1 or 3) -> 8-bit PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def colorize(anomaly_map: Tensor, vmax: float) -> np.ndarray:
    """[1, H, W] map -> [H, W, 3] uint8 Inferno colours, 0 -> black, ``vmax`` and above -> white-yellow."""
    scaled = (anomaly_map[0].detach().float().cpu() / max(vmax, 1e-6)).clamp(0, 1)
    return _LUT[(scaled * 255).round().long().numpy()]


def _resized(anomaly_map: Tensor, size: tuple[int, int], enlarge_mode: str) -> Tensor:
    """A [1, h, w] map at ``size``: a side that shrinks takes each pixel's maximum of the ones it covers (sampled or
    averaged, a small region above the threshold could vanish from a picture whose verdict is "anomalous"), a side
    that grows is interpolated with ``enlarge_mode``."""
    anomaly_map = anomaly_map[None].float()
    shrunk = (min(size[0], anomaly_map.shape[-2]), min(size[1], anomaly_map.shape[-1]))
    anomaly_map = F.adaptive_max_pool2d(anomaly_map, shrunk)
    if shrunk == tuple(size):
        return anomaly_map[0]
    align_corners = False if enlarge_mode == "bilinear" else None
    return F.interpolate(anomaly_map, size=size, mode=enlarge_mode, align_corners=align_corners)[0]


def heatmap_overlay(image: Tensor, anomaly_map: Tensor, vmax: float, alpha: float = 0.5) -> Image.Image:
    """The anomaly map in colour blended over the image; the map is resized to the image ([C, H, W], [1, h, w])."""
    size = tuple(image.shape[-2:])
    if anomaly_map.shape[-2:] != size:
        anomaly_map = _resized(anomaly_map, size, "bilinear")
    base = to_pil(image.expand(3, -1, -1) if image.shape[0] == 1 else image)
    heat = Image.fromarray(colorize(anomaly_map, vmax))
    return Image.blend(base, heat, alpha)


def binary_mask_image(anomaly_map: Tensor, threshold: float, size: tuple[int, int] | None = None) -> Image.Image:
    """White where the map exceeds ``threshold``; resized to ``size`` = (H, W) if given, keeping every white pixel
    visible."""
    mask = (anomaly_map.detach().float() > threshold).float()
    if size is not None and mask.shape[-2:] != size:
        mask = _resized(mask, size, "nearest-exact")
    return to_pil(mask)


def output_name(image_path: str | Path) -> str:
    """The stem the output files of an image are named after, cut to MAX_NAME_LENGTH bytes of UTF-8 (file systems
    count a name's bytes, and a non-Latin character takes 2-4), without splitting a character."""
    stem = Path(image_path).stem.encode("utf-8", "surrogateescape")[:MAX_NAME_LENGTH]
    return stem.decode("utf-8", "ignore") or "image"


def display_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) shrunk, keeping the aspect ratio, to at most DISPLAY_MAX_SIDE a side."""
    scale = DISPLAY_MAX_SIDE / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def display_image(image: Tensor) -> Tensor:
    """The input [C, H, W] at its ``display_size``."""
    size = display_size(*image.shape[-2:])
    return image if size == tuple(image.shape[-2:]) else F.interpolate(image[None], size=size, mode="area")[0]


def heatmap_picture(image: Tensor, anomaly_map: Tensor, threshold: float) -> Image.Image:
    """The anomaly map [1, h, w] over the input [C, H, W] at its display size, coloured from 0 to HEATMAP_RANGE
    times the score ``threshold``."""
    return heatmap_overlay(display_image(image), anomaly_map, vmax=HEATMAP_RANGE * threshold)


def mask_picture(image: Tensor, anomaly_map: Tensor, threshold: float) -> Image.Image:
    """White where the anomaly map exceeds the score ``threshold``, at the input's display size."""
    return binary_mask_image(anomaly_map, threshold, display_size(*image.shape[-2:]))
