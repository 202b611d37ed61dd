"""Bad and unusual inputs through every entry point: the library, the app's handlers and `python -m i3ad detect`.

Each input goes where it can arrive. The answer is a result, or one of i3ad's errors with a message that names the
problem: ImageReadError / CheckpointError / ValueError from the library, gr.Error from the app, and from the CLI an
"error: ..." line with exit status 2 or, in a folder run, a failed row in scores.csv while the other files are
scored. The models are tiny untrained 64-px checkpoints with made-up thresholds, written in well under a second (the
entry points do not care whether a model is any good).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from tiny_checkpoints import save_untrained_checkpoint

import app
from i3ad.checkpoints import CheckpointError, load_checkpoint
from i3ad.cli import main
from i3ad.data import load_images
from i3ad.detector import AnomalyDetector
from i3ad.hub import CheckpointResolver
from i3ad.images import ImageReadError, read_image
from i3ad.preprocessing import Preprocessing

SIZE = 64
pytestmark = [
    pytest.mark.filterwarnings("ignore:No autoencoder baseline checkpoint for grey"),  # the app's notice
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),  # the 10000 x 10000 PNG, on opening
]
GRADIO_FILE = {"_type": "gradio.FileData"}  # the marker Gradio's page and gradio_client put on uploaded files


# --- builders, also used by test_load.py and test_fuzz.py ------------------------------------------------------------


def save_tiny_checkpoints(root: Path) -> Path:
    """``root/rgb/{i3ad, ae}`` and ``root/grey/i3ad`` (a 1-channel model): untrained 64-px networks."""
    for category, channels, variants in (("rgb", 3, ("i3ad", "ae")), ("grey", 1, ("i3ad",))):
        for variant in variants:
            save_untrained_checkpoint(root, category, variant, size=SIZE, channels=channels)
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A PNG written chunk by chunk (for what Pillow does not write: 16-bit RGB, and huge images fast)."""
    compressor = zlib.compressobj(9)
    data = b"".join([compressor.compress(b"\0" + row) for row in rows] + [compressor.flush()])
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


@functools.cache
def huge_png() -> bytes:
    """A complete, valid 10000 x 10000 RGB PNG (black): 285 KB on disk, 300 MB of pixels once decoded."""
    return png_bytes(10_000, 10_000, 8, 2, [bytes(30_000)] * 10_000)


