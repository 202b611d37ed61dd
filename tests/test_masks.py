"""Complementary step-0 grid masks and random training masks."""

from __future__ import annotations

import pytest
import torch

from i3ad.masks import (
    complementary_grid_masks,
    hide_mirror_copies,
    random_grid_masks,
    random_training_masks,
    step0_grid_masks,
)
from i3ad.preprocessing import Preprocessing, pixel_sources


@pytest.mark.parametrize("count", [2, 3, 4, 5])
@pytest.mark.parametrize("cell_size", [1, 2, 3, 8])
@pytest.mark.parametrize(("height", "width"), [(32, 32), (21, 34)])
def test_grid_masks_partition_the_image(count, cell_size, height, width):
    masks = complementary_grid_masks(count, cell_size, height, width)
    assert masks.shape == (count, 1, height, width)
    assert masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    # Every pixel hidden in exactly one mask.
    assert torch.equal(masks.sum(dim=0), torch.ones(1, height, width))
    # Every mask hides something (the image is large enough for every group to appear).
    assert (masks.flatten(1).sum(dim=1) > 0).all()


@pytest.mark.parametrize("count", [2, 3, 4, 5])
@pytest.mark.parametrize("cell_size", [1, 2, 4, 8])
def test_neighbours_of_a_hidden_cell_are_visible(count, cell_size):
    size = 64
    masks = complementary_grid_masks(count, cell_size, size, size).bool()[:, 0]
    # Pixel level: moving one cell (cell_size pixels) right or down always lands on a visible pixel.
    right = masks[:, :, :-cell_size] & masks[:, :, cell_size:]
    down = masks[:, :-cell_size, :] & masks[:, cell_size:, :]
    assert not right.any()
    assert not down.any()
    # And within a cell all pixels share the mask (cells are hidden whole).
    cells = masks[:, ::cell_size, ::cell_size]
    expanded = cells.repeat_interleave(cell_size, dim=1).repeat_interleave(cell_size, dim=2)
    assert torch.equal(expanded[:, :size, :size], masks)


