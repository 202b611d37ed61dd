"""The error that normal images show at each position, and anomaly maps measured as the excess over it.

Even a normal image is not re-painted perfectly everywhere: object outlines, the image border and places of fine
texture keep some error at the same position in every image. The mean anomaly map of the held-out normal images after
each step t is that normal error; subtracting it (and clipping at zero) makes the map, and the image score that is its
maximum, measure what is unusual *for that position* rather than what is merely hard to paint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The templates are stored at 1/4 of the map's side (a checkpoint's template file stays around 100 kB): the maps are
# smoothed (sigma 8 by default), so little is lost that bilinear upsampling does not restore. With little or no
# smoothing the template is a blurred mean, which still marks where normal images keep their error.
STORED_SCALE = 4


class NormalError:
    """Mean anomaly maps of normal images, one per step: ``maps`` [T + 1, 1, h, w] (stored resolution)."""

    def __init__(self, maps: Tensor) -> None:
        if maps.dim() != 4 or maps.shape[1] != 1 or len(maps) == 0 or maps.shape[-1] == 0 or maps.shape[-2] == 0:
            raise ValueError(f"normal-error maps must have the shape [steps, 1, h, w], got {tuple(maps.shape)}")
        if not maps.is_floating_point():  # error maps are fractions: whole numbers are some other tensor
            raise ValueError(f"normal-error maps must hold floating-point values, got {maps.dtype}")
        if not torch.isfinite(maps).all():
            raise ValueError("normal-error maps hold NaN or infinite values")
        self.maps = maps.float()
        # The maps on each device they were used on: copying them from the host at every step would make the host
        # wait for the GPU each time.
        self._copies: dict[torch.device, Tensor] = {}

    @classmethod
    def from_mean_maps(cls, mean_maps: Tensor) -> NormalError:
        """From full-size mean maps [T + 1, 1, H, W], reduced to the stored resolution."""
        height, width = mean_maps.shape[-2:]
        size = (max(1, height // STORED_SCALE), max(1, width // STORED_SCALE))
        return cls(F.interpolate(mean_maps.float(), size=size, mode="area"))

    @property
    def steps(self) -> int:
        """How many steps have a template (T + 1); later steps use the last one."""
        return len(self.maps)

    def template(self, step: int, size: tuple[int, int], device: torch.device) -> Tensor:
        """The normal error after ``step`` steps, at ``size``: [1, 1, H, W]."""
        device = torch.device(device)
        if device not in self._copies:
            self._copies[device] = self.maps.to(device)
        stored = self._copies[device][min(step, self.steps - 1)][None]
        return F.interpolate(stored, size=size, mode="bilinear", align_corners=False)

    def subtract(self, anomaly_maps: Tensor, step: int) -> Tensor:
        """The excess of anomaly maps [B, 1, H, W] after ``step`` steps over the normal error, clipped at zero."""
        template = self.template(step, tuple(anomaly_maps.shape[-2:]), anomaly_maps.device)
        return (anomaly_maps - template.to(anomaly_maps.dtype)).clamp_min(0)