def _rgb(height: int = 40, width: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_good_inputs(folder: Path) -> dict[str, Path]:
    """One file of each kind that must be scored, 52 x 40 unless the name says otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _rgb()
    images = {
        "rgb.png": Image.fromarray(rgb),
        "grey.png": Image.fromarray(rgb[..., 0]),
        "grey16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "grey_alpha.png": Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), "LA"),
        "bilevel.png": Image.fromarray(rgb).convert("1"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "float.tif": Image.fromarray(rgb[..., 0].astype(np.float32) / 255, "F"),
        "smallest_8x8.png": Image.fromarray(rgb[:8, :8]),
    }
    for name, image in images.items():
        image.save(folder / name)
    Image.fromarray(rgb).convert("P").save(folder / "palette_transparent.png", transparency=0)
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 40 wide, 52 high
    rotated.save(folder / "exif_rotated.jpg", exif=exif.tobytes())
    deep = rgb.astype(">u2") * 257
    (folder / "rgb16.png").write_bytes(png_bytes(52, 40, 16, 2, [row.tobytes() for row in deep]))
    return {p.name: p for p in sorted(folder.iterdir())}


# Files that must be refused, with the part of the message that says why.
BAD_INPUTS = {
    "text.png": "not a readable image",
    "empty.png": "not a readable image",
    "truncated.png": "damaged or truncated",
    "truncated.jpg": "damaged or truncated",
    "one_pixel.png": "1x1 is too small",
    "nan.tif": "NaN or infinite",
    "deep_int.tif": "beyond 16 bits",
    "huge.png": "10000x10000 is larger than the 40 megapixels",
}


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(_rgb(seed=1)).save(png, format="PNG")
    Image.fromarray(_rgb(seed=1)).save(jpeg, format="JPEG")
    (folder / "text.png").write_text("hello, I am not a picture\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    Image.new("RGB", (1, 1)).save(folder / "one_pixel.png")
    not_finite = np.zeros((20, 20), dtype=np.float32)
    not_finite[3, 4] = np.nan
    Image.fromarray(not_finite, "F").save(folder / "nan.tif")
    Image.fromarray(np.full((20, 20), 2**31 - 1, dtype=np.int32), "I").save(folder / "deep_int.tif")
    (folder / "huge.png").write_bytes(huge_png())
    return {name: folder / name for name in BAD_INPUTS}


def upload(path: Path, name: str | None = None) -> dict:
    """The payload Gradio hands the detect event for an uploaded file (``name``: the user's file name)."""
    return {"path": str(path), "orig_name": name or path.name, "meta": GRADIO_FILE}


def summary_score(summary: str) -> str:
    return re.search(r"Anomaly score \*\*([0-9.]+)\*\*", summary).group(1)


class DecodeSpy:
    """Records every decode of pixel data (Pillow's load), to show that a file was refused from its header."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[object] = []
        monkeypatch.setattr(Image.Image, "load", lambda image: self.calls.append(image))
        monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda image: self.calls.append(image))


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return save_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def detectors(checkpoints) -> dict[str, AnomalyDetector]:
    return {name: load_checkpoint(checkpoints / name / "i3ad") for name in ("rgb", "grey")}


@pytest.fixture(scope="module")
def handlers(checkpoints, tmp_path_factory) -> app.Handlers:
    results = tmp_path_factory.mktemp("results") / "none.csv"
    return app.Handlers(app.AppConfig(CheckpointResolver(checkpoints), results, device="cpu"))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    return write_good_inputs(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def library_scores(detectors, good) -> dict[tuple[str, str], str]:
    """{(model, file name): score to 4 decimals} of a direct library call with the checkpoint's defaults."""
    return {
        (model, name): f"{detector.detect(detector.read(path)).scores[0].item():.4f}"
        for model, detector in detectors.items()
        for name, path in good.items()
    }


# --- images of every kind: scored alike by the library, the app and the CLI ------------------------------------------


@pytest.mark.parametrize("model", ["rgb", "grey"])
@pytest.mark.parametrize(
    "name",
    [
        "rgb.png",
        "grey.png",
        "grey16.png",
        "rgb16.png",
        "palette.png",
        "palette_transparent.png",
        "rgba.png",
        "grey_alpha.png",
        "bilevel.png",
        "cmyk.jpg",
        "float.tif",
        "animated.gif",
        "exif_rotated.jpg",
        "smallest_8x8.png",
    ],
)
def test_every_kind_of_image_is_scored_by_the_app_as_by_the_library(handlers, good, library_scores, model, name):
    heatmap, mask, baseline, summary, _, files = handlers.detect(model, "i3ad", upload(good[name]), 1, None)
    assert summary_score(summary) == library_scores[model, name]
    with Image.open(good[name]) as original:
        shown = original.size[::-1] if name == "exif_rotated.jpg" else original.size
    assert heatmap.size == mask.size == shown  # the input's size, upright
    assert (baseline is not None) == (model == "rgb")  # only rgb has an autoencoder baseline
    assert len(files) == 3 and all(Path(f).is_file() for f in files)


def test_cli_folder_run_scores_every_kind_and_reports_each_bad_file(checkpoints, good, bad, library_scores, tmp_path):
    folder = tmp_path / "inputs"
    shutil.copytree(good["rgb.png"].parent, folder)
    shutil.copytree(bad["text.png"].parent, folder / "bad")
    for model in ("rgb", "grey"):
        out = tmp_path / f"out_{model}"
        checkpoint = str(checkpoints / model / "i3ad")
        assert main(["detect", str(folder), "--checkpoint", checkpoint, "--out", str(out), "--device", "cpu"]) == 0
        with open(out / "scores.csv", newline="") as handle:
            rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
        assert set(rows) == set(good) | set(bad)
        for name in good:
            assert rows[name]["error"] == "" and rows[name]["score"] == library_scores[model, name], name
            assert Path(rows[name]["heatmap"]).is_file()
        for name, message in BAD_INPUTS.items():
            assert message in rows[name]["error"] and rows[name]["score"] == "", name


# --- files that are not usable images --------------------------------------------------------------------------------


# test_images.py and test_app.py already cover text files and truncated PNGs; the huge PNG has its own test below.
@pytest.mark.parametrize("name", ["empty.png", "truncated.jpg", "one_pixel.png", "nan.tif", "deep_int.tif"])
def test_bad_files_get_a_clear_error_from_the_library_and_the_app(handlers, detectors, bad, name):
    with pytest.raises(ImageReadError, match=re.escape(BAD_INPUTS[name])):
        detectors["rgb"].read(bad[name])
    with pytest.raises(gr.Error, match=re.escape(BAD_INPUTS[name])) as error:
        handlers.detect("rgb", "i3ad", upload(bad[name], name=f"my {name}"), 1, None)
    # The message names the user's file, not the server's copy of it.
    assert f"my {name}" in error.value.message and str(bad[name]) not in error.value.message


def test_file_and_model_names_in_messages_are_shown_as_text(handlers, bad):
    # Gradio shows error messages as (sanitised) HTML: a file name must not become markup.
    with pytest.raises(gr.Error) as error:
        handlers.detect("rgb", "i3ad", upload(bad["text.png"], name="<img src=x>&.png"), 1, None)
    assert error.value.message.startswith("&lt;img src=x&gt;&amp;.png: not a readable image")
    # So must a category or model name a request carries, in whichever handler refuses it.
    for refused in (lambda: handlers.on_category("<b>x</b>"), lambda: handlers.model_controls("rgb", "<b>x</b>")):
        with pytest.raises(gr.Error) as error:
            refused()
        assert "&lt;b&gt;x&lt;/b&gt;" in error.value.message and "<b>" not in error.value.message


def test_a_10000_pixel_square_png_is_refused_before_decoding(handlers, checkpoints, bad, tmp_path, monkeypatch, capsys):
    spy = DecodeSpy(monkeypatch)
    with pytest.raises(gr.Error, match=r"10000x10000 is larger than the 40 megapixels .*; downscale it first"):
        handlers.detect("rgb", "i3ad", upload(bad["huge.png"]), 1, None)
    out = tmp_path / "out"
    args = ["detect", str(bad["huge.png"]), "--checkpoint", str(checkpoints / "rgb" / "i3ad"), "--out", str(out)]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--device", "cpu"])
    assert exit_.value.code == 1  # nothing could be scored
    assert "10000x10000 is larger than the 40 megapixels" in capsys.readouterr().err
    with open(out / "scores.csv", newline="") as handle:
        assert "larger than the 40 megapixels" in next(csv.DictReader(handle))["error"]
    assert spy.calls == []


def test_a_decompression_bomb_header_gets_the_size_message():
    # Pillow refuses this on opening (above twice its own limit), before i3ad's size check could.
    with pytest.raises(ImageReadError, match=r"larger than the 40 megapixels .*downscale it first"):
        read_image(png_bytes(20_000, 20_000, 1, 0, [b"\0"]), 3)


def test_files_are_closed_after_reading(good, bad):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        read_image(good["animated.gif"], 3)  # Pillow keeps multi-frame files open until they are closed
        with pytest.raises(ImageReadError):
            read_image(bad["huge.png"], 3)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_colour_modes_that_cannot_be_converted_are_refused(tmp_path):
    Image.fromarray(_rgb()).convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ImageReadError, match=r"lab\.tif: colour mode LAB cannot be converted .*save it as RGB"):
        read_image(tmp_path / "lab.tif", 1)


def test_float_images_in_0_to_1_are_taken_as_they_are(good):
    expected = torch.from_numpy(_rgb()[..., 0].astype(np.float32) / 255)
    assert torch.equal(read_image(good["float.tif"], 1)[0], expected)


def test_loading_a_set_with_one_bad_file_names_that_file(good, bad):
    # Training and evaluation read whole sets: one bad file stops them, with its name, rather than being left out.
    paths = [good["rgb.png"], bad["truncated.png"], good["grey.png"]]
    with pytest.raises(ImageReadError, match=re.escape(f"{bad['truncated.png']}: the file is damaged")):
        load_images(paths, Preprocessing(SIZE, 3), workers=2)


# --- the app's detect request: image payload, T and tau --------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "Upload an image"),
        ({"path": "", "meta": GRADIO_FILE}, "Upload an image"),
        ({"path": "OUTSIDE", "orig_name": "x.png"}, "must be a file uploaded to this app"),
        ({"path": "OUTSIDE", "meta": GRADIO_FILE}, "must be a file uploaded to this app"),
        ({"path": "UPLOADS/../OUTSIDE", "meta": GRADIO_FILE}, "must be a file uploaded to this app"),
        ({"path": "UPLOADS/link.png", "meta": GRADIO_FILE}, "must be a file uploaded to this app"),  # to OUTSIDE
        ({"path": "UPLOADS/\u0000.png", "meta": GRADIO_FILE}, "must be a file uploaded to this app"),
        ({"path": ["UPLOADS/rgb.png"], "meta": GRADIO_FILE}, "must be a file uploaded to this app"),
        (7, "must be a file uploaded to this app"),
        ({"path": "UPLOADS/expired.png", "meta": GRADIO_FILE}, "no longer on the server .*upload it again"),
    ],
)
def test_the_app_reads_only_files_in_its_upload_folder(handlers, good, tmp_path, monkeypatch, payload, message):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    shutil.copy(good["rgb.png"], uploads / "rgb.png")
    (uploads / "link.png").symlink_to(good["rgb.png"])
    monkeypatch.setattr(handlers, "upload_folder", uploads)  # as build_app sets it, to Gradio's cache
    replaced = json.dumps(payload).replace("UPLOADS", str(uploads)).replace("OUTSIDE", str(good["rgb.png"]))
    with pytest.raises(gr.Error, match=message):
        handlers.detect("rgb", "i3ad", json.loads(replaced), 1, None)
    *_, summary, _, _ = handlers.detect("rgb", "i3ad", upload(uploads / "rgb.png"), 1, None)
    assert "Anomaly score" in summary


