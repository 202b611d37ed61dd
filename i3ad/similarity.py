"""Per-pixel similarity maps between an image and its reconstruction.

pytorch-msssim computes SSIM with a *valid* convolution, so its map is smaller than the image. The detector needs a
map of the image's own size (it becomes the next inpainting mask), so the map is computed here with the same Gaussian
window and constants but reflect padding; its mean over the valid region equals pytorch-msssim's SSIM (tested).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_K1, SSIM_K2 = 0.01, 0.03


def gaussian_window_size(sigma: float) -> int:
    """The odd window that holds a Gaussian's +-3 sigma."""
    return 2 * math.ceil(3.0 * sigma) + 1


def gaussian_kernel_1d(sigma: float, size: int | None = None, device: torch.device | None = None) -> Tensor:
    """A normalised 1-D Gaussian of odd ``size`` (default: ``gaussian_window_size``)."""
    if size is None:
        size = gaussian_window_size(sigma)
    coords = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    if 2.0 * sigma**2 < torch.finfo(torch.float32).tiny:
        # A sigma so small that float32 cannot hold 2 sigma^2 (below ~1e-19) made the centre 0 / 0 = NaN; its limit
        # is no blur at all.
        return (coords == 0).float()
    kernel = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(images: Tensor, sigma: float, size: int | None = None) -> Tensor:
    """Separable Gaussian blur with reflect padding; keeps the spatial size.

    images: [B, C, H, W] float. sigma <= 0 returns the input unchanged.
    """
    if sigma <= 0:
        return images
    # Only the middle of a window wider than the image is ever used (the padding below is clamped to the image), so
    # it is not built: a huge sigma costs no memory.
    widest = 2 * max(images.shape[-2:]) - 1
    size = min(gaussian_window_size(sigma) if size is None else size, widest)
    # Reflect padding needs pad < size; clamp for tiny images (replicate beyond that is not worth the code).
    pad_h, pad_w = min(size // 2, images.shape[2] - 1), min(size // 2, images.shape[3] - 1)
    channels = images.shape[1]
    row, col = _separable_weights(sigma, size, pad_h, pad_w, channels, images.device, images.dtype)
    out = F.pad(images, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w > 0 else images
    out = F.conv2d(out, row, groups=channels)
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect") if pad_h > 0 else out
    return F.conv2d(out, col, groups=channels)


@functools.lru_cache(maxsize=64)
def _separable_weights(
    sigma: float, size: int, pad_h: int, pad_w: int, channels: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The row and column weights of ``gaussian_blur``, each cut to its padding and normalised, built once per shape:
    on a GPU at batch 1, building them took more kernel launches than the blur itself."""
    with torch.inference_mode(False):  # usable outside inference mode too, e.g. by a blur that autograd records
        kernel = gaussian_kernel_1d(sigma, size, device).to(dtype)
        pad = size // 2
        row = kernel[pad - pad_w : pad + pad_w + 1].view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        col = kernel[pad - pad_h : pad + pad_h + 1].view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        return row / row.sum(dim=-1, keepdim=True), col / col.sum(dim=-2, keepdim=True)


def ssim_map(
    images: Tensor, reconstructions: Tensor, *, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> Tensor:
    """Per-pixel SSIM averaged over colour channels.

    images, reconstructions: [B, C, H, W] in [0, data_range]. Returns [B, 1, H, W]; 1 means identical.
    """
    if images.shape != reconstructions.shape:
        raise ValueError(f"shapes differ: {tuple(images.shape)} vs {tuple(reconstructions.shape)}")
    x, y = images.float(), reconstructions.float()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    # One blur call for all five moments: fewer kernel launches on the GPU.
    moments = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), sigma, window_size)
    mu_x, mu_y, xx, yy, xy = moments.chunk(5, dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * structure).mean(dim=1, keepdim=True)


def gradient_magnitude_similarity(
    images: Tensor, reconstructions: Tensor, *, scales: int = 4, constant: float = 0.0026
) -> Tensor:
    """Multi-scale gradient magnitude similarity (MSGMS, as used by RIAD): mean over ``scales`` halvings.

    ``constant`` stabilises flat regions; 0.0026 is the GMSD paper's c = 170 for 8-bit values, rescaled to [0, 1]
    (170 / 255**2).

    Returns [B, 1, H, W]; 1 means identical gradients.
    """
    x = images.float().mean(dim=1, keepdim=True)
    y = reconstructions.float().mean(dim=1, keepdim=True)
    height, width = x.shape[-2:]
    # Sides padded to a multiple of the coarsest cell, so that every halving is exact and each scale's map, scaled
    # back by its power of two, lands where it was measured (a side such as 97 otherwise shifted it by ~2 px).
    multiple = 2 ** (scales - 1)
    x, y = (F.pad(t, (0, -width % multiple, 0, -height % multiple), mode="replicate") for t in (x, y))
    size = x.shape[-2:]
    # Prewitt kernels, as in the GMS paper (Xue et al. 2014), built on the device: copying a constant from the host
    # would make the host wait for the GPU at every call.
    prewitt = (1.0 - torch.arange(3.0, device=x.device)).expand(3, 3) / 3.0  # rows of [1, 0, -1] / 3
    kernels = torch.stack([prewitt, prewitt.t()]).unsqueeze(1)
    total = torch.zeros_like(x)
    for scale in range(scales):
        if scale > 0:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        gx = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels).square().sum(1, keepdim=True).sqrt()
        gy = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernels).square().sum(1, keepdim=True).sqrt()
        gms = (2 * gx * gy + constant) / (gx**2 + gy**2 + constant)
        total = total + F.interpolate(gms, size=size, mode="bilinear", align_corners=False)
    return total[..., :height, :width] / scales


def dilate(masks: Tensor, radius: int) -> Tensor:
    """Binary dilation of [B, 1, H, W] masks by a (2 radius + 1) square."""
    if radius <= 0:
        return masks
    return F.max_pool2d(masks, kernel_size=2 * radius + 1, stride=1, padding=radius)
