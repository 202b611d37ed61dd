"""Reading any image file a user may hand us into a float tensor, with clear errors for what cannot be read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Decoding is refused above this many pixels (10000 x 10000 would need 1.2 GB as float RGB) and below this side.
MAX_PIXELS = 40_000_000
MIN_SIDE = 8
GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageReadError(ValueError):
    """An input that is not a usable image; the message says what is wrong and what to do."""


def _open(source: str | Path | bytes | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    name = "the uploaded data" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a folder, not an image file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise ImageReadError(f"{name}: not a readable image ({error})") from None
    return image


def is_greyscale(source: str | Path | bytes | Image.Image) -> bool:
    """True when the file stores one channel (checked from the header, without decoding the pixels)."""
    return _open(source).mode in GREYSCALE_MODES


def read_image(source: str | Path | bytes | Image.Image, channels: int) -> Tensor:
    """Decode an image to a [channels, H, W] float32 tensor in [0, 1].

    Conversions: EXIF orientation is applied; palette, CMYK and 1-bit images become RGB or greyscale; alpha is dropped;
    16-bit images are divided by 65535; RGB becomes greyscale (ITU-R 601 luma) for 1-channel models and greyscale is
    repeated for 3-channel ones. Raises ImageReadError for unreadable, truncated, tiny (< 8 px) or huge
    (> 40 megapixel) images.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = _open(source)
    name = getattr(image, "filename", "") or "the image"
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{name}: {width}x{height} is larger than the {MAX_PIXELS // 1_000_000} megapixels this tool accepts; "
            "downscale it first"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(f"{name}: {width}x{height} is too small to inspect (at least {MIN_SIDE} px a side)")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{name}: the file is damaged or truncated ({error})") from None
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        # A 16-bit mode is 16-bit even when the image is dark; only 32-bit "I" needs the value range to tell.
        sixteen_bit = image.mode.startswith("I;16") or array.max(initial=0) > 255
        array = array / 65535.0 if image.mode != "F" and sixteen_bit else array / 255.0
        if not np.isfinite(array).all():
            raise ImageReadError(f"{name}: the image holds NaN or infinite values")
        tensor = torch.from_numpy(np.clip(array, 0.0, 1.0)).unsqueeze(0)
        return tensor if channels == 1 else tensor.expand(3, -1, -1).clone()
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).float().div_(255.0)
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def read_mask(path: str | Path) -> Tensor:
    """A ground-truth mask file as a [1, H, W] float tensor of 0 / 1 (pixels above 127 are defect)."""
    return (read_image(path, channels=1) > 127.5 / 255.0).float()