@pytest.mark.parametrize(
    ("iterations", "tau", "message"),
    [
        (float("nan"), None, "iterations must be a whole number from 0 to 10, got nan"),
        (float("inf"), None, "iterations must be a whole number from 0 to 10, got inf"),
        (2.5, None, "iterations must be a whole number from 0 to 10, got 2.5"),
        ("3", None, "iterations must be a whole number from 0 to 10, got '3'"),
        (True, None, "iterations must be a whole number from 0 to 10, got True"),
        ([1], None, r"iterations must be a whole number from 0 to 10, got \[1\]"),
        (-1, None, r"iterations must be between 0 and 10 \(the score thresholds are calibrated up to there\), got -1"),
        (11, None, "iterations must be between 0 and 10 .*got 11"),
        (1e300, None, "iterations must be between 0 and 10 .*got 1e\\+300"),
        pytest.param(10**400, None, r"between 0 and 10 .*got 10{20}\.\.\.", id="400 digits, cut short"),
        (1, float("nan"), "tau must be a number from -1 to 1, got nan"),
        (1, float("-inf"), "tau must be a number from -1 to 1, got -inf"),
        (1, 1.5, "tau must be a number from -1 to 1, got 1.5"),
        (1, "0.5", "tau must be a number from -1 to 1, got '0.5'"),
        pytest.param(1, "x" * 1000, r"tau must be a number from -1 to 1, got 'x{20}\.\.\.", id="long text"),
    ],
)
def test_out_of_range_and_non_numeric_settings_get_a_clear_error(handlers, good, iterations, tau, message):
    with pytest.raises(gr.Error, match=message):
        handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), iterations, tau)


