"""How an image becomes the network's input (a square frame): size, channels, geometry and contrast normalisation."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from i3ad.checks import is_count
from i3ad.images import MIN_SIDE

NORMALIZATIONS = ("none", "standardize")
GEOMETRIES = ("stretch", "fit")
# "fit" leaves this share of the frame's side on every side for mirrored context.
_FIT_MARGIN = 1 / 16
# The frame's side: at least twice the smallest readable image, and at most 16 times the benchmark's 256 px (a batch
# of larger frames would not fit a GPU's memory).
MIN_FRAME_SIDE, MAX_FRAME_SIDE = 2 * MIN_SIDE, 4096
# Standardised images get this mean and standard deviation, so that +-4 std still fits into [0, 1].
_TARGET_MEAN, _TARGET_STD = 0.5, 0.125
# "stretch" squeezes an image into the square frame; beyond this ratio of its long to its short side the network sees
# its texture distorted more than anything it was trained on (square images), and a user is warned.
MAX_QUIET_STRETCH = 1.5


@dataclass(frozen=True)
class Preprocessing:
    """Settings that every image goes through before the network sees it (saved with each checkpoint).

    image_size: side of the square frame the network sees.
    channels: 3 for RGB models, 1 for greyscale ones.
    normalization: "standardize" rescales each image to a fixed mean and contrast, which removes illumination changes
        between images and lifts low-contrast surfaces out of SSIM's stabilising constants; "none" keeps the pixels.
    geometry: "stretch" resizes the image to the frame (square images, e.g. MVTec AD); "fit" keeps the aspect ratio:
        the image is scaled to fit inside the frame less a margin of 1/16 of its side, and the rest is filled with
        its mirror image, so that texture keeps its proportions (never squeezed along one axis) and the image border
        has context on every side. Only the image itself (its ``content_box``) is scored.
    """

    image_size: int = 256
    channels: int = 3
    normalization: str = "none"
    geometry: str = "stretch"

    def __post_init__(self) -> None:
        if not is_count(self.image_size) or not MIN_FRAME_SIDE <= self.image_size <= MAX_FRAME_SIDE:
            raise ValueError(
                f"the image size (frame side) must lie between {MIN_FRAME_SIDE} and {MAX_FRAME_SIDE} px, "
                f"got {self.image_size!r}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def distortion_note(self, height: int, width: int) -> str | None:
        """A warning for an image of ``height`` x ``width`` that "stretch" distorts by more than MAX_QUIET_STRETCH;
        None otherwise ("fit" keeps every aspect ratio)."""
        ratio = max(height, width) / min(height, width)
        if self.geometry != "stretch" or ratio <= MAX_QUIET_STRETCH:
            return None
        return (
            f"this {width}x{height} image is stretched {ratio:.1f}-fold into the model's square frame; a model trained "
            "on square images may score it wrongly (cut it into square parts)"
        )

    def content_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Where an image of ``height`` x ``width`` lies in the frame: (top, left, height, width) in frame pixels."""
        size = self.image_size
        if self.geometry == "stretch":
            return 0, 0, size, size
        inner = size - 2 * round(size * _FIT_MARGIN)
        scale = inner / max(height, width)
        content_height, content_width = max(1, round(height * scale)), max(1, round(width * scale))
        if min(content_height, content_width) < MIN_SIDE:
            # A sliver would be all mirrored fill: nothing left to inspect, and a score near 0 would read "normal".
            raise ValueError(
                f"a {width}x{height} image is too elongated for this model: fitted into its {size}-px frame its short "
                f"side would be {min(content_height, content_width)} px (at least {MIN_SIDE}); cut it into parts"
            )
        return (size - content_height) // 2, (size - content_width) // 2, content_height, content_width

    def region(self, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
        """[1, 1, S, S]: 1 where an image of ``height`` x ``width`` lies in the frame, 0 on the mirrored fill."""
        top, left, content_height, content_width = self.content_box(height, width)
        region = torch.zeros(1, 1, self.image_size, self.image_size, device=device)
        region[..., top : top + content_height, left : left + content_width] = 1.0
        return region

    def crop(self, frames: Tensor, height: int, width: int) -> Tensor:
        """The part of frames [B, C, S, S] (images, maps, masks) that shows an image of ``height`` x ``width``."""
        top, left, content_height, content_width = self.content_box(height, width)
        return frames[..., top : top + content_height, left : left + content_width]

    def __call__(self, images: Tensor) -> Tensor:
        """images: [C, H, W] or [B, C, H, W], float in [0, 1] or uint8 in 0..255 (divided by 255)
        -> frames [B, C, image_size, image_size] float32."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected a torch tensor, got {type(images).__name__} (use torch.from_numpy for arrays)")
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] != self.channels or batch.shape[-1] == 0 or batch.shape[-2] == 0:
            raise ValueError(
                f"expected images of shape [B, {self.channels}, H, W] with H, W > 0, got {tuple(images.shape)}"
            )
        if min(batch.shape[-2:]) < MIN_SIDE:  # as read() refuses files: too few pixels to inspect
            raise ValueError(f"images must be at least {MIN_SIDE} px a side, got {tuple(batch.shape[-2:])}")
        if batch.dtype == torch.uint8:
            batch = batch.float() / 255.0
        elif not batch.is_floating_point():
            raise ValueError(f"expected float images in [0, 1] or uint8 ones, got dtype {batch.dtype}")
        batch = batch.float()
        if not torch.isfinite(batch).all():
            raise ValueError("the image tensor holds NaN or infinite values")
        low, high = (v.item() for v in torch.aminmax(batch)) if batch.numel() else (0.0, 1.0)
        if low < 0 or high > 1:
            # Most often 0-255 values in a float tensor: the network would see a washed-out image and score it wrong.
            raise ValueError(
                f"float images must lie in [0, 1], got values from {low:g} to {high:g} "
                "(divide 8-bit values by 255, or pass a uint8 tensor)"
            )
        top, left, height, width = self.content_box(*batch.shape[-2:])
        if batch.shape[-2:] != (height, width):
            batch = F.interpolate(batch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        batch = batch.clamp(0.0, 1.0)
        if self.normalization == "standardize":
            mean = batch.mean(dim=(1, 2, 3), keepdim=True)
            std = batch.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
            batch = ((batch - mean) / std * _TARGET_STD + _TARGET_MEAN).clamp(0.0, 1.0)
        bottom, right = self.image_size - top - height, self.image_size - left - width
        return _mirror_pad(batch, top, bottom, left, right)


def _mirror_pad(images: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Pad [B, C, H, W] (at least MIN_SIDE a side) by reflection; a pad wider than the image reflects the padded image
    again."""
    while top or bottom or left or right:
        height, width = images.shape[-2:]
        # Reflection needs a pad smaller than the side.
        step = [min(pad, side - 1) for pad, side in ((left, width), (right, width), (top, height), (bottom, height))]
        images = F.pad(images, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return images


def content_slices(regions: Tensor) -> list[tuple[slice, slice]]:
    """The rows and columns where each image lies in its frame, for ``regions`` [B, 1, S, S] (``Preprocessing.region``:
    one rectangle each), as slices; read off the regions' device in one transfer."""
    inside = regions[:, 0] > 0.5
    size = inside.shape[-1]
    ends = []
    for lines in (inside.any(dim=2), inside.any(dim=1)):  # the rows, then the columns, that hold the image
        ends += [lines.int().argmax(dim=1), size - lines.flip(-1).int().argmax(dim=1)]
    return [(slice(top, bottom), slice(left, right)) for top, bottom, left, right in torch.stack(ends, 1).tolist()]


def pixel_sources(regions: Tensor) -> Tensor | None:
    """Which image pixel each frame pixel shows, for frames whose ``regions`` [B, 1, S, S] say where their images lie:
    [B, 1, S, S] float, the frame index (row * S + column) of that pixel inside the image, and -(index) - 1 on the
    mirrored fill, which shows copies of the image's pixels. None when every image fills its frame (no copies).

    Float, so that training's flips and turns move it with the images; exact up to the largest frame (4096 px: 2**24
    indices). ``masks.hide_mirror_copies`` uses it to hide a pixel's copies with the pixel itself."""
    inside = regions > 0.5
    if bool(inside.all()):
        return None
    size = regions.shape[-1]
    if size > MAX_FRAME_SIDE:
        raise ValueError(f"frames of {size} px are larger than the largest supported side {MAX_FRAME_SIDE}")
    # The fill is separable: frame pixel (r, c) shows image pixel (row_of[r], column_of[c]). The numbers are worked
    # out once per image extent and then combined for the whole batch on its device (one transfer, no per-image work).
    boxes = content_slices(regions)
    row_of = torch.stack([_mirrored_numbers(rows.start, rows.stop, size) for rows, _ in boxes]).to(regions.device)
    column_of = torch.stack([_mirrored_numbers(cols.start, cols.stop, size) for _, cols in boxes]).to(regions.device)
    index = (row_of[:, :, None] * size + column_of[:, None, :])[:, None]
    return torch.where(inside, index, -index - 1)


@functools.lru_cache(maxsize=512)  # at most 4096 floats each; one frame size has a few hundred centred extents
def _mirrored_numbers(start: int, stop: int, size: int) -> Tensor:
    """[size] float: the number of the image line (start..stop - 1) that each frame line shows, found by padding the
    image's own line numbers exactly as _mirror_pad pads its pixels. Not to be changed in place (it is cached)."""
    numbers = torch.arange(start, stop).float().view(1, 1, 1, -1)
    return _mirror_pad(numbers, 0, 0, start, size - stop).view(-1)
