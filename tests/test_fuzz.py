"""Property tests (Hypothesis) of what comes in from outside: image bytes and the app's detect requests.

The property everywhere: the answer is a result, or one of i3ad's documented errors (ImageReadError, ValueError,
CheckpointError; gr.Error from the app), never another exception. Example counts are bounded and deadlines are off
(the machine may be busy). The examples are derandomized, so that the suite is repeatable; I3AD_FUZZ_EXAMPLES=N runs
N random examples per test instead, to search further.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_robustness import save_tiny_checkpoints, upload, write_bad_inputs, write_good_inputs

import app
from i3ad.checkpoints import CheckpointError
from i3ad.hub import CheckpointResolver, check_name
from i3ad.images import ImageReadError, is_greyscale, read_image, read_size

SEARCH_EXAMPLES = int(os.environ.get("I3AD_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=SEARCH_EXAMPLES or 100,
    derandomize=not SEARCH_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout
    # The function-scoped fixtures (the pixel limit) hold constants, the same for every example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data"),  # Pillow, on some mutated files
    pytest.mark.filterwarnings("ignore:Truncated File Read"),  # Pillow, on some mutated files
    pytest.mark.filterwarnings("ignore:No autoencoder baseline checkpoint for grey"),  # the app's notice
]
# Decoding is fuzzed with a 1-megapixel limit: a mutated header may declare any size, and the property does not
# depend on the limit, only the time and memory each example takes.
FUZZ_MAX_PIXELS = 1_000_000
FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F")
# Magic numbers that lead random bytes into each format's parser rather than failing at the first byte.
MAGIC = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\0\0\0\0WEBPVP8 ")


@pytest.fixture(autouse=True)
def small_pixel_limit(monkeypatch):
    monkeypatch.setattr("i3ad.images.MAX_PIXELS", FUZZ_MAX_PIXELS)


def _encoded(image: Image.Image, format_: str, **options) -> bytes | None:
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12 on I-mode PNG, still written
            image.save(buffer, format=format_, **options)
    except (OSError, KeyError, ValueError, TypeError):  # this format cannot store this mode
        return None
    return buffer.getvalue()


def _random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.frombytes(mode, (width, height), rng.bytes(len(Image.new(mode, (width, height)).tobytes())))
    if mode in ("P", "PA"):
        image.putpalette(rng.bytes(768))  # without one, Pillow writes palette files it cannot read back
    return image


def _round_trips(mode: str, format_: str) -> bool:
    """Whether Pillow writes this mode in this format and reads it back (it does not, e.g., for YCbCr TIFF)."""
    data = _encoded(_random_image(mode, 9, 8, 0), format_)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, TypeError, ValueError):  # TypeError: Image.open of None
        return False
    return True


# The (mode, format) pairs to write images in, found once.
WRITABLE = [pair for pair in itertools.product(MODES, FORMATS) if _round_trips(*pair)]


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn, so that mutations reach the orientation code
    exif[0x010E] = "description"
    return exif


# Valid files to mutate: a 24 x 20 RGB image in every format, with an EXIF block where the format holds one, and a
# few other modes.
SEEDS = (
    [_encoded(_random_image("RGB", 24, 20, 1), f) for f in FORMATS]
    + [_encoded(_random_image("RGB", 24, 20, 1), f, exif=_exif()) for f in ("JPEG", "PNG", "TIFF", "WEBP")]
    + [_encoded(_random_image(m, 24, 20, 2), "PNG") for m in ("L", "P", "RGBA", "I;16")]
)


def _check_decoded(data: bytes, channels: int) -> None:
    """The property of decoding: a [channels, H, W] tensor of finite values in [0, 1], or ImageReadError; and a
    size from the header, or ImageReadError."""
    with contextlib.suppress(ImageReadError):
        assert all(side >= 0 for side in read_size(data))
    try:
        tensor = read_image(data, channels)
    except ImageReadError as error:
        assert str(error)
        return
    assert tensor.dtype == torch.float32 and tensor.dim() == 3 and tensor.shape[0] == channels
    assert min(tensor.shape[1:]) >= 8 and tensor.shape[1] * tensor.shape[2] <= FUZZ_MAX_PIXELS
    assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1


@FUZZ
@given(magic=st.sampled_from(MAGIC), data=st.binary(max_size=2048), channels=st.sampled_from([1, 3]))
def test_random_bytes_decode_to_an_image_or_an_image_read_error(magic, data, channels):
    _check_decoded(magic + data, channels)
    with contextlib.suppress(ImageReadError):
        assert isinstance(is_greyscale(magic + data), bool)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    changes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    keep=st.one_of(st.none(), st.floats(0, 1)),
    channels=st.sampled_from([1, 3]),
)
def test_mutated_image_files_decode_to_an_image_or_an_image_read_error(seed, changes, keep, channels):
    data = bytearray(seed)
    for position, value in changes:
        data[position % len(data)] = value
    if keep is not None:
        data = data[: int(len(data) * keep)]
    _check_decoded(bytes(data), channels)


@FUZZ
@given(
    written=st.sampled_from(WRITABLE),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    channels=st.sampled_from([1, 3]),
)
def test_images_of_any_mode_size_and_format_are_read_at_their_size(written, width, height, seed, channels):
    mode, format_ = written
    data = _encoded(_random_image(mode, width, height, seed), format_)
    if min(width, height) < 8:
        with pytest.raises(ImageReadError, match="too small"):
            read_image(data, channels)
        return
    try:
        tensor = read_image(data, channels)
    except ImageReadError as error:
        # Random 32-bit pixels exceed 16 bits, and random floats include NaN: both are refused by design.
        assert mode in ("I", "F"), (mode, format_, error)
        return
    assert tensor.shape == (channels, height, width)
    assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1


@FUZZ
@given(name=st.one_of(st.text(max_size=30), st.text("abc_.-/\\\n", max_size=12)))
def test_checkpoint_names_are_one_safe_path_component_or_refused(name):
    try:
        checked = check_name("category", name)
    except CheckpointError as error:
        assert "is not a valid name" in str(error)
        return
    root = Path("/checkpoints")
    assert (root / checked).parent == root and checked not in (".", "..") and "\n" not in checked


# --- the app's detect requests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> app.Handlers:
    checkpoints = save_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    results = tmp_path_factory.mktemp("results") / "none.csv"
    return app.Handlers(app.AppConfig(CheckpointResolver(checkpoints), results, device="cpu"))


@pytest.fixture(scope="module")
def contents(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of a few good and bad image files, to upload under random names."""
    good = write_good_inputs(tmp_path_factory.mktemp("good"))
    bad = write_bad_inputs(tmp_path_factory.mktemp("bad"))
    files = {**{name: good[name] for name in GOOD}, **bad}
    return {name: path.read_bytes() for name, path in files.items()}