@pytest.mark.parametrize(("iterations", "tau", "expected"), [(2.0, None, 2), (np.int64(0), -1.0, 0), (10, 1, 10)])
def test_whole_floats_numpy_numbers_and_the_range_ends_are_accepted(handlers, good, iterations, tau, expected):
    *_, summary, steps, _ = handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), iterations, tau)
    shown = "Iterations T = 0: step 0 alone" if expected == 0 else f"Iterations T = {expected}, SSIM threshold tau"
    assert shown in summary and len(steps) == 3 * (expected + 1)


def test_a_name_with_a_trailing_newline_is_refused(handlers, good, checkpoints):
    # A regular expression's "$" would match before a final newline; the app and the Hub resolver refuse it.
    with pytest.raises(gr.Error) as error:
        handlers.detect("rgb\n", "i3ad", upload(good["rgb.png"]), 1, None)
    assert error.value.message.startswith("category 'rgb\\n' is not a valid name")
    with pytest.raises(CheckpointError, match=r"variant 'i3ad\\n' is not a valid name"):
        CheckpointResolver(checkpoints).resolve("rgb", "i3ad\n")


def test_long_file_names_are_cut_for_the_output_files(handlers, checkpoints, good, tmp_path):
    long = tmp_path / f"{'x' * 250}.png"  # fits the file system; "<name>_heatmap.png" would not
    shutil.copy(good["rgb.png"], long)
    *_, files = handlers.detect("rgb", "i3ad", upload(long), 1, None)
    assert sorted(Path(f).name for f in files) == [
        f"{'x' * 100}_{suffix}" for suffix in ("heatmap.png", "mask.png", "scores.csv")
    ]
    out = tmp_path / "out"
    assert main(["detect", str(long), "--checkpoint", str(checkpoints / "rgb" / "i3ad"), "--out", str(out)]) == 0
    assert [p.name for p in (out / "heatmaps").iterdir()] == [f"00000_{'x' * 100}.png"]


