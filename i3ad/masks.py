"""Inpainting masks: random ones for training and the complementary grids of detection step 0.

A mask is a float tensor [B, 1, H, W] with 1 where a pixel is hidden (to be re-painted) and 0 where it is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from i3ad.checks import is_count
from i3ad.similarity import gaussian_blur

# Cell sizes of the training grids; the largest bounds how big a square hole the network learns to fill from
# context (step 0 hides 8-px cells by default).
GRID_CELL_SIZES = (2, 4, 8, 16, 32)
# The other kinds of training mask, made to look like what detection hides after step 0: thresholded smooth noise at
# three scales (like SSIM maps of small to large defects), up to STROKES thin segments (scratches, cracks) and up to
# RECTANGLES boxes (large defects).
BLOB_SIGMAS = (1.0, 2.5, 6.0)
STROKES = 6
RECTANGLES = 3


def complementary_grid_masks(
    count: int, cell_size: int, height: int, width: int, device: torch.device | str | None = None
) -> Tensor:
    """``count`` disjoint grid masks that together hide every pixel exactly once.

    Cell (i, j) of a ``cell_size`` grid belongs to mask (i + s j) mod count, with s = 2 for count >= 3 (s = 1, a
    checkerboard, for count = 2), so that a hidden cell's four neighbours are always visible. Returns [count, 1, H, W].
    """
    if count < 2:
        raise ValueError(f"step-0 needs at least 2 complementary masks so that no pixel sees itself, got {count}")
    if cell_size < 1:
        raise ValueError(f"cell_size must be >= 1, got {cell_size}")
    stride = 1 if count == 2 else 2
    rows = torch.arange(height, device=device) // cell_size
    cols = torch.arange(width, device=device) // cell_size
    group = (rows[:, None] + stride * cols[None, :]) % count
    return (group[None] == torch.arange(count, device=device)[:, None, None]).float().unsqueeze(1)


def step0_grid_masks(
    count: int, hidden_groups: int, cell_size: int, height: int, width: int, device: torch.device | str | None = None
) -> Tensor:
    """The ``count`` masks of detection step 0: mask k hides the groups k, k + 1, ..., k + hidden_groups - 1 (mod
    count) of ``complementary_grid_masks``, so that every pixel is hidden in exactly ``hidden_groups`` of them and
    seen in the others. Returns [count, 1, H, W]."""
    if not 1 <= hidden_groups < count:
        raise ValueError(f"a step-0 mask hides 1 to {count - 1} of the {count} groups, got {hidden_groups}")
    groups = complementary_grid_masks(count, cell_size, height, width, device)
    return torch.stack([groups.roll(-shift, dims=0) for shift in range(hidden_groups)]).sum(dim=0)


def hide_mirror_copies(masks: Tensor, sources: Tensor | None) -> Tensor:
    """Masks [B, 1, H, W] in which every copy of an image pixel on a frame's mirrored fill is hidden exactly when that
    pixel is, so that no hidden pixel can be seen in its mirror image. ``sources``: ``preprocessing.pixel_sources`` of
    the frames ([B or 1, 1, H, W], or [b, ...] with B a multiple of b for the same b frames repeated); None: masks
    returned as they are (every image fills its frame)."""
    if sources is None:
        return masks
    if sources.shape[1:] != masks.shape[1:] or len(sources) == 0 or len(masks) % len(sources) != 0:
        raise ValueError(
            f"pixel sources {tuple(sources.shape)} do not fit masks {tuple(masks.shape)}: "
            "same frame, and a count that divides the masks' count"
        )
    if len(sources) != len(masks):
        sources = sources.repeat(len(masks) // len(sources), 1, 1, 1)
    encoded = sources.to(masks.device).flatten(1).long()
    inside = encoded >= 0
    source = torch.where(inside, encoded, -encoded - 1)
    hidden = masks.flatten(1)
    pixels = hidden.shape[1]
    # Each image pixel's mask value, filed under its source index (fill pixels go to a spare slot, never read), then
    # handed to every pixel that shows it.
    by_source = hidden.new_zeros(len(hidden), pixels + 1).scatter_(1, torch.where(inside, source, pixels), hidden)
    return by_source.gather(1, source).view_as(masks)


def check_cell_sizes(cell_sizes: tuple[int, ...]) -> None:
    """Refuse an empty list of training grid cell sizes, or one with repeats or anything but whole numbers >= 1."""
    if not cell_sizes or not all(map(is_count, cell_sizes)) or len(set(cell_sizes)) != len(cell_sizes):
        raise ValueError(f"grid cell sizes must be one or more distinct whole numbers >= 1, got {cell_sizes!r}")


def random_grid_masks(
    batch: int,
    size: tuple[int, int],
    coverage: Tensor,
    cell_sizes: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """RIAD-style cut-outs: each sample a grid of one of ``cell_sizes`` (drawn at random) whose cells are hidden with
    the sample's probability ``coverage`` [batch]. Returns [batch, 1, H, W]."""
    height, width = size
    cells = torch.tensor(cell_sizes, device=device)
    cell = cells[torch.randint(len(cell_sizes), (batch,), generator=generator, device=device)]
    out = torch.empty(batch, 1, height, width, device=device)
    # One random field per cell size, then each sample picks its own: no Python loop over the batch.
    for c in cell_sizes:
        pick = cell == c
        if not pick.any():
            continue
        low = torch.rand(int(pick.sum()), 1, -(-height // c), -(-width // c), generator=generator, device=device)
        cells_hidden = (low < coverage[pick].view(-1, 1, 1, 1)).float()
        # Each pixel reads its cell (no upsampling to whole cells: a cell larger than the image costs no memory).
        rows = torch.arange(height, device=device) // c
        cols = torch.arange(width, device=device) // c
        out[pick] = cells_hidden[:, :, rows][:, :, :, cols]
    return out


def blob_masks(
    batch: int, size: tuple[int, int], coverage: Tensor, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Smooth blobs at one of ``BLOB_SIGMAS`` per sample, hiding the share ``coverage`` [batch] of it."""
    height, width = size
    # Smoothed noise at a quarter of the resolution, thresholded at the sample's coverage.
    noise = torch.rand(batch, 1, height // 4, width // 4, generator=generator, device=device)
    fields = torch.stack([gaussian_blur(noise, sigma) for sigma in BLOB_SIGMAS])
    scale = torch.randint(len(BLOB_SIGMAS), (batch,), generator=generator, device=device)
    field = F.interpolate(fields[scale, torch.arange(batch, device=device)], size=size, mode="bilinear")
    ordered = field.flatten(1).sort(dim=1).values
    rank = ((1.0 - coverage) * (ordered.shape[1] - 1)).long().unsqueeze(1)
    return (field > ordered.gather(1, rank).view(-1, 1, 1, 1)).float()


def stroke_masks(batch: int, size: tuple[int, int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Up to ``STROKES`` thin straight segments per sample."""
    height, width = size
    ys = torch.linspace(0, 1, height, device=device).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width, device=device).view(1, 1, 1, width)
    # Segments up to 0.2 of the side long in each direction, 0.5-3.5 % of it thick; each drawn with probability 0.7.
    start = torch.rand(batch, STROKES, 2, generator=generator, device=device)
    end = (start + 0.4 * (torch.rand(batch, STROKES, 2, generator=generator, device=device) - 0.5)).clamp(0, 1)
    thickness = 0.005 + 0.03 * torch.rand(batch, STROKES, 1, 1, generator=generator, device=device)
    used = torch.rand(batch, STROKES, 1, 1, generator=generator, device=device) < 0.7
    # Distance of every pixel to each segment start->end.
    (y0, x0), (y1, x1) = start.unbind(-1), end.unbind(-1)
    y0, x0, y1, x1 = (v.view(batch, STROKES, 1, 1) for v in (y0, x0, y1, x1))
    dy, dx = y1 - y0, x1 - x0
    t = (((ys - y0) * dy + (xs - x0) * dx) / (dy**2 + dx**2 + 1e-8)).clamp(0, 1)
    distance = ((ys - y0 - t * dy) ** 2 + (xs - x0 - t * dx) ** 2).sqrt()
    return ((distance < thickness) & used).any(dim=1, keepdim=True).float()


def _rectangle_masks(batch: int, size: tuple[int, int], generator, device) -> Tensor:
    height, width = size
    ys = torch.arange(height, device=device).view(1, 1, height, 1) / height
    xs = torch.arange(width, device=device).view(1, 1, 1, width) / width
    centre = torch.rand(batch, RECTANGLES, 2, 1, 1, generator=generator, device=device)
    half = 0.02 + 0.2 * torch.rand(batch, RECTANGLES, 2, 1, 1, generator=generator, device=device)  # 4-44 % of a side
    inside = ((ys - centre[:, :, 0]).abs() < half[:, :, 0]) & ((xs - centre[:, :, 1]).abs() < half[:, :, 1])
    return inside.any(dim=1, keepdim=True).float()


def random_training_masks(
    batch: int,
    size: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    min_coverage: float = 0.02,
    max_coverage: float = 0.7,
    grid_cell_sizes: tuple[int, ...] = GRID_CELL_SIZES,
) -> Tensor:
    """A batch of random masks that covers what detection hides.

    Each sample is one of: a grid of one of ``grid_cell_sizes`` (RIAD-style cut-outs, incl. the step-0 grids),
    smooth blobs (like thresholded SSIM maps), strokes, or rectangles; grid and blob masks hide between
    ``min_coverage`` and ``max_coverage`` of the image. Returns [batch, 1, H, W] with at least one hidden pixel per
    sample.
    """
    check_cell_sizes(grid_cell_sizes)
    device = torch.device(device)
    coverage = min_coverage + (max_coverage - min_coverage) * torch.rand(batch, generator=generator, device=device)
    kinds = torch.stack(
        [
            random_grid_masks(batch, size, coverage, grid_cell_sizes, generator, device),
            blob_masks(batch, size, coverage, generator, device),
            stroke_masks(batch, size, generator, device),
            _rectangle_masks(batch, size, generator, device),
        ]
    )
    choice = torch.randint(len(kinds), (batch,), generator=generator, device=device)
    masks = kinds[choice, torch.arange(batch, device=device)]
    # An empty mask teaches nothing: hide a small square instead.
    empty = masks.flatten(1).amax(dim=1) == 0
    if empty.any():
        masks[empty, :, : size[0] // 8, : size[1] // 8] = 1.0
    return masks