def test_two_masks_are_a_checkerboard():
    masks = complementary_grid_masks(2, 2, 8, 8)
    expected = ((torch.arange(8)[:, None] // 2 + torch.arange(8)[None] // 2) % 2 == 0).float()
    assert torch.equal(masks[0, 0], expected)
    assert torch.equal(masks[1, 0], 1 - expected)


def test_grid_masks_reject_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        complementary_grid_masks(1, 4, 16, 16)
    with pytest.raises(ValueError, match="cell_size"):
        complementary_grid_masks(4, 0, 16, 16)


@pytest.mark.parametrize(("count", "hidden"), [(2, 1), (3, 2), (4, 1), (4, 2), (4, 3)])
def test_step0_masks_hide_every_pixel_as_often_as_asked(count, hidden):
    masks = step0_grid_masks(count, hidden, 4, 24, 20)
    assert masks.shape == (count, 1, 24, 20)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(masks.sum(dim=0), torch.full((1, 24, 20), float(hidden)))
    if hidden == 1:
        assert torch.equal(masks, complementary_grid_masks(count, 4, 24, 20))


@pytest.mark.parametrize("hidden", [0, 4])
def test_step0_masks_keep_some_pixels_visible(hidden):
    with pytest.raises(ValueError, match="hides 1 to 3 of the 4 groups"):
        step0_grid_masks(4, hidden, 8, 16, 16)


def test_random_training_masks_are_binary_non_empty_and_reproducible():
    masks = random_training_masks(24, (32, 32), generator=torch.Generator().manual_seed(0))
    assert masks.shape == (24, 1, 32, 32)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.flatten(1).amax(dim=1) == 1).all()
    again = random_training_masks(24, (32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    other = random_training_masks(24, (32, 32), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(masks, other)
    # Masks hide only part of the image on average.
    assert 0.0 < masks.mean().item() < 0.9


def test_training_grids_use_only_the_given_cell_sizes():
    # With one cell size of 16, every grid mask is constant over each aligned 16 x 16 block.
    masks = random_grid_masks(
        8, (64, 64), torch.full((8,), 0.5), (16,), torch.Generator().manual_seed(0), torch.device("cpu")
    )
    blocks = masks.view(8, 1, 4, 16, 4, 16)
    assert torch.equal(blocks.amax(dim=(3, 5)), blocks.amin(dim=(3, 5)))
    # Finer cells do not have that property.
    fine = random_grid_masks(
        8, (64, 64), torch.full((8,), 0.5), (2,), torch.Generator().manual_seed(0), torch.device("cpu")
    ).view(8, 1, 4, 16, 4, 16)
    assert not torch.equal(fine.amax(dim=(3, 5)), fine.amin(dim=(3, 5)))


@pytest.mark.parametrize("cell_sizes", [(), (0,), (8, -1), (8.0,), (True,), (8, 8)])
def test_training_masks_refuse_bad_cell_sizes(cell_sizes):
    with pytest.raises(ValueError, match="grid cell sizes"):
        random_training_masks(2, (16, 16), grid_cell_sizes=cell_sizes)


def test_grid_cells_larger_than_the_image_hide_all_or_nothing():
    # Each pixel reads its cell: a cell far larger than the image costs no memory and covers the whole image.
    masks = random_grid_masks(
        16, (24, 40), torch.full((16,), 0.5), (100_000,), torch.Generator().manual_seed(0), torch.device("cpu")
    )
    assert masks.shape == (16, 1, 24, 40)
    per_image = masks.flatten(1)
    assert torch.equal(per_image.amax(dim=1), per_image.amin(dim=1))
    assert 0 < per_image[:, 0].sum() < 16  # some images hidden whole, some not at all


# --- mirror copies on a fit frame's fill ------------------------------------------------------------------------------


def _fit_frames(shapes: list[tuple[int, int]], size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images of the given (height, width) fitted into frames, with their regions."""
    preprocessing = Preprocessing(image_size=size, channels=1, geometry="fit")
    generator = torch.Generator().manual_seed(0)
    frames = torch.cat([preprocessing(torch.rand(1, h, w, generator=generator)) for h, w in shapes])
    regions = torch.cat([preprocessing.region(h, w) for h, w in shapes])
    return frames, regions


# 28 x 8: the fill beside the image is wider than the image, so it is mirrored twice.
SHAPES = [(28, 12), (12, 28), (28, 8), (20, 20)]


def test_pixel_sources_name_the_image_pixel_each_frame_pixel_shows():
    frames, regions = _fit_frames(SHAPES)
    sources = pixel_sources(regions)
    inside = sources >= 0
    assert torch.equal(inside, regions > 0.5)
    index = torch.where(inside, sources, -sources - 1).long()
    assert torch.equal(frames.flatten(1).gather(1, index.flatten(1)).view_as(frames), frames)
    # Inside the image each pixel names itself.
    own = torch.arange(32 * 32).view(1, 1, 32, 32).expand_as(index)
    assert torch.equal(index[inside], own[inside])
    assert pixel_sources(torch.ones(2, 1, 32, 32)) is None  # images that fill their frames have no copies


def test_pixel_sources_are_fresh_tensors_for_each_call():
    # The line numbers behind them are cached per image extent: a caller changing its result must not change the next.
    _, regions = _fit_frames(SHAPES)
    first = pixel_sources(regions)
    expected = first.clone()
    first.zero_()
    assert torch.equal(pixel_sources(regions), expected)


def _consistent(masks: torch.Tensor, sources: torch.Tensor) -> bool:
    """Every pixel hidden exactly when each other pixel showing the same image pixel is."""
    index = torch.where(sources >= 0, sources, -sources - 1).long().flatten(1)
    flat = masks.flatten(1)
    highest = flat.new_zeros(flat.shape).scatter_reduce(1, index, flat, "amax", include_self=False)
    lowest = flat.new_ones(flat.shape).scatter_reduce(1, index, flat, "amin", include_self=False)
    return bool((highest.gather(1, index) == lowest.gather(1, index)).all())


def test_hide_mirror_copies_hides_each_copy_with_its_pixel():
    _, regions = _fit_frames(SHAPES)
    sources = pixel_sources(regions)
    masks = (torch.rand(len(SHAPES), 1, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    assert not _consistent(masks, sources)  # a plain grid or random mask leaves copies of hidden pixels in view
    hidden = hide_mirror_copies(masks, sources)
    assert _consistent(hidden, sources)
    inside = regions > 0.5
    assert torch.equal(hidden[inside], masks[inside])  # the image's own pixels keep their mask
    # Repeated frames (step 0's passes) and a missing fill.
    passes = torch.cat([masks, 1 - masks])
    assert torch.equal(hide_mirror_copies(passes, sources), torch.cat([hidden, hide_mirror_copies(1 - masks, sources)]))
    assert hide_mirror_copies(masks, None) is masks


def test_sources_flipped_with_their_frames_still_hide_every_copy():
    # Training flips the frames: the sources are flipped with them, and the masks drawn for the flipped frames.
    _, regions = _fit_frames(SHAPES)
    sources = pixel_sources(regions)
    masks = (torch.rand(len(SHAPES), 1, 32, 32, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    for flipped in (sources.flip(-1), sources.flip(-2), sources.rot90(1, dims=(-2, -1))):
        assert _consistent(hide_mirror_copies(masks, flipped), flipped)


def test_hide_mirror_copies_refuses_sources_that_do_not_fit_the_masks():
    _, regions = _fit_frames([(28, 12), (12, 28)])
    sources = pixel_sources(regions)
    with pytest.raises(ValueError, match="do not fit masks"):
        hide_mirror_copies(torch.zeros(3, 1, 32, 32), sources)  # 3 masks for 2 frames
    with pytest.raises(ValueError, match="do not fit masks"):
        hide_mirror_copies(torch.zeros(2, 1, 16, 16), sources)
    with pytest.raises(ValueError, match="largest supported side"):
        pixel_sources(torch.zeros(1, 1, 4097, 4097))