def test_large_inputs_are_drawn_at_most_display_max_side(handlers, good, library_scores, monkeypatch):
    monkeypatch.setattr("i3ad.visualize.DISPLAY_MAX_SIDE", 26)
    heatmap, mask, baseline, summary, *_ = handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), 1, None)
    assert heatmap.size == mask.size == baseline.size == (26, 20)  # 52 x 40 halved, the aspect ratio kept
    assert summary_score(summary) == library_scores["rgb", "rgb.png"]  # the pictures only: not the detection


# --- GPU out of memory (simulated: it cannot happen on the CPU) ------------------------------------------------------


def _out_of_memory(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def test_gpu_out_of_memory_in_the_app_is_a_message(handlers, good, monkeypatch):
    monkeypatch.setattr(AnomalyDetector, "detect", _out_of_memory)
    with pytest.raises(gr.Error, match=r"The GPU ran out of memory .*try again in a moment"):
        handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), 1, None)


def test_cpu_out_of_memory_in_the_app_is_a_message(handlers, good, monkeypatch):
    def out_of_cpu_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB (simulated)")

    monkeypatch.setattr(AnomalyDetector, "detect", out_of_cpu_memory)
    with pytest.raises(gr.Error, match="The computer ran out of memory during the detection"):  # was a bare Error
        handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), 1, None)


