"""Indexing MVTec-style category folders and loading their images and masks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i3ad.data import (
    DatasetError,
    Sample,
    check_category_name,
    index_category,
    list_categories,
    load_images,
    load_masks,
    load_regions,
)
from i3ad.preprocessing import Preprocessing
from i3ad.synthetic import DEFECTS, make_synthetic_category


@pytest.fixture
def small_category(tmp_path) -> Path:
    """A small synthetic category (32 px) that a test may break."""
    return make_synthetic_category(tmp_path, "cat", size=32, train=6, test_good=3, test_per_defect=2)


def test_index_synthetic_category(synthetic_root):
    data_root, folder = synthetic_root
    index = index_category(data_root, "synthetic")
    assert index.name == "synthetic"
    assert index.root == folder
    assert len(index.train) == 60
    assert all(p.parent == folder / "train" / "good" and p.suffix == ".png" for p in index.train)
    assert list(index.train) == sorted(index.train)
    assert len(index.test) == 12 + 8 * len(DEFECTS)
    good = [s for s in index.test if s.label == 0]
    bad = [s for s in index.test if s.label == 1]
    assert len(good) == 12 and all(s.defect == "good" and s.mask is None for s in good)
    assert len(bad) == 16 and {s.defect for s in bad} == set(DEFECTS)
    for sample in bad:
        assert sample.mask == folder / "ground_truth" / sample.defect / f"{sample.image.stem}_mask.png"
        assert sample.mask.is_file()
        assert sample.image.parent.name == sample.defect
    assert index.has_masks
    assert not index.greyscale
    assert list_categories(data_root) == ["synthetic"]


def test_one_colour_image_makes_a_category_rgb(tmp_path):
    make_synthetic_category(tmp_path, "mixed", size=32, channels=1, train=10, test_good=1, test_per_defect=1)
    index = index_category(tmp_path, "mixed")
    assert index.greyscale
    # The last image in name order is colour: it was not among the first 8 that alone decided.
    Image.new("RGB", (32, 32), (200, 40, 40)).save(index.train[-1])
    assert not index_category(tmp_path, "mixed").greyscale


@pytest.mark.parametrize("size", [8, 9])
def test_synthetic_defects_are_never_empty_on_tiny_images(tmp_path, size):
    for seed in range(40):  # at these sizes the spot's ellipse used to miss every pixel centre for some seeds
        root = tmp_path / str(seed)
        make_synthetic_category(root, "tiny", size=size, train=2, test_good=1, test_per_defect=8, seed=seed)
        masks = sorted((root / "tiny" / "ground_truth").rglob("*.png"))
        assert masks and all(np.asarray(Image.open(mask)).any() for mask in masks), seed


def test_greyscale_category_and_loading(tmp_path):
    make_synthetic_category(tmp_path, "grey", size=32, channels=1, train=4, test_good=2, test_per_defect=1)
    index = index_category(tmp_path, "grey")
    assert index.greyscale
    preprocessing = Preprocessing(image_size=16, channels=1)
    images = load_images(index.train, preprocessing, workers=2)
    assert images.shape == (4, 1, 16, 16)
    assert images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert load_images([], preprocessing).shape == (0, 1, 16, 16)


def test_square_is_false_once_one_training_image_is_not(small_category):
    from PIL import Image

    index = index_category(small_category.parent, "cat")
    assert index.square
    with Image.open(index.train[-1]) as image:
        image.resize((33, 32)).save(index.train[-1])
    assert not index.square


def test_load_masks_matches_samples(small_category):
    index = index_category(small_category.parent, "cat")
    masks = load_masks(index.test, 16)
    assert masks.shape == (len(index.test), 1, 16, 16)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    for sample, mask in zip(index.test, masks, strict=True):
        if sample.label:
            assert mask.sum() > 0
        else:
            assert mask.sum() == 0


def test_a_mask_of_another_resolution_is_resized_and_one_of_other_proportions_is_refused(small_category):
    from PIL import Image

    index = index_category(small_category.parent, "cat")
    sample = next(s for s in index.test if s.label)
    expected = load_masks([sample], 16)
    with Image.open(sample.mask) as mask:
        mask.resize((64, 64), Image.Resampling.NEAREST).save(sample.mask)  # twice the image's 32 px
    assert torch.equal(load_masks([sample], 16), expected)
    with Image.open(sample.mask) as mask:
        mask.resize((64, 32), Image.Resampling.NEAREST).save(sample.mask)
    with pytest.raises(DatasetError, match=r"is 64 x 32 px and its image .* 32 x 32 px") as error:
        load_masks(index.test, 16)
    assert str(sample.mask) in str(error.value)


def test_masks_are_resized_pixel_centred_so_a_defect_keeps_its_place(tmp_path):
    from PIL import Image

    image, mask = tmp_path / "030.png", tmp_path / "030_mask.png"
    Image.new("L", (30, 30)).save(image)
    defect = torch.zeros(30, 30, dtype=torch.uint8)
    defect[9:21, 9:21] = 255  # centred on pixel coordinate 15.0
    Image.fromarray(defect.numpy()).save(mask)
    resized = load_masks([Sample(image, 1, "spot", mask)], 16)[0, 0]
    centres = (torch.arange(16) + 0.5) * 30 / 16  # each resized pixel's centre in the mask's coordinates
    rows, columns = resized.sum(1), resized.sum(0)
    assert (rows * centres).sum() / rows.sum() == pytest.approx(15.0)  # plain "nearest": 15.94
    assert (columns * centres).sum() / columns.sum() == pytest.approx(15.0)


def test_category_without_masks_is_fine(small_category):
    shutil.rmtree(small_category / "ground_truth")
    index = index_category(small_category.parent, "cat")
    assert not index.has_masks
    assert all(s.mask is None for s in index.test)
    assert sum(s.label for s in index.test) == 2 * len(DEFECTS)


def test_missing_category_lists_the_found_ones(small_category):
    with pytest.raises(DatasetError, match=r"'nope' not found under .*found: cat"):
        index_category(small_category.parent, "nope")


def test_missing_data_root(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        index_category(tmp_path / "absent", "cat")
    with pytest.raises(DatasetError, match="does not exist"):
        list_categories(tmp_path / "absent")


def test_missing_train_good(small_category):
    shutil.rmtree(small_category / "train" / "good")
    with pytest.raises(DatasetError, match=r"train[/\\]good must exist"):
        index_category(small_category.parent, "cat")


def test_empty_train_good(small_category):
    for path in (small_category / "train" / "good").iterdir():
        path.unlink()
    (small_category / "train" / "good" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="normal training images"):
        index_category(small_category.parent, "cat")


def test_anomalous_image_without_its_mask(small_category):
    missing = small_category / "ground_truth" / "spot" / "001_mask.png"
    missing.unlink()
    with pytest.raises(DatasetError, match="has no mask") as error:
        index_category(small_category.parent, "cat")
    message = str(error.value)
    assert str(small_category / "test" / "spot" / "001.png") in message
    assert str(missing) in message  # says which file it expected


def test_mask_with_other_extension_is_found(small_category):
    mask = small_category / "ground_truth" / "spot" / "001_mask.png"
    mask.rename(mask.with_suffix(".bmp"))  # still a PNG inside; the extension is what pairs them
    index = index_category(small_category.parent, "cat")
    sample = next(s for s in index.test if s.defect == "spot" and s.image.stem == "001")
    assert sample.mask == mask.with_suffix(".bmp")


def test_masks_are_paired_whatever_the_case_of_their_names(small_category):
    truth = small_category / "ground_truth"
    (truth / "spot").rename(truth / "Spot")  # a folder of another case: pixel metrics were silently dropped
    mask = truth / "Spot" / "001_mask.png"
    mask.rename(mask.with_name("001_MASK.PNG"))  # names of another case: "has no mask"
    index = index_category(small_category.parent, "cat")
    assert index.has_masks
    sample = next(s for s in index.test if s.defect == "spot" and s.image.stem == "001")
    assert sample.mask == truth / "Spot" / "001_MASK.PNG"
    # Two test folders whose names differ only in case stay two defect types (pairing had kept only one).
    shutil.copytree(small_category / "test" / "spot", small_category / "test" / "SPOT")
    index = index_category(small_category.parent, "cat")
    assert sorted(s.defect for s in index.test if s.defect.lower() == "spot") == ["SPOT"] * 2 + ["spot"] * 2


def test_images_or_masks_that_would_pair_twice_are_an_error(small_category):
    spot, truth = small_category / "test" / "spot", small_category / "ground_truth" / "spot"
    shutil.copy(truth / "000_mask.png", truth / "000_MASK.bmp")
    with pytest.raises(DatasetError, match=r"000_MASK\.bmp and .*000_mask\.png are masks of the same image"):
        index_category(small_category.parent, "cat")
    (truth / "000_MASK.bmp").unlink()
    shutil.copy(spot / "000.png", spot / "000.bmp")
    with pytest.raises(DatasetError, match=r"000\.bmp and .*000\.png would share the mask .*000_mask\.png"):
        index_category(small_category.parent, "cat")


def test_a_normal_test_folder_of_another_case_holds_normal_images(small_category):
    (small_category / "test" / "good").rename(small_category / "test" / "Good")
    index = index_category(small_category.parent, "cat")
    # It was taken for a defect type without masks: every image AUROC empty, or "has no masks for ['Good']".
    normal = [s for s in index.test if s.image.parent.name == "Good"]
    assert normal and all(s.label == 0 and s.defect == "good" and s.mask is None for s in normal)
    assert index.has_masks


def test_an_image_too_elongated_for_the_frame_is_named(small_category):
    strip = small_category / "train" / "good" / "strip.png"
    Image.fromarray(np.zeros((8, 400, 3), dtype=np.uint8)).save(strip)
    preprocessing = Preprocessing(image_size=32, channels=3, geometry="fit")
    paths = sorted((small_category / "train" / "good").iterdir())
    for load in (load_images, load_regions):
        with pytest.raises(DatasetError, match=rf"^{re.escape(str(strip))}: a 400x8 image is too elongated"):
            load(paths, preprocessing)


def test_hidden_files_and_folders_are_no_data(small_category):
    # What an archive made on a Mac leaves: "._x.png" resource forks (no images) and a __MACOSX folder.
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (small_category / folder / "._000.png").write_bytes(b"\x00\x05\x16\x07 not an image")
    for folder in ("test/__MACOSX", "test/.ipynb_checkpoints"):
        (small_category / folder).mkdir()
        (small_category / folder / "000.png").write_bytes(b"not an image either")
    index = index_category(small_category.parent, "cat")
    assert len(index.train) == 6 and len(index.test) == 3 + 2 * len(DEFECTS)
    assert not any(path.name.startswith(".") for path in [*index.train, *(s.image for s in index.test)])
    assert {s.defect for s in index.test} == {"good", *DEFECTS}


def test_images_the_layout_does_not_read_are_named_in_a_warning(small_category):
    good = small_category / "train" / "good"
    (good / "part2").mkdir()
    for image in sorted(good.glob("*.png"))[:3]:
        image.rename(good / "part2" / image.name)  # half of train/good went missing without a word
    (good / "gone.png").symlink_to(good / "no_such_file.png")
    with pytest.warns(UserWarning) as caught:
        index = index_category(small_category.parent, "cat")
    messages = [str(warning.message) for warning in caught]
    assert f"{good}: only the images directly in it are read, not those in part2/" in messages
    assert f"{good}: gone.png link(s) to nothing, left out" in messages
    assert len(index.train) == 3


def test_masks_for_some_defect_types_but_not_others(small_category):
    shutil.rmtree(small_category / "ground_truth" / "scratch")
    with pytest.raises(DatasetError, match=r"masks for \['spot'\] but none for \['scratch'\]"):
        index_category(small_category.parent, "cat")


@pytest.mark.parametrize("name", ["..", "../cat", "a/b", "cat/..", "a..b", "/etc", "", ".hidden", "a b", "x" * 101])
def test_unsafe_category_names_are_refused(small_category, name):
    with pytest.raises(DatasetError, match="not a valid name"):
        index_category(small_category.parent, name)
    with pytest.raises(DatasetError):
        check_category_name(name)


@pytest.mark.parametrize("name", ["bottle", "metal_nut", "my-parts.v2", "A1"])
def test_safe_category_names_pass(name):
    assert check_category_name(name) == name
