"""Datasets in the MVTec AD folder layout.

    CATEGORY/train/good/*.png                        normal training images
    CATEGORY/test/good/*.png                         normal test images
    CATEGORY/test/<defect>/*.png                     anomalous test images
    CATEGORY/ground_truth/<defect>/<stem>_mask.png   pixel masks (optional, for every anomalous image or none)

Any image extension PIL reads is accepted, in any size, RGB or greyscale.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from i3ad.batching import check_fits_in_memory
from i3ad.images import IMAGE_EXTENSIONS, ImageReadError, is_greyscale, read_image, read_mask, read_size
from i3ad.preprocessing import Preprocessing

NORMAL = "good"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class DatasetError(ValueError):
    """The folder does not follow the MVTec AD layout; the message names the path and what to fix."""


@dataclass(frozen=True)
class Sample:
    image: Path
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" or the defect type (the test sub-folder)
    mask: Path | None


@dataclass(frozen=True)
class CategoryIndex:
    name: str
    root: Path
    train: tuple[Path, ...]
    test: tuple[Sample, ...]

    @property
    def has_masks(self) -> bool:
        """True when every anomalous test image has a pixel mask, so pixel metrics can be computed."""
        return any(s.label for s in self.test) and all(s.mask is not None for s in self.test if s.label)

    def check_test(self) -> None:
        """DatasetError unless the category has test images (evaluation needs them)."""
        if not self.test:
            raise DatasetError(
                f"{self.root / 'test'} holds no test images; evaluation needs test/good and test/<defect>"
            )

    @property
    def greyscale(self) -> bool:
        """True when every training image is single-channel (the model is then built for 1 channel); one colour
        image among them makes the category RGB, whose greyscale images are then repeated over the channels."""
        return all(map(is_greyscale, self.train))

    @property
    def square(self) -> bool:
        """True when every training image is square (read from the file headers)."""
        return all(height == width for height, width in map(read_size, self.train))


def check_name(kind: str, name: str) -> str:
    """A category or model name that is safe as one folder name (not ``..``, no ``/``, a plain identifier);
    DatasetError naming the ``kind`` of name otherwise."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise DatasetError(f"{kind} {name!r} is not a valid name: use letters, digits, '_', '-' and '.', e.g. 'bottle'")
    return name


def check_category_name(category: str) -> str:
    """``check_name`` for a category."""
    return check_name("category", category)


def is_hidden(name: str) -> bool:
    """A file or folder name that is no data: hidden ones and __MACOSX (what unpacked archives and notebooks leave;
    macOS's "._x.png" is no image)."""
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(path: Path) -> bool:
    return not is_hidden(path.name) and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``. Images in its sub-folders and links to nothing are not data of the
    layout; a warning names them rather than leaving them out silently."""
    entries = sorted(folder.iterdir())
    nested = [
        p.name for p in entries if p.is_dir() and not is_hidden(p.name) and any(map(_is_image_name, p.rglob("*")))
    ]
    if nested:
        warnings.warn(
            f"{folder}: only the images directly in it are read, not those in {', '.join(nested)}/", stacklevel=2
        )
    broken = [p.name for p in entries if p.is_symlink() and not p.exists() and _is_image_name(p)]
    if broken:
        warnings.warn(f"{folder}: {', '.join(broken)} link(s) to nothing, left out", stacklevel=2)
    return [p for p in entries if p.is_file() and _is_image_name(p)]


def _subfolders(folder: Path) -> list[Path]:
    """The data folders in ``folder`` (none if it is missing)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def list_categories(data_root: str | Path) -> list[str]:
    """Sub-folders of ``data_root`` that have a train/good folder."""
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetError(f"data root {root} does not exist or is not a folder")
    return sorted(p.name for p in root.iterdir() if (p / "train" / NORMAL).is_dir())


