"""How an image becomes the network's input: size, channels and optional contrast normalisation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZATIONS = ("none", "standardize")
# Standardised images get this mean and standard deviation, so that +-4 std still fits into [0, 1].
_TARGET_MEAN, _TARGET_STD = 0.5, 0.125


@dataclass(frozen=True)
class Preprocessing:
    """Settings that every image goes through before the network sees it (saved with each checkpoint).

    image_size: square side the image is resized to (aspect ratio is not kept; maps are resized back for display).
    channels: 3 for RGB models, 1 for greyscale ones.
    normalization: "standardize" rescales each image to a fixed mean and contrast, which removes illumination changes
        between images and lifts low-contrast surfaces out of SSIM's stabilising constants; "none" keeps the pixels.
    """

    image_size: int = 256
    channels: int = 3
    normalization: str = "none"

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, images: Tensor) -> Tensor:
        """images: [C, H, W] or [B, C, H, W], float in [0, 1] or uint8 in 0..255 (divided by 255)
        -> [B, C, image_size, image_size] float32."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected a torch tensor, got {type(images).__name__} (use torch.from_numpy for arrays)")
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] != self.channels or batch.shape[-1] == 0 or batch.shape[-2] == 0:
            raise ValueError(
                f"expected images of shape [B, {self.channels}, H, W] with H, W > 0, got {tuple(images.shape)}"
            )
        if batch.dtype == torch.uint8:
            batch = batch.float() / 255.0
        elif not batch.is_floating_point():
            raise ValueError(f"expected float images in [0, 1] or uint8 ones, got dtype {batch.dtype}")
        batch = batch.float()
        if not torch.isfinite(batch).all():
            raise ValueError("the image tensor holds NaN or infinite values")
        if batch.shape[-2:] != (self.image_size, self.image_size):
            batch = F.interpolate(
                batch, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        batch = batch.clamp(0.0, 1.0)
        if self.normalization == "standardize":
            mean = batch.mean(dim=(1, 2, 3), keepdim=True)
            std = batch.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
            batch = ((batch - mean) / std * _TARGET_STD + _TARGET_MEAN).clamp(0.0, 1.0)
        return batch
