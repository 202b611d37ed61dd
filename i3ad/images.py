"""Reading any image file a user may hand us into a float tensor, with clear errors for what cannot be read."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# Decoding is refused above this many pixels (10000 x 10000 would need 1.2 GB as float RGB) and below this side.
MAX_PIXELS = 40_000_000
MIN_SIDE = 8
GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# 32-bit integer images, and float images of whole numbers above 1, carry no bit depth: their values are divided by
# the first of these that holds their maximum (float images in [0, 1] are intensities already).
_VALUE_RANGES = (255.0, 65535.0)


class ImageReadError(ValueError):
    """An input that is not a usable image; the message says what is wrong and what to do."""


def _name(source: str | Path | bytes | Image.Image) -> str:
    if isinstance(source, bytes):
        return "the uploaded data"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "the image"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    # An open file names itself; anything else (an array, say) would fill the message with its contents.
    return str(getattr(source, "name", "")) or f"the {type(source).__name__} given"


def _reason(error: Exception) -> str:
    """What went wrong, without the file name (which an ImageReadError message starts with, and which the app
    replaces by the name the user gave the file)."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _open(source: str | Path | bytes | Image.Image) -> Image.Image:
    """The image with its header read (pixels are decoded later, by ``load``)."""
    if isinstance(source, Image.Image):
        return source
    name = _name(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a folder, not an image file") from None
    except Image.DecompressionBombError as error:
        # Pillow's own limit (far above MAX_PIXELS) is checked on opening, before ours.
        raise ImageReadError(
            f"{name}: larger than the {MAX_PIXELS // 1_000_000} megapixels this tool accepts ({error}); "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:  # its message only repeats the file name, escaped
        raise ImageReadError(f"{name}: not a readable image (not in a format Pillow knows)") from None
    except Exception as error:  # a damaged header: OSError, ValueError, SyntaxError, struct.error...
        raise ImageReadError(f"{name}: not a readable image ({_reason(error)})") from None
    return image


def is_greyscale(source: str | Path | bytes | Image.Image) -> bool:
    """True when the file stores one channel (checked from the header, without decoding the pixels)."""
    image = _open(source)
    try:
        return image.mode in GREYSCALE_MODES
    finally:
        if image is not source:
            image.close()


# How to turn the stored pixels upright for each EXIF orientation (1: already upright).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1 when there is none or the EXIF block is too damaged to read: then the
    pixels are used as stored, by ``read_image`` and ``read_size`` alike."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # Pillow's EXIF parser raises struct.error, SyntaxError, TypeError... on damaged blocks
        return 1


def read_size(source: str | Path | bytes | Image.Image) -> tuple[int, int]:
    """(height, width) of the image as ``read_image`` returns it (EXIF orientation applied); ImageReadError for what
    ``read_image`` refuses by its size. Pixels are decoded where the orientation needs them: a TIFF's (Pillow applies
    it itself while loading some of them), and a PNG's without EXIF before its pixel data (Pillow decodes the pixels
    to look for it after them)."""
    image = _open(source)
    name = _name(source)
    try:
        _check_size(image, name)
        if image.format == "TIFF":
            _load(image, name)
        width, height = image.size
        if _orientation(image) in (5, 6, 7, 8):  # a quarter turn swaps the sides
            width, height = height, width
        return height, width
    finally:
        if image is not source:
            image.close()


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{name}: {width}x{height} is larger than the {MAX_PIXELS // 1_000_000} megapixels this tool accepts; "
            "downscale it first"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(f"{name}: {width}x{height} is too small to inspect (at least {MIN_SIDE} px a side)")


def _wide_values(image: Image.Image, name: str) -> np.ndarray:
    """Intensities in [0, 1] of a 16-bit, 32-bit integer or float image, as float32 [H, W]."""
    array = np.asarray(image, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ImageReadError(f"{name}: the image holds NaN or infinite values")
    low, peak = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if low < 0:
        raise ImageReadError(
            f"{name}: {image.mode} image with negative values (down to {low:g}); intensities start at 0"
        )
    if image.mode.startswith("I;16"):
        scale = 65535.0  # 16-bit even when the image is dark
    elif image.mode == "F" and peak <= 1.0:
        scale = 1.0
    elif image.mode == "F" and not np.array_equal(array, np.round(array)):
        # Whole numbers may be 8- or 16-bit values stored as floats; fractions above 1 have no scale to guess.
        raise ImageReadError(f"{name}: float image with values up to {peak:g}; float intensities must lie in [0, 1]")
    else:
        scale = next((limit for limit in _VALUE_RANGES if peak <= limit), None)
        if scale is None:
            raise ImageReadError(
                f"{name}: {image.mode} image with values up to {peak:g}, beyond 16 bits; "
                "save it as an 8- or 16-bit image"
            )
    return array / scale


def _load(image: Image.Image, name: str) -> None:
    """Decode the pixels; ImageReadError for a damaged or truncated file."""
    try:
        image.load()
    except Exception as error:  # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error, TypeError...
        raise ImageReadError(f"{name}: the file is damaged or truncated ({_reason(error)})") from None


def _pixels(image: Image.Image, channels: int, name: str) -> np.ndarray:
    """The decoded pixels: float32 [H, W] in [0, 1] for 16-bit, 32-bit and float images, else uint8 [H, W] (1
    channel) or [H, W, 3]."""
    _load(image, name)
    # Read after loading: Pillow has then applied (and dropped) the orientation of the TIFFs it turns itself.
    upright = _UPRIGHT.get(_orientation(image))
    if upright is not None:
        image = image.transpose(upright)
    if image.mode.startswith("I") or image.mode == "F":
        return _wide_values(image, name)
    try:
        image = image.convert("L" if channels == 1 else "RGB")
    except ValueError as error:  # e.g. LAB, which Pillow cannot turn into greyscale
        raise ImageReadError(
            f"{name}: colour mode {image.mode} cannot be converted ({error}); save it as RGB or greyscale"
        ) from None
    return np.array(image, dtype=np.uint8)  # a writable copy, which torch can share


def read_image(source: str | Path | bytes | Image.Image, channels: int) -> Tensor:
    """Decode an image to a [channels, H, W] float32 tensor in [0, 1].

    Conversions: EXIF orientation is applied; the first frame of an animation or multi-page file is used; palette,
    CMYK and 1-bit images become RGB or greyscale; alpha is dropped; 16-bit greyscale images are divided by 65535
    (Pillow decodes 16-bit colour images to 8 bits per channel); float images in [0, 1] are kept; 32-bit integer
    images and float images of whole numbers are divided by 255, or by 65535 when their values exceed 255; RGB
    becomes greyscale (ITU-R 601 luma) for 1-channel models and greyscale is repeated for 3-channel ones. Raises
    ImageReadError for unreadable, truncated, tiny (< 8 px) or huge (> 40 megapixel) images (the size checked from
    the header, before any pixel is decoded), and for values that have no such scale: negative, NaN or infinite,
    fractions above 1, or beyond 65535.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = _open(source)
    name = _name(source)
    try:
        _check_size(image, name)
        pixels = _pixels(image, channels, name)
    finally:
        if image is not source:  # release the file (a multi-frame file stays open until closed)
            image.close()
    if pixels.dtype == np.float32:
        tensor = torch.from_numpy(pixels).unsqueeze(0)
        return tensor if channels == 1 else tensor.expand(3, -1, -1).clone()
    tensor = torch.from_numpy(pixels)
    # Channels first while still 8-bit: one float copy instead of two.
    tensor = tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()
    return tensor.float().div_(255.0)


def read_mask(path: str | Path) -> Tensor:
    """A ground-truth mask file as a [1, H, W] float tensor of 0 / 1: pixels above half the range are defect, or, in a
    mask whose values all stay below that (labels stored as 0 / 1 rather than 0 / 255), every non-zero pixel."""
    values = read_image(path, channels=1)
    half = 127.5 / 255.0
    # Without this a 0 / 1 mask would read as all background, and its pixel metrics would silently go missing.
    return (values > (half if values.max() > half else 0.0)).float()