def index_category(data_root: str | Path, category: str) -> CategoryIndex:
    """List the training images and labelled test samples of one category (no pixel is read).

    Raises DatasetError when the folder is missing, has no images, or masks and images do not pair up.
    """
    root = Path(data_root) / check_category_name(category)
    if not root.is_dir():
        known = list_categories(data_root) if Path(data_root).is_dir() else []
        raise DatasetError(f"category {category!r} not found under {data_root} (found: {', '.join(known) or 'none'})")
    train_dir = root / "train" / NORMAL
    if not train_dir.is_dir() or not (train := _images_in(train_dir)):
        raise DatasetError(f"{train_dir} must exist and hold the normal training images")
    test_dir, truth_dir = root / "test", root / "ground_truth"
    test: list[Sample] = []
    truth_dirs = {folder.name.lower(): folder for folder in _subfolders(truth_dir)}
    for defect_dir in _subfolders(test_dir):
        # Names are matched case-insensitively (an archive written on Windows may say Good/ or Scratch/000_MASK.PNG).
        defect = NORMAL if defect_dir.name.lower() == NORMAL else defect_dir.name
        truth = truth_dirs.get(defect.lower()) if defect != NORMAL else None
        masks = _by_stem(_images_in(truth)) if truth else {}
        paired: dict[Path, Path] = {}  # mask -> its image
        for image in _images_in(defect_dir):
            mask = None
            if truth:
                mask = masks.get(f"{image.stem}_mask".lower())
                if mask is None:
                    raise DatasetError(f"{image} has no mask: expected {truth / (image.stem + '_mask.png')}")
                if mask in paired:  # 000.png and 000.jpg: one of them would be scored against the other's mask
                    raise DatasetError(f"{paired[mask]} and {image} would share the mask {mask}: keep one of them")
                paired[mask] = image
            test.append(Sample(image, int(defect != NORMAL), defect, mask))
    with_masks = {s.defect for s in test if s.mask is not None}
    without_masks = {s.defect for s in test if s.label and s.mask is None}
    if with_masks and without_masks:
        raise DatasetError(
            f"{truth_dir} has masks for {sorted(with_masks)} but none for {sorted(without_masks)}: "
            "give every defect type masks, or none"
        )
    return CategoryIndex(category, root, tuple(train), tuple(test))


def _by_stem(masks: list[Path]) -> dict[str, Path]:
    """Masks by their lower-case stem; two whose names differ only in case or extension are an error (which one was
    meant cannot be told, and one of them would be dropped without a word)."""
    found: dict[str, Path] = {}
    for mask in masks:
        other = found.setdefault(mask.stem.lower(), mask)
        if other != mask:
            raise DatasetError(f"{other} and {mask} are masks of the same image: keep one of them")
    return found


def _naming_the_file(path: Path, work: Callable[[Path], Tensor]) -> Tensor:
    """``work(path)``; a refusal that does not name the file (an image too elongated for the model's frame, say)
    gets its path, so that the one file among hundreds can be found."""
    try:
        return work(path)
    except ImageReadError:
        raise  # it starts with the path
    except ValueError as error:
        raise DatasetError(f"{path}: {error}") from None


def load_images(paths: list[Path] | tuple[Path, ...], preprocessing: Preprocessing, workers: int = 4) -> Tensor:
    """Decode and preprocess images in parallel threads. Returns [N, C, S, S] float32 on the CPU."""
    size, channels = preprocessing.image_size, preprocessing.channels
    check_fits_in_memory(
        len(paths) * channels * size * size * 4,
        f"{len(paths)} images in {size} x {size}-px frames",
        "use fewer images, or a network trained on smaller frames (train --image-size)",
    )
    images = torch.empty(len(paths), channels, size, size)

    def load(number: int) -> None:
        images[number] = _naming_the_file(paths[number], lambda path: preprocessing(read_image(path, channels))[0])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(load, range(len(paths))))  # list(): a failed image raises here
    return images


def load_regions(paths: list[Path] | tuple[Path, ...], preprocessing: Preprocessing) -> Tensor:
    """Where each image lies in its frame (``Preprocessing.region``, from the file headers): [N, 1, S, S]."""
    size = preprocessing.image_size
    if preprocessing.geometry == "stretch":  # every image fills its frame: no header to read
        return torch.ones(len(paths), 1, size, size)
    if not paths:
        return torch.empty(0, 1, size, size)
    return torch.cat([_naming_the_file(p, lambda path: preprocessing.region(*read_size(path))) for p in paths])


def _check_mask_fits_image(sample: Sample, mask_size: tuple[int, int]) -> None:
    """A mask may have another resolution than its image, not other proportions: stretched to the image's frame it
    would no longer lie on the defect, and the pixel metrics would be wrong without a word."""
    image_height, image_width = read_size(sample.image)
    mask_height, mask_width = mask_size
    if abs(mask_height * image_width / mask_width - image_height) > 1.0:  # one pixel of rounding
        raise DatasetError(
            f"mask {sample.mask} is {mask_width} x {mask_height} px and its image {sample.image} "
            f"{image_width} x {image_height} px: a mask must have its image's size (or at least its proportions)"
        )


def load_masks(samples: tuple[Sample, ...] | list[Sample], size: int) -> Tensor:
    """Ground-truth masks at the model's resolution (the nearest pixel centre, as the images are resized pixel-centred:
    plain "nearest" shifts a mask by up to a pixel); zeros for normal images. [N, 1, S, S].

    Raises DatasetError for a mask whose proportions differ from its image's."""
    masks = torch.zeros(len(samples), 1, size, size)
    for i, sample in enumerate(samples):
        if sample.mask is not None:
            mask = read_mask(sample.mask)
            _check_mask_fits_image(sample, tuple(mask.shape[-2:]))
            masks[i] = F.interpolate(mask[None], size=(size, size), mode="nearest-exact")[0]
    return masks
