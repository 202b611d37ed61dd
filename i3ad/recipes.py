"""Per-category defaults: which augmentations keep a category's normal images normal.

A flip of a pill mirrors its imprint and a flip of a transistor is the "misplaced" defect, so object categories get
only what is safe; textures get flips. Categories not listed (a user's own) get no augmentation unless asked for.
"""

from __future__ import annotations

CATEGORY_AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    # MVTec AD textures
    "carpet": ("hflip", "vflip", "rot90"),
    "grid": ("hflip", "vflip", "rot90"),
    "leather": ("hflip", "vflip", "rot90"),
    "tile": ("hflip", "vflip", "rot90"),
    "wood": ("hflip", "vflip"),
    # MVTec AD objects
    "bottle": ("hflip", "vflip", "rot90"),
    "hazelnut": ("hflip", "vflip", "rot90"),
    "screw": ("rot90",),
    "zipper": ("hflip", "vflip"),
    "toothbrush": ("hflip",),
    "cable": (),
    "capsule": (),
    "metal_nut": (),
    "pill": (),
    "transistor": (),
    # Magnetic-tile defect dataset: stripes run one way, so no quarter turns.
    "magnetic_tile": ("hflip", "vflip"),
}


def default_augmentations(category: str) -> tuple[str, ...]:
    return CATEGORY_AUGMENTATIONS.get(category, ())