def test_gpu_out_of_memory_on_one_image_of_a_cli_run_skips_only_that_image(checkpoints, good, tmp_path, monkeypatch):
    real_detect = AnomalyDetector.detect

    def detect(self, images, **kwargs):
        return _out_of_memory() if images.shape[-2:] == (8, 8) else real_detect(self, images, **kwargs)

    monkeypatch.setattr(AnomalyDetector, "detect", detect)
    inputs = [str(good[name]) for name in ("rgb.png", "smallest_8x8.png", "grey.png")]
    out = tmp_path / "out"
    assert main(["detect", *inputs, "--checkpoint", str(checkpoints / "rgb" / "i3ad"), "--out", str(out)]) == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert rows["smallest_8x8.png"]["error"] == "the GPU ran out of memory on this image; try --device cpu"
    assert rows["rgb.png"]["score"] and rows["grey.png"]["score"]


@pytest.mark.parametrize(
    ("error", "where"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"), "the GPU"),
        # What torch's CPU allocator raises, a plain RuntimeError: it ended the CLI in a traceback.
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB (simulated)"),
            "the computer",
        ),
    ],
)
def test_running_out_of_memory_in_a_cli_run_is_a_message_that_says_what_helps(monkeypatch, capsys, error, where):
    def out_of_memory(args):
        raise error

    monkeypatch.setattr("i3ad.cli.cmd_report", out_of_memory)
    assert main(["report"]) == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: {where} ran out of memory; use a smaller --batch-size, and for evaluate fewer")

    def other_failure(args):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr("i3ad.cli.cmd_report", other_failure)
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError is left as it is
        main(["report"])


# --- damaged checkpoints and bad settings through the app and the CLI ------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _widen(config: Path) -> None:
    config.write_text(json.dumps({**json.loads(config.read_text()), "base_width": 8}))


DAMAGES = {
    "truncated weights": (lambda f: _truncate(f / "model.safetensors"), r"model\.safetensors is damaged or not a"),
    "config not matching the weights": (lambda f: _widen(f / "config.json"), r"does not match .*config\.json"),
    "missing config": (lambda f: (f / "config.json").unlink(), r"config\.json is missing"),
    "invalid detector.json": (lambda f: (f / "detector.json").write_text("{"), r"detector\.json is not valid JSON"),
    "no score thresholds": (
        lambda f: _edit_record(f, lambda record: record["calibration"].update(score_thresholds=[])),
        r"detector\.json is incomplete or invalid: .*score_thresholds must be a non-empty list",
    ),
    "a score threshold as text": (
        lambda f: _edit_record(f, lambda record: record["calibration"].update(score_thresholds="0.3")),
        r"detector\.json is incomplete or invalid: .*score_thresholds must be a non-empty list",
    ),
    "no category": (
        lambda f: _edit_record(f, lambda record: record.update(category=None)),
        r"detector\.json is incomplete or invalid: .*category None is not a valid name",
    ),
    "a category naming a parent folder": (
        lambda f: _edit_record(f, lambda record: record.update(category="../rgb")),
        r"detector\.json is incomplete or invalid: .*category .*\.\./rgb.* is not a valid name",
    ),
    "a normal error of whole numbers": (
        lambda f: safetensors.torch.save_file(
            {"mean_anomaly_maps": torch.zeros(11, 1, 8, 8, dtype=torch.int8)}, f / "normal_error.safetensors"
        ),
        r"normal_error\.safetensors is not a normal-error file .*floating-point values, got torch\.int8",
    ),
    "truncated normal error": (
        lambda f: _truncate(f / "normal_error.safetensors"),
        r"normal_error\.safetensors is damaged or not a safetensors file",
    ),
}


def _edit_record(folder: Path, change) -> None:
    record = json.loads((folder / "detector.json").read_text())
    change(record)
    (folder / "detector.json").write_text(json.dumps(record))


