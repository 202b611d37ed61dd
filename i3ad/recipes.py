"""What the project knows per category: which augmentations keep its normal images normal, and where a public
category's images come from (for the model cards).

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


MVTEC_AD_LICENSE = "cc-by-nc-sa-4.0"


def data_source(category: str) -> str:
    """Where the normal training images of ``category`` come from, with the attribution the dataset asks for."""
    if category not in CATEGORY_AUGMENTATIONS:
        return f"The normal images of train/good of category {category!r} (a user's own data)."
    if category == "magnetic_tile":
        return (
            'Magnetic-tile defect dataset (Huang et al., "Surface defect saliency of magnetic tile", '
            "The Visual Computer, 2020), train/good."
        )
    return (
        f'MVTec AD, category {category}, train/good (Bergmann et al., "MVTec AD - A Comprehensive Real-World '
        'Dataset for Unsupervised Anomaly Detection", CVPR 2019; licence CC BY-NC-SA 4.0).'
    )


def data_license(category: str) -> str:
    """The licence tag of a model card for weights trained on ``category``: MVTec AD's for its categories, "other"
    (see the card's data section) for the magnetic tiles and a user's own data."""
    if category in CATEGORY_AUGMENTATIONS and category != "magnetic_tile":
        return MVTEC_AD_LICENSE
    return "other"
