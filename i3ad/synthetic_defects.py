"""Synthetic defects painted into training images, so that the inpainting network learns to paint normal texture even
where what it sees holds part of a defect.

An inpainting network trained on normal images only continues whatever surrounds a hole into it: at detection a thin
crack that crosses step 0's 8-px cells is drawn in again and scores as normal (and, presumably, a broad dark patch is
carried into the cells inside it). Training on images with such defects painted in, against the clean image
as the target of the hidden pixels, teaches the network to paint the normal surface instead. The visible pixels pass
through painting unchanged, so they are not taught anything: their target is the corrupted input itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from i3ad.masks import blob_masks, stroke_masks
from i3ad.similarity import gaussian_blur

# Blob defects cover 1-30 % of the image: scattered specks, spots, or broad patches like uneven shading.
BLOB_COVERAGE = (0.01, 0.3)
# Edge softness (Gaussian sigma, px) of a defect: a sharp rim or a gradual one.
EDGE_SIGMAS = (0.5, 3.0)
# Opacity of a defect: faint ones are the hard ones at detection.
OPACITY = (0.3, 1.0)
# Size of a brightness change (added to pixels in [0, 1]); colour images also get a per-channel tint up to TINT.
BRIGHTNESS = (0.1, 0.5)
TINT = 0.2
# What a defect looks like: foreign texture (another image, moved), a brightness (and tint) shift, or lost texture (the
# image blurred, like a worn or smoothed patch of a textured surface, whose inside looks like a smooth normal surface).
DEFECT_LOOKS = ("foreign", "shift", "blur")
DEFAULT_LOOKS = ("foreign", "shift")
# Blur of a lost-texture defect (Gaussian sigma, px, one per batch).
BLUR_SIGMAS = (1.5, 6.0)


def check_defect_share(share: float) -> None:
    """Refuse a share of corrupted training images outside [0, 1]."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of training images given synthetic defects must lie in [0, 1], got {share}")


def check_defect_looks(looks: tuple[str, ...]) -> None:
    """Refuse an empty, repeated or unknown choice of defect looks."""
    unknown = sorted(set(looks) - set(DEFECT_LOOKS))
    if not looks or unknown or len(set(looks)) != len(looks):
        raise ValueError(f"defect looks must be distinct names from {DEFECT_LOOKS}, got {tuple(looks)}")


def canonical_looks(looks: tuple[str, ...]) -> tuple[str, ...]:
    """``looks`` in the order of ``DEFECT_LOOKS``, the order in which images are given them (so the order a user
    names them in changes nothing)."""
    return tuple(look for look in DEFECT_LOOKS if look in looks)


def _uniform(low: float, high: float, shape: tuple[int, ...], generator, device) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _defect_regions(batch: int, size: tuple[int, int], generator, device) -> Tensor:
    """Per sample either thin strokes (cracks, scratches) or smooth blobs (spots, patches), as soft alpha maps in
    [0, 1] with a random edge softness and opacity. Returns [batch, 1, H, W]."""
    coverage = _uniform(*BLOB_COVERAGE, (batch,), generator, device)
    strokes = torch.rand(batch, generator=generator, device=device) < 0.5
    regions = torch.where(
        strokes.view(-1, 1, 1, 1),
        stroke_masks(batch, size, generator, device),
        blob_masks(batch, size, coverage, generator, device),
    )
    soft = torch.rand(batch, generator=generator, device=device) < 0.5
    edges = torch.where(
        soft.view(-1, 1, 1, 1), gaussian_blur(regions, EDGE_SIGMAS[1]), gaussian_blur(regions, EDGE_SIGMAS[0])
    )
    return edges * _uniform(*OPACITY, (batch, 1, 1, 1), generator, device)


def _defect_appearance(images: Tensor, looks: tuple[str, ...], generator) -> Tensor:
    """What each defect looks like, one of ``looks`` per image with equal chances: the image shifted in brightness
    (and, in colour, tint), foreign texture (the next image of the batch, the image itself in a batch of one, moved by
    one random offset for the whole batch), or the image blurred (one random sigma for the whole batch).
    Returns a tensor like ``images``."""
    batch, channels = images.shape[:2]
    device = images.device
    sign = torch.where(torch.rand(batch, 1, 1, 1, generator=generator, device=device) < 0.5, -1.0, 1.0)
    shift = sign * _uniform(*BRIGHTNESS, (batch, 1, 1, 1), generator, device)
    if channels > 1:
        shift = shift + _uniform(-TINT, TINT, (batch, channels, 1, 1), generator, device)
    height, width = images.shape[-2:]
    offset = (
        int(torch.randint(height, (1,), generator=generator, device=device)),
        int(torch.randint(width, (1,), generator=generator, device=device)),
    )
    appearances = {
        "foreign": lambda: images.roll(1, dims=0).roll(offset, dims=(-2, -1)),
        "shift": lambda: images + shift,
    }
    if "blur" in looks:  # drawn only when chosen, so the default looks draw the numbers they always drew
        sigma = float(_uniform(*BLUR_SIGMAS, (1,), generator, device))
        appearances["blur"] = lambda: gaussian_blur(images, sigma)
    active_looks = canonical_looks(looks)
    picks = (torch.rand(batch, 1, 1, 1, generator=generator, device=device) * len(active_looks)).long()
    looks_like = appearances[active_looks[0]]()
    for index, look in enumerate(active_looks[1:], start=1):
        looks_like = torch.where(picks == index, appearances[look](), looks_like)
    return looks_like


def add_synthetic_defects(
    images: Tensor,
    share: float,
    generator: torch.Generator | None = None,
    looks: tuple[str, ...] = DEFAULT_LOOKS,
) -> Tensor:
    """``images`` [B, C, H, W] in [0, 1] in which each image, with probability ``share``, carries a synthetic defect:
    up to ``i3ad.masks.STROKES`` thin strokes, or blobs (one smooth patch or many scattered specks, depending on the
    blob scale drawn), looking like one of ``looks`` (``DEFECT_LOOKS``); the others are unchanged (a new tensor;
    ``images`` itself, not copied, for a share of 0 or an empty batch). A share of 0 draws no random numbers, so it
    leaves ``generator`` where it was."""
    check_defect_share(share)
    check_defect_looks(looks)
    batch = images.shape[0]
    if share == 0 or batch == 0:
        return images
    device = images.device
    alpha = _defect_regions(batch, tuple(images.shape[-2:]), generator, device)
    chosen = torch.rand(batch, 1, 1, 1, generator=generator, device=device) < share
    alpha = alpha * chosen
    corrupted = images * (1 - alpha) + _defect_appearance(images, looks, generator) * alpha
    return corrupted.clamp(0.0, 1.0).to(images.dtype)