@pytest.fixture
def damaged(checkpoints, tmp_path) -> Path:
    """A copy of the checkpoints root, to break."""
    return Path(shutil.copytree(checkpoints, tmp_path / "damaged"))


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_gets_a_clear_error_from_the_app_and_the_cli(damaged, good, tmp_path, damage, cli_error):
    change, message = DAMAGES[damage]
    change(damaged / "rgb" / "i3ad")
    handlers = app.Handlers(app.AppConfig(CheckpointResolver(damaged), tmp_path / "none.csv", device="cpu"))
    with pytest.raises(gr.Error, match=message):
        handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), 1, None)
    with pytest.raises(gr.Error, match=message):
        handlers.on_category("rgb")  # its only model
    args = ["detect", str(good["rgb.png"]), "--checkpoint", str(damaged / "rgb" / "i3ad"), "--out", str(tmp_path)]
    assert main(args) == 2
    assert re.search(message, cli_error())


def test_a_damaged_baseline_leaves_out_only_the_baseline(damaged, good, tmp_path, library_scores):
    _truncate(damaged / "rgb" / "ae" / "model.safetensors")
    handlers = app.Handlers(app.AppConfig(CheckpointResolver(damaged), tmp_path / "none.csv", device="cpu"))
    with pytest.warns(UserWarning, match="No usable autoencoder baseline checkpoint for rgb"):
        heatmap, _, baseline, summary, _, _ = handlers.detect("rgb", "i3ad", upload(good["rgb.png"]), 1, None)
    assert heatmap is not None and baseline is None
    assert summary_score(summary) == library_scores["rgb", "rgb.png"]
    # Chosen itself, the damaged baseline says what is wrong.
    with pytest.raises(gr.Error, match=r"model\.safetensors is damaged"):
        handlers.detect("rgb", "ae", upload(good["rgb.png"]), 0, None)


def test_the_app_opens_on_another_model_of_a_category_whose_default_is_damaged(checkpoints, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoints / "rgb", root / "rgb")
    shutil.copytree(root / "rgb" / "i3ad", root / "rgb" / "i3ad-small")  # the default on a CPU ...
    _truncate(root / "rgb" / "i3ad-small" / "model.safetensors")  # ... is damaged
    config = app.AppConfig(CheckpointResolver(root), tmp_path / "none.csv", device="cpu")
    demo = app.build_app(config)
    menu = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "variant")
    assert menu.value == "i3ad"
    # Chosen again in the category menu, it opens the same way (it kept the damaged default's menu entry before).
    menu, *_ = app.Handlers(config).on_category("rgb")
    assert menu["value"] == "i3ad"