file_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=60
).filter(lambda name: name not in (".", "..") and len(name.encode()) <= 240)
junk = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(), st.none(), st.booleans())
GOOD, BAD = ("rgb.png", "grey16.png", "exif_rotated.jpg"), ("text.png", "truncated.jpg", "nan.tif", "one_pixel.png")


def _request(handlers, folder: Path, category, variant, image: bytes, name: str, iterations, tau) -> None:
    """Upload ``image`` as ``name`` and run the detect handler: a result or a gr.Error naming the user's file."""
    path = folder / name
    path.write_bytes(image)
    try:
        heatmap, mask, _, summary, steps, files = handlers.detect(category, variant, upload(path), iterations, tau)
    except gr.Error as error:
        event("refused")  # the share of each outcome shows with --hypothesis-show-statistics
        assert error.message and str(folder) not in error.message  # the user's file name, not the server's path
        return
    event("detected")
    assert heatmap.size == mask.size and "Anomaly score" in summary and steps
    assert all(Path(f).is_file() for f in files)


def mostly(valid: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` four times in five, else ``other``: so that many requests get as far as running the models."""
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda ok: valid if ok else other)


@FUZZ
@given(
    category=mostly(st.sampled_from(["rgb", "grey"]), st.one_of(st.sampled_from(["nope", "../rgb", "rgb\n"]), junk)),
    variant=mostly(st.just("i3ad"), st.one_of(st.sampled_from(["ae", "AE", "../ae", ""]), junk)),
    iterations=mostly(st.integers(0, 10), st.one_of(st.integers(-3, 14), st.floats(0, 10), junk)),
    tau=mostly(st.one_of(st.none(), st.floats(-1, 1)), st.one_of(st.floats(-1.5, 1.5), junk)),
    content=st.sampled_from(GOOD),
)
def test_detect_requests_with_any_settings_give_a_result_or_a_message(
    handlers, contents, tmp_path_factory, category, variant, iterations, tau, content
):
    _request(
        handlers, tmp_path_factory.mktemp("upload"), category, variant, contents[content], content, iterations, tau
    )


@FUZZ
@given(category=st.sampled_from(["rgb", "grey"]), content=st.sampled_from(GOOD + BAD), name=file_names)
def test_uploads_under_any_name_give_a_result_or_a_message(
    handlers, contents, tmp_path_factory, category, content, name
):
    _request(handlers, tmp_path_factory.mktemp("upload"), category, "i3ad", contents[content], name, 1, None)
