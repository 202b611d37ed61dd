"""Small synthetic categories in the MVTec AD layout: procedural textures with painted defects and their masks.

They let tests, CI and the notebooks' quick mode run the whole pipeline without the benchmark images.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
from PIL import Image

from i3ad.data import check_category_name
from i3ad.images import MIN_SIDE

DEFECTS = ("spot", "scratch")
# Synthetic images are for tests and demos: larger ones would only cost seconds and memory per image.
MAX_SYNTHETIC_SIZE = 2048


def _texture(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """A woven-looking texture: two crossing sinusoids with random phase, fine noise and a mild brightness change."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, size=2)
    base = 0.5 + 0.18 * np.sin(2 * np.pi * 8 * x + phase[0]) * np.sin(2 * np.pi * 8 * y + phase[1])
    base = base + rng.normal(0, 0.02, size=(size, size)) + rng.uniform(-0.05, 0.05)
    tint = np.array([0.9, 0.75, 0.55])[:channels] if channels == 3 else np.ones(1)
    return np.clip(base[..., None] * tint, 0, 1)


def _defect_mask(rng: np.random.Generator, size: int, defect: str) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    if defect == "spot":
        ry, rx = rng.uniform(0.06, 0.12, size=2) * size
        spot = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        spot[int(cy), int(cx)] = True  # on small images the ellipse can miss every pixel centre: no defect at all
        return spot
    angle = rng.uniform(0, np.pi)
    along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    across = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    return (np.abs(along) <= 0.3 * size) & (np.abs(across) <= max(1.0, 0.02 * size))


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)


def make_synthetic_category(
    data_root: str | Path,
    category: str = "synthetic",
    *,
    size: int = 64,
    channels: int = 3,
    train: int = 60,
    test_good: int = 12,
    test_per_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write one synthetic category under ``data_root/category`` and return its folder.

    Defects: "spot" (a dark ellipse) and "scratch" (a bright line), each with a mask under ground_truth/.
    """
    if not MIN_SIDE <= size <= MAX_SYNTHETIC_SIZE:
        raise ValueError(f"synthetic images must be {MIN_SIDE} to {MAX_SYNTHETIC_SIZE} px a side, got {size}")
    check_category_name(category)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"the seed must be a whole number >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    root = Path(data_root) / category
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # Writing into it would replace some of its images and mix the rest with synthetic ones.
        raise ValueError(f"{root} already exists: synthetic data goes into a new category folder; choose another")
    for i in range(train):
        _save(_texture(rng, size, channels), root / "train" / "good" / f"{i:03d}.png")
    for i in range(test_good):
        _save(_texture(rng, size, channels), root / "test" / "good" / f"{i:03d}.png")
    for defect in DEFECTS:
        for i in range(test_per_defect):
            image = _texture(rng, size, channels)
            mask = _defect_mask(rng, size, defect)
            image[mask] = 0.1 if defect == "spot" else 0.95
            _save(image, root / "test" / defect / f"{i:03d}.png")
            _save(mask[..., None].astype(np.float32), root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root
