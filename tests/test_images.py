"""Decoding image files of every kind a user may upload, and refusing what cannot be used."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from i3ad import images as images_module
from i3ad.images import ImageReadError, is_greyscale, read_image, read_mask

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601


def _rgb_array(height: int = 12, width: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def test_rgb_png(tmp_path):
    array = _rgb_array()
    path = _save(Image.fromarray(array), tmp_path / "a.png")
    tensor = read_image(path, 3)
    assert tensor.shape == (3, 12, 20) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    assert not is_greyscale(path)


def test_rgba_drops_alpha(tmp_path):
    array = _rgb_array()
    alpha = np.full((12, 20, 1), 7, dtype=np.uint8)
    path = _save(Image.fromarray(np.concatenate([array, alpha], axis=-1), "RGBA"), tmp_path / "a.png")
    tensor = read_image(path, 3)
    assert tensor.shape == (3, 12, 20)
    torch.testing.assert_close(tensor, torch.from_numpy(array).permute(2, 0, 1).float() / 255)


def test_palette_image(tmp_path):
    palette_image = Image.new("P", (16, 10))
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    pixels = np.zeros((10, 16), dtype=np.uint8)
    pixels[:, 8:] = 1
    pixels[5:, :] = 2
    palette_image.putdata(pixels.flatten().tolist())
    path = _save(palette_image, tmp_path / "p.png")
    assert Image.open(path).mode == "P"
    tensor = read_image(path, 3)
    assert tensor.shape == (3, 10, 16)
    torch.testing.assert_close(tensor[:, 0, 0], torch.tensor([0.0, 0.0, 0.0]))
    torch.testing.assert_close(tensor[:, 0, 10], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(tensor[:, 7, 3], torch.tensor([0.0, 128 / 255, 1.0]))


@pytest.mark.parametrize("peak", [65535, 40000, 200])
def test_16_bit_greyscale_is_divided_by_65535(tmp_path, peak):
    array = np.linspace(0, peak, 10 * 12).reshape(10, 12).astype(np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    assert is_greyscale(path)
    expected = torch.from_numpy(array.astype(np.float32) / 65535.0)
    grey = read_image(path, 1)
    assert grey.shape == (1, 10, 12)
    torch.testing.assert_close(grey[0], expected, atol=1e-6, rtol=0)
    rgb = read_image(path, 3)
    assert rgb.shape == (3, 10, 12)
    for channel in rgb:
        torch.testing.assert_close(channel, expected, atol=1e-6, rtol=0)


def test_greyscale_to_three_channels_and_rgb_to_one(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, size=(9, 11), dtype=np.uint8)
    grey_path = _save(Image.fromarray(grey), tmp_path / "g.png")
    three = read_image(grey_path, 3)
    assert three.shape == (3, 9, 11)
    for channel in three:
        torch.testing.assert_close(channel, torch.from_numpy(grey).float() / 255)
    one = read_image(grey_path, 1)
    torch.testing.assert_close(one[0], torch.from_numpy(grey).float() / 255)

    colours = np.zeros((9, 12, 3), dtype=np.uint8)
    colours[:, 0:4, 0] = 255  # red
    colours[:, 4:8, 1] = 255  # green
    colours[:, 8:12, 2] = 255  # blue
    rgb_path = _save(Image.fromarray(colours), tmp_path / "c.png")
    luma = read_image(rgb_path, 1)
    assert luma.shape == (1, 9, 12)
    for column, weight in zip((1, 5, 9), LUMA, strict=True):
        assert luma[0, 4, column].item() == pytest.approx(weight, abs=1.5 / 255)


def test_exif_rotated_jpeg(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high, bright on the left
    array[:, :10] = 255
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)
    tensor = read_image(path, 3)
    assert tensor.shape == (3, 40, 20)  # width and height swapped
    # Turned clockwise, the bright left edge is now at the top.
    assert tensor[:, :8].mean() > 0.9
    assert tensor[:, 12:].mean() < 0.1


def test_bytes_input_and_pil_input():
    array = _rgb_array(16, 16, seed=2)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    from_bytes = read_image(buffer.getvalue(), 3)
    torch.testing.assert_close(from_bytes, torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    from_pil = read_image(Image.fromarray(array), 3)
    torch.testing.assert_close(from_pil, from_bytes)
    with pytest.raises(ImageReadError, match="uploaded data"):
        read_image(b"definitely not an image", 3)
    # An array is no file: the message names its type, not its thousands of values.
    with pytest.raises(ImageReadError, match=r"^the ndarray given: not a readable image") as error:
        read_image(np.zeros((64, 64, 3)), 3)
    assert len(str(error.value)) < 200


@pytest.mark.parametrize("format_", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, format_):
    buffer = io.BytesIO()
    Image.fromarray(_rgb_array(64, 64, seed=3)).save(buffer, format=format_)
    data = buffer.getvalue()
    path = tmp_path / f"broken.{format_.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match=str(path)):
        read_image(path, 3)
    with pytest.raises(ImageReadError):
        read_image(data[: len(data) * 2 // 3], 3)


def test_text_file_missing_file_and_folder(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello, I am not a picture\n")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(text, 3)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.png", 3)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path, 3)


@pytest.mark.parametrize("size", [(1, 1), (7, 30), (30, 7)])
def test_tiny_image(tmp_path, size):
    path = _save(Image.new("RGB", size), tmp_path / "tiny.png")
    with pytest.raises(ImageReadError, match="too small"):
        read_image(path, 3)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit greyscale) but holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 100)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_huge_image_is_refused_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(7000, 7000))  # 49 megapixels declared, ~100 bytes on disk
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self: decoded.append(self) or None)
    from i3ad.images import read_size

    for read in (lambda: read_image(path, 3), lambda: read_size(path)):
        with pytest.raises(ImageReadError, match="larger than the 40 megapixels") as error:
            read()
        assert "7000x7000" in str(error.value)
    assert decoded == []
    # Just below the limit the same kind of file is decoded (and found damaged): the size check is what refused it.
    monkeypatch.undo()
    path.write_bytes(_png_header_only(6000, 6000))
    with pytest.raises(ImageReadError, match="damaged or truncated"):
        read_image(path, 3)


def test_max_pixels_is_the_limit(tmp_path, monkeypatch):
    path = _save(Image.fromarray(_rgb_array(20, 30)), tmp_path / "a.png")
    monkeypatch.setattr(images_module, "MAX_PIXELS", 20 * 30 - 1)
    with pytest.raises(ImageReadError, match="30x20"):
        read_image(path, 3)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 20 * 30)
    assert read_image(path, 3).shape == (3, 20, 30)


def test_read_mask_binarises(tmp_path):
    array = np.array([[0, 100, 127, 128, 200, 255, 1, 254]] * 8, dtype=np.uint8)
    path = _save(Image.fromarray(array), tmp_path / "m.png")
    mask = read_mask(path)
    assert mask.shape == (1, 8, 8)
    assert mask[0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_a_mask_stored_as_0_1_reads_its_defect_and_an_empty_one_stays_empty(tmp_path):
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2:4, 3:6] = 1  # a label image: 1 = defect, not 255
    mask = read_mask(_save(Image.fromarray(labels), tmp_path / "labels.png"))
    assert torch.equal(mask[0], torch.from_numpy(labels).float())
    assert not read_mask(_save(Image.fromarray(np.zeros((8, 8), np.uint8)), tmp_path / "empty.png")).any()


def test_bad_channel_count(tmp_path):
    path = _save(Image.fromarray(_rgb_array()), tmp_path / "a.png")
    with pytest.raises(ValueError, match="channels"):
        read_image(path, 2)


def test_read_size_matches_the_decoded_image(tmp_path):
    from i3ad.images import read_size

    array = np.zeros((20, 40, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6
    rotated = _save(image, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    plain = _save(image, tmp_path / "plain.png")
    # Pillow turns some TIFFs upright itself while loading them: the size must follow what is decoded.
    tiffs = [_save(image.convert(mode), tmp_path / f"rotated_{mode}.tif", exif=exif.tobytes()) for mode in ("RGB", "L")]
    # A LAB TIFF, which Pillow turns into RGB but not into greyscale (its size was read through greyscale, and failed).
    lab = _save(image.convert("LAB"), tmp_path / "lab.tif")
    for path in (rotated, plain, *tiffs, lab):
        assert read_size(path) == tuple(read_image(path, 3).shape[-2:]), path
    with pytest.raises(ImageReadError, match="no such file"):
        read_size(tmp_path / "missing.png")


def test_an_image_with_a_damaged_exif_block_is_read_upright(tmp_path):
    from i3ad.images import read_size

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "desc"  # ImageDescription, an ASCII value
    path = _save(Image.new("RGB", (40, 20), "gray"), tmp_path / "damaged_exif.jpg", exif=exif)
    data = bytearray(path.read_bytes())
    start = data.find(b"Exif\x00\x00")
    entry = data.find(b"\x01\x0e\x00\x02", start, start + 200)  # the ImageDescription entry (Pillow: big-endian)
    assert start >= 0 and entry >= 0
    data[entry : entry + 2] = b"\x01\x29"  # now tag 297 (PageNumber), which Pillow reads as numbers: a type clash
    path.write_bytes(bytes(data))
    # Pillow's own exif_transpose fails on it (struct.error); the orientation itself is still readable.
    assert read_image(path, 3).shape == (3, 40, 20)
    assert read_size(path) == (40, 20)


def _float_tiff(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32), "F").save(buffer, format="TIFF")
    return buffer.getvalue()


def test_float_images_in_0_1_are_read_as_they_are():
    values = np.linspace(0, 1, 400).reshape(20, 20)
    torch.testing.assert_close(read_image(_float_tiff(values), 1)[0], torch.from_numpy(values).float())


def test_whole_number_float_images_are_read_as_8_bit_values():
    values = np.round(np.linspace(0, 200, 400)).reshape(20, 20)
    torch.testing.assert_close(read_image(_float_tiff(values), 1)[0], torch.from_numpy(values / 255).float())


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (0.0, 1.5, r"float image with values up to 1\.5; float intensities must lie in \[0, 1\]"),
        (-0.5, 0.8, r"F image with negative values \(down to -0\.5\); intensities start at 0"),
    ],
)
def test_float_images_outside_0_1_are_refused_not_rescaled(low, high, message):
    with pytest.raises(ImageReadError, match=message):
        read_image(_float_tiff(np.linspace(low, high, 400).reshape(20, 20)), 1)