def test_the_app_opens_on_a_working_model_when_the_first_is_damaged(damaged, tmp_path):
    config = app.AppConfig(CheckpointResolver(damaged), tmp_path / "none.csv", device="cpu")
    _truncate(damaged / "grey" / "i3ad" / "model.safetensors")  # "grey" comes first
    demo = app.build_app(config)
    menu = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "category")
    assert menu.value == "rgb" and menu.choices == [("grey", "grey"), ("rgb", "rgb")]
    (damaged / "rgb" / "i3ad" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint could be loaded: .*safetensors.*config\.json is missing"):
        app.build_app(config)


def test_the_app_refuses_an_invalid_hub_repo_name(checkpoints, monkeypatch):
    monkeypatch.setenv("I3AD_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("I3AD_HUB_REPO", "../../etc")
    with pytest.raises(CheckpointError, match=re.escape("'../../etc' is not a valid Hugging Face Hub repo id")):
        app.build_app()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--iterations", "11"], "iterations must be between 0 and 10 (the score thresholds are calibrated"),
        (["--iterations", "-1"], "iterations must be between 0 and 10"),
        (["--ssim-threshold", "nan"], "the SSIM threshold tau must be a number from -1 to 1, got nan"),
        (["--ssim-threshold", "1.5"], "the SSIM threshold tau must be a number from -1 to 1, got 1.5"),
    ],
)
def test_cli_checks_its_settings_before_reading_any_image(
    checkpoints, good, tmp_path, monkeypatch, option, message, cli_error
):
    spy = DecodeSpy(monkeypatch)
    args = [
        "detect",
        str(good["rgb.png"]),
        "--checkpoint",
        str(checkpoints / "rgb" / "i3ad"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*args, *option]) == 2
    assert message in cli_error()
    assert spy.calls == [] and not (tmp_path / "out").exists()


def test_cli_refuses_folders_without_images_and_an_output_path_that_is_a_file(checkpoints, good, tmp_path, cli_error):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    checkpoint = ["--checkpoint", str(checkpoints / "rgb" / "i3ad")]
    for folder in ("empty", "notes"):
        assert main(["detect", str(tmp_path / folder), *checkpoint, "--out", str(tmp_path / "out")]) == 2
        assert f"{tmp_path / folder} holds no image files (.png, " in cli_error()
    (tmp_path / "taken").write_text("a file, not a folder")
    assert main(["detect", str(good["rgb.png"]), *checkpoint, "--out", str(tmp_path / "taken")]) == 2
    assert f"--out {tmp_path / 'taken'}: cannot write to {tmp_path / 'taken' / 'heatmaps'}" in cli_error()


# --- tensors into the library ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("variant", ["i3ad", "ae"])
def test_the_detector_refuses_non_finite_tensors(checkpoints, variant, value):
    detector = load_checkpoint(checkpoints / "rgb" / variant)
    image = torch.rand(3, 30, 40)  # resized by the detector
    image[1, 5, 7] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        detector.detect(image)
    batch = torch.rand(2, 3, SIZE, SIZE)  # at the model's size: not resized
    batch[1, 0, 0, 0] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        detector.detect(batch)


def test_an_empty_batch_gives_an_empty_result(detectors):
    # What an empty folder becomes through load_images: no scores, no error.
    assert detectors["rgb"].detect(torch.empty(0, 3, SIZE, SIZE)).scores.shape == (0,)


# Found while hardening; the fixes belong in files outside this change (preprocessing.py, scoring.py, detector.py).
def test_an_image_tensor_without_pixels_is_a_value_error(detectors):
    with pytest.raises(ValueError):
        detectors["rgb"].detect(torch.rand(1, 3, 0, 20))


def test_an_8_bit_tensor_is_scaled_and_other_integers_refused(detectors):
    image = (torch.rand(3, 40, 40) * 255).to(torch.uint8)
    torch.testing.assert_close(
        detectors["rgb"].detect(image).scores, detectors["rgb"].detect(image.float() / 255).scores
    )
    with pytest.raises(ValueError, match="dtype"):
        detectors["rgb"].detect(image.to(torch.int32))
    # 0-255 values in a float tensor are the common mistake: refused, not clamped into a white image.
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values from 0 to 25\d"):
        detectors["rgb"].detect(image.float())
    with pytest.raises(ValueError, match="float images must lie in"):
        detectors["rgb"].detect(image.float() / 255 - 0.5)


def test_a_numpy_array_is_a_clear_error(detectors):
    with pytest.raises((TypeError, ValueError), match="tensor"):
        detectors["rgb"].detect(np.random.rand(3, 40, 40).astype(np.float32))


def test_iteration_counts_outside_the_calibrated_range_are_a_value_error(detectors):
    detector = detectors["rgb"]
    for iterations in (2.5, -1, 11, 50):
        with pytest.raises(ValueError, match="iterations must be"):
            detector.detect(torch.rand(3, 40, 40), iterations=iterations)
        with pytest.raises(ValueError, match="iterations must be"):
            detector.is_anomalous(torch.zeros(2), iterations)  # -1 would pick the last threshold by index
