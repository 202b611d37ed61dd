"""Checkpoint folders: exact round trips, and clear errors for everything that can be wrong with one."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import stat
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import safetensors.torch
import torch

from i3ad import outputs
from i3ad.calibration import Calibration
from i3ad.checkpoints import (
    CheckpointError,
    DamagedFileError,
    list_checkpoints,
    load_checkpoint,
    load_model,
    model_card,
    save_checkpoint,
    save_record,
)
from i3ad.detector import AnomalyDetector
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.normal_error import NormalError
from i3ad.outputs import ensure_writable_folder, write_csv
from i3ad.pipeline import calibrate
from i3ad.preprocessing import Preprocessing
from i3ad.scoring import DetectionSettings


def _normal_error(steps: int) -> NormalError:
    """Small maps that float16 stores exactly, so that a round trip must give them back bit for bit."""
    maps = 0.1 * torch.rand(steps, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return NormalError(maps.half().float())


def _detector(model=None, channels: int = 3) -> AnomalyDetector:
    if model is None:
        torch.manual_seed(0)
        model = InpaintingUNet(channels=channels, base_width=8).eval()
    return AnomalyDetector(
        model=model,
        preprocessing=Preprocessing(image_size=32, channels=channels, normalization="standardize"),
        settings=DetectionSettings(iterations=2, ssim_threshold=0.4321, step0_cell_size=4, smoothing_sigma=2.0),
        calibration=Calibration(0.4321, 0.01, [0.11 * (t + 1) for t in range(11)], 5, _normal_error(3)),
        category="widget",
        name="i3ad-test",
        info={
            "training": {"steps": 3, "batch_size": 2},
            "train_log": [{"step": 3, "loss": 0.5, "seconds": 1.0}],
            "command": "python -m i3ad train --data-root /data/on/gpu --out /scratch/ck --category widget",
            "calibrate_command": "python -m i3ad calibrate /scratch/ck/widget/i3ad-test /scratch/ck/gadget/i3ad-test "
            "'--data-root=/data/on/gpu' --iterations 2",
        },
    )


@pytest.fixture
def saved(tmp_path) -> tuple[AnomalyDetector, Path]:
    detector = _detector()
    return detector, save_checkpoint(detector, tmp_path / "widget" / "i3ad-test")


def test_round_trip(saved):
    detector, folder = saved
    files = {"README.md", "config.json", "detector.json", "model.safetensors", "normal_error.safetensors"}
    assert {p.name for p in folder.iterdir()} == files
    loaded = load_checkpoint(folder)
    assert isinstance(loaded.model, InpaintingUNet)
    assert loaded.model.config == detector.model.config
    assert not loaded.model.training
    original, restored = detector.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert restored[key].dtype == original[key].dtype
        assert torch.equal(restored[key], original[key]), key
    assert loaded.settings == detector.settings
    assert loaded.calibration == detector.calibration
    assert torch.equal(loaded.calibration.normal_error.maps, detector.calibration.normal_error.maps)
    assert loaded.preprocessing == detector.preprocessing
    assert (loaded.category, loaded.name, loaded.kind) == ("widget", "i3ad-test", "i3ad")
    assert loaded.info == detector.info
    # The loaded model computes exactly what the saved one did (on the same device, hence in the same memory format).
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.detect(images).scores, detector.to("cpu").detect(images).scores)
    card = (folder / "README.md").read_text()
    assert "widget" in card and "InpaintingUNet" in card
    # The card shows the recorded commands with the training machine's paths as placeholders; calibrate's
    # checkpoint folders (it may have calibrated several at once) become this checkpoint's.
    assert "python -m i3ad train --data-root DATA_ROOT --out OUT --category widget" in card
    assert "python -m i3ad calibrate CHECKPOINT --data-root=DATA_ROOT --iterations 2  # then" in card
    assert "/data/on/gpu" not in card and "/scratch" not in card
    assert "(DATA_ROOT: the folder that held the category in the MVTec AD layout; OUT: the checkpoints root" in card
    assert "; CHECKPOINT: this checkpoint's folder (OUT/<category>/<name> of the training command).)" in card
    assert list_checkpoints(folder.parent.parent) == {"widget": ["i3ad-test"]}


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [
        # Options before the folders, and folders between options.
        (
            "python -m i3ad calibrate --data-root /d ck/a/x ck/b/x",
            "python -m i3ad calibrate --data-root DATA_ROOT CHECKPOINT",
        ),
        (
            "python -m i3ad calibrate --shrinking-masks ck/a/x ck/b/x --data-root /d",
            "python -m i3ad calibrate --shrinking-masks CHECKPOINT --data-root DATA_ROOT",
        ),
        # Abbreviated options, as argparse accepts them, and the --option=value form.
        (
            "python -m i3ad train --ou /scratch/ck --data-r /d --category a",
            "python -m i3ad train --ou OUT --data-r DATA_ROOT --category a",
        ),
        (
            "python -m i3ad train --out=/scratch/ck --data-root=/d --category a",
            "python -m i3ad train --out=OUT --data-root=DATA_ROOT --category a",
        ),
        # The output of evaluate is a table, not a checkpoints root: shown as it is.
        (
            "python -m i3ad evaluate --data-root /d --out r.csv",
            "python -m i3ad evaluate --data-root DATA_ROOT --out r.csv",
        ),
        # Not readable by the parser (an option of another version): shown as it is.
        (
            "python -m i3ad train --data-root /d --category a --geometry twisted",
            "python -m i3ad train --data-root /d --category a --geometry twisted",
        ),
    ],
)
def test_model_card_commands_show_paths_as_placeholders_wherever_they_stand(recorded, shown):
    detector = _detector()
    detector.info = {**detector.info, "command": recorded}
    detector.info.pop("calibrate_command")
    assert f"\n{shown}\n" in model_card(detector)


def test_model_card_shows_a_command_that_is_no_command_line_as_it_is():
    detector = _detector()
    detector.info = {
        **detector.info,
        "command": "edited 'by hand",
        "calibrate_command": "python -m i3ad calibrate x --data-root d",
    }
    card = model_card(detector)
    assert "edited 'by hand\npython -m i3ad calibrate CHECKPOINT --data-root DATA_ROOT  # then" in card


def test_autoencoder_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ConvAutoencoder(channels=1, image_size=32, base_width=8, latent_dim=16).eval()
    detector = _detector(model, channels=1)
    detector.calibration = Calibration(None, None, [0.7], 4, _normal_error(1))
    loaded = load_checkpoint(save_checkpoint(detector, tmp_path / "ae"))
    assert isinstance(loaded.model, ConvAutoencoder) and loaded.kind == "ae"
    assert loaded.model.config == {"channels": 1, "image_size": 32, "base_width": 8, "latent_dim": 16}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.calibration == detector.calibration


def test_half_precision_round_trip(tmp_path):
    detector = _detector()
    folder = save_checkpoint(detector, tmp_path / "half", half_precision=True)
    full = save_checkpoint(detector, tmp_path / "full")
    stored = safetensors.torch.load_file(folder / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert (folder / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = load_checkpoint(folder)
    rounded_somewhere = False
    for key, value in detector.model.state_dict().items():
        restored = loaded.model.state_dict()[key]
        assert restored.dtype == torch.float32
        assert torch.equal(restored, value.half().float()), key
        rounded_somewhere |= not torch.equal(restored, value)
    assert rounded_somewhere  # the float16 rounding is real, and it is exactly what came back


def test_save_record_updates_settings_but_not_weights(saved):
    detector, folder = saved
    weights = (folder / "model.safetensors").read_bytes()
    detector.settings = detector.settings.with_(iterations=5)
    save_record(detector, folder)
    assert load_checkpoint(folder).settings.iterations == 5
    assert (folder / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("failing_file", ["model.safetensors", "README.md"])
def test_a_save_that_fails_part_way_leaves_the_checkpoint_there_whole(saved, monkeypatch, failing_file):
    _, folder = saved
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    replacement = _detector(InpaintingUNet(channels=3, base_width=4).eval())
    real_open = open

    class DiskFullWhileWriting:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            self.file.close()

        def write(self, data):
            self.file.write(data[:7])
            raise OSError(errno.ENOSPC, "No space left on device")

    def disk_full_at(path, mode="r", **kwargs):
        file = real_open(path, mode, **kwargs)
        return DiskFullWhileWriting(file) if failing_file in Path(path).name else file

    monkeypatch.setattr(outputs, "open", disk_full_at, raising=False)  # what the module's open() finds first
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(replacement, folder)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # no partial file left either
    save_checkpoint(replacement, folder)
    assert load_checkpoint(folder).model.config["base_width"] == 4


def test_normal_error_file_missing_or_damaged(saved):
    _, folder = saved
    path = folder / "normal_error.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DamagedFileError, match=r"normal_error\.safetensors is damaged") as damaged:
        load_checkpoint(folder)
    assert damaged.value.path == path
    # Whole files that are not what this version reads: not damaged (downloading them again would not help).
    safetensors.torch.save_file({"other": torch.zeros(2, 1, 4, 4)}, path)
    with pytest.raises(CheckpointError, match=r"normal_error\.safetensors is not a normal-error file") as refused:
        load_checkpoint(folder)
    assert not isinstance(refused.value, DamagedFileError)
    safetensors.torch.save_file({"mean_anomaly_maps": torch.full((2, 1, 4, 4), float("nan"))}, path)
    with pytest.raises(CheckpointError, match="NaN") as refused:
        load_checkpoint(folder)
    assert not isinstance(refused.value, DamagedFileError)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"normal_error\.safetensors is missing"):
        load_checkpoint(folder)


def test_record_without_normal_error_scores_raw_maps(saved):
    """A detector.json written before the normal error existed loads with raw maps; saving it drops the file."""
    detector, folder = saved
    record = json.loads((folder / "detector.json").read_text())
    del record["detection"]["subtract_normal_error"]
    (folder / "detector.json").write_text(json.dumps(record))
    loaded = load_checkpoint(folder)
    assert not loaded.settings.subtract_normal_error and loaded.calibration.normal_error is None
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    raw = loaded.detect(images).anomaly_map
    excess = detector.to("cpu").detect(images).anomaly_map
    last_step = detector.settings.iterations
    assert torch.equal(excess, detector.calibration.normal_error.subtract(raw, last_step))
    assert not torch.equal(excess, raw)
    save_record(loaded, folder)
    assert not (folder / "normal_error.safetensors").exists()


def test_no_pickle_is_loaded(saved, monkeypatch):
    _, folder = saved

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    load_checkpoint(folder)


def test_pickle_weights_next_to_missing_safetensors_are_not_used(saved, monkeypatch):
    detector, folder = saved
    torch.save(detector.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_checkpoint(folder)
    assert loads == []


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["config.json", "detector.json"])
def test_missing_json(saved, name):
    _, folder = saved
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name} is missing"):
        load_checkpoint(folder)


def test_missing_weights(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        load_checkpoint(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "tiny"])
def test_damaged_weights(saved, damage):
    _, folder = saved
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    replacement = {
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 40,
        "empty": b"",
        "tiny": b"\x01\x02\x03",
    }[damage]
    weights.write_bytes(replacement)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged or not a safetensors file"):
        load_checkpoint(folder)


def _rewrite_config(folder: Path, **changes) -> None:
    """Change keys of a saved checkpoint's config.json (a value of None deletes the key)."""
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_config_that_does_not_match_the_weights(saved):
    _, folder = saved
    _rewrite_config(folder, base_width=16)
    # The message names what does not match (torch's first detail line), not only torch's heading that ends in ":".
    with pytest.raises(
        CheckpointError, match=r"does not match .*config\.json: Error\(s\) in loading .*: size mismatch"
    ):
        load_checkpoint(folder)


def test_a_config_of_absurd_sizes_is_refused_without_building_that_network(saved):
    _, folder = saved
    _rewrite_config(folder, base_width=1_048_576)  # 40 TB of weights: allocating them failed with a RuntimeError
    with pytest.raises(CheckpointError, match=r"does not match .*config\.json"):
        load_checkpoint(folder)
    _rewrite_config(folder, base_width=10**10)  # beyond any tensor's size, even without memory
    with pytest.raises(CheckpointError, match=r"config\.json does not describe a valid InpaintingUNet"):
        load_checkpoint(folder)
    _rewrite_config(folder, base_width=8, bottleneck_blocks=10**6)  # building it took hours before any refusal
    with pytest.raises(CheckpointError, match="at most 10 levels and 64 bottleneck blocks, got 5 and 1000000"):
        load_checkpoint(folder)


@pytest.mark.parametrize("file", ["config.json", "detector.json"])
def test_an_unreadable_file_is_a_checkpoint_error(saved, file):
    _, folder = saved
    (folder / file).unlink()
    (folder / file).mkdir()  # an OSError other than a missing file (IsADirectoryError) escaped as it was
    with pytest.raises(CheckpointError, match=f"{file} cannot be read"):
        load_checkpoint(folder)
    if file == "detector.json":  # and such a folder is not offered as a checkpoint
        assert list_checkpoints(folder.parent.parent) == {}


def test_only_an_input_output_error_makes_a_file_damaged(saved, monkeypatch):
    _, folder = saved
    for code, damaged in ((errno.EIO, True), (errno.EACCES, False)):

        def failing_read(path: Path, *args, code=code, **kwargs) -> str:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(Path, "read_text", failing_read)
        with pytest.raises(CheckpointError, match=r"detector\.json cannot be read") as error:
            load_checkpoint(folder)
        assert isinstance(error.value, DamagedFileError) == damaged


def test_weights_with_a_missing_tensor_are_refused(saved):
    _, folder = saved
    state = safetensors.torch.load_file(folder / "model.safetensors")
    state.pop(next(iter(state)))
    safetensors.torch.save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(folder)


@pytest.mark.parametrize("name", ["config.json", "detector.json"])
@pytest.mark.parametrize("content", ["{not json", "\xff\xfe", "[1, 2, 3]"])
def test_invalid_json(saved, name, content):
    _, folder = saved
    (folder / name).write_bytes(content.encode("latin-1"))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(folder)


@pytest.mark.parametrize("architecture", ["ResNet50", None, "", ["InpaintingUNet"]])
def test_unknown_architecture(saved, architecture):
    _, folder = saved
    _rewrite_config(folder, architecture=architecture)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_checkpoint(folder)


@pytest.mark.parametrize("full_res_width", [0, 4, 6])  # 6: GroupNorm takes 4 groups of its 12 joined channels
def test_a_folded_network_round_trips_and_older_configs_mean_no_folding(tmp_path, saved, full_res_width):
    torch.manual_seed(0)
    folded = InpaintingUNet(
        channels=3, base_width=8, width_multipliers=(1, 2), patch_size=2, full_res_width=full_res_width
    ).eval()
    loaded = load_checkpoint(save_checkpoint(_detector(folded), tmp_path / "folded" / "i3ad-test")).model
    images, masks = torch.rand(2, 3, 30, 44), (torch.rand(2, 1, 30, 44) > 0.5).float()
    with torch.no_grad():
        assert loaded(images, masks).shape == images.shape  # sides that are no multiple of the folded blocks
        # (loaded to channels-last memory on the CPU, so equal up to the convolutions' rounding)
        torch.testing.assert_close(loaded(images, masks), folded(images, masks))
    # An unfolded network's config.json does not name the option, as before it existed (earlier versions read it).
    _, folder = saved
    assert not {"patch_size", "full_res_width"} & set(json.loads((folder / "config.json").read_text()))
    assert load_model(folder).patch_size == 1 and load_model(folder).full_res_stem is None


def test_a_network_without_normalisation_round_trips_and_older_configs_mean_group_norm(tmp_path, saved):
    torch.manual_seed(0)
    plain = InpaintingUNet(channels=3, base_width=8, width_multipliers=(1, 2), norm_layer="none").eval()
    for parameter in plain.parameters():  # away from the zero start of its residual branches
        parameter.data.normal_(0, 0.1)
    folder = save_checkpoint(_detector(plain), tmp_path / "plain" / "i3ad-test")
    assert json.loads((folder / "config.json").read_text())["norm_layer"] == "none"
    loaded = load_checkpoint(folder).model
    assert not any(isinstance(module, torch.nn.GroupNorm) for module in loaded.modules())
    images, masks = torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, masks), plain(images, masks))
    # Written before norm_layer existed, the same network said "group_norm": false.
    config = json.loads((folder / "config.json").read_text())
    del config["norm_layer"]
    (folder / "config.json").write_text(json.dumps({**config, "group_norm": False}))
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(folder).model(images, masks), plain(images, masks))
    _, folder = saved
    assert "norm_layer" not in json.loads((folder / "config.json").read_text())
    assert any(isinstance(module, torch.nn.GroupNorm) for module in load_model(folder).modules())


@pytest.mark.parametrize(
    ("key", "damaged", "message"),
    [
        ("group_norm", value, f"group_norm must be true or false, got {value!r}")
        for value in ["no", 0, 1, None]  # 0 and 1 are not booleans in JSON (True == 1 in Python)
    ]
    + [("norm_layer", value, f"norm_layer must be one of group, batch, none, got {value!r}") for value in ["x", 1]]
    + [("norm_free_levels", value, "norm_free_levels must be a whole number from 0 to the") for value in [-1, 99, "1"]],
)
def test_a_damaged_normalisation_in_config_is_refused(saved, key, damaged, message):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: damaged}))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(folder)


def test_a_batch_norm_network_round_trips_in_half_precision_and_a_negative_variance_is_refused(tmp_path):
    torch.manual_seed(0)
    model = InpaintingUNet(channels=3, base_width=8, width_multipliers=(1, 2), norm_layer="batch")
    images, masks = torch.rand(4, 3, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    model(images, masks)  # one training forward: statistics of its own
    model.eval()
    folder = save_checkpoint(_detector(model), tmp_path / "bn" / "i3ad-test", half_precision=True)
    stored = safetensors.torch.load_file(folder / "model.safetensors")
    assert stored["stem.weight"].dtype == torch.float16
    # The step counter stays an integer (halved, it would be assigned as a float buffer).
    assert stored["down_blocks.0.body.0.num_batches_tracked"].dtype == torch.int64
    loaded = load_checkpoint(folder).model
    assert loaded.down_blocks[0].body[0].num_batches_tracked.dtype == torch.int64
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, masks), model(images, masks), atol=2e-3, rtol=0)
    damaged = {
        "down_blocks.0.body.0.running_var": (-1.0, r"negative variance \(in 'down_blocks.0.body.0.running_var'\)"),
        # Of the wrong kind, each would be assigned as it is: a variance in whole numbers fails only at detection.
        "stem.bias": (torch.zeros(8, dtype=torch.int64), r"stores whole numbers in 'stem.bias', where the network"),
        "head.0.num_batches_tracked": (torch.tensor(3.0), r"stores fractions in 'head.0.num_batches_tracked'"),
    }
    for name, (value, message) in damaged.items():
        broken = dict(stored)
        broken[name] = value if isinstance(value, torch.Tensor) else torch.full_like(stored[name], value)
        safetensors.torch.save_file(broken, folder / "model.safetensors")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(folder)


def test_a_batch_norm_network_detects_and_calibrates_with_its_learnt_statistics():
    torch.manual_seed(0)
    model = InpaintingUNet(channels=3, base_width=8, width_multipliers=(1, 2), norm_layer="batch")
    images = torch.rand(4, 3, 32, 32)
    model(images, (torch.rand(4, 1, 32, 32) > 0.5).float())  # statistics of its own, left in training mode
    learnt = {name: buffer.clone() for name, buffer in model.named_buffers()}
    detector = _detector(model)
    together, alone = detector.run(images).anomaly_maps, detector.run(images[:1]).anomaly_maps
    for step_together, step_alone in zip(together, alone, strict=True):  # one map per step
        torch.testing.assert_close(step_together[:1], step_alone, atol=1e-5, rtol=1e-5)
    model.train()
    calibrate(model, images, detector.settings, ssim_quantile=0.01)
    # Neither detecting nor calibrating moved the statistics (the batch's would have been used and learnt from).
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, learnt[name])


def test_a_config_naming_both_the_old_and_the_new_normalisation_key_is_refused(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "group_norm": False, "norm_layer": "group"}))
    with pytest.raises(CheckpointError, match="names both group_norm and norm_layer"):
        load_checkpoint(folder)


def test_invalid_model_config(saved):
    _, folder = saved
    _rewrite_config(folder, channels=2)
    with pytest.raises(CheckpointError, match="does not describe a valid InpaintingUNet"):
        load_model(folder)
    _rewrite_config(folder, channels=3, depth=7)
    with pytest.raises(CheckpointError, match="does not describe a valid InpaintingUNet"):
        load_model(folder)


@pytest.mark.parametrize(
    "change",
    [
        lambda record: record.pop("calibration"),
        lambda record: record["detection"].update(iterations=-3),
        lambda record: record["preprocessing"].update(normalization="weird"),
        lambda record: record["detection"].update(unknown_setting=1),
        lambda record: record["detection"].update(subtract_normal_error="no"),
        lambda record: record["detection"].update(step0_cell_size=8.5),
        lambda record: record["detection"].update(mask_dilation=2.5),
        lambda record: record["preprocessing"].update(image_size=64.5),
        lambda record: record["calibration"].update(holdout_images="x"),
        lambda record: record["calibration"].update(holdout_images=-3),
        lambda record: record["calibration"].update(ssim_quantile=5),
    ],
)
def test_incomplete_detector_record(saved, change):
    _, folder = saved
    record = json.loads((folder / "detector.json").read_text())
    change(record)
    (folder / "detector.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"detector\.json is incomplete or invalid"):
        load_checkpoint(folder)


def test_weights_holding_nan_are_refused(saved):
    _, folder = saved
    state = safetensors.torch.load_file(folder / "model.safetensors")
    first = next(iter(state))
    state[first] = state[first].clone().fill_(float("nan"))
    safetensors.torch.save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"NaN or infinite values \(in '{re.escape(first)}'\)"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        # The score thresholds hold at the calibrated tau only (the tests' checkpoint is calibrated elsewhere).
        ("detection", {"ssim_threshold": 0.9}, r"the detection tau 0\.9 is not the calibrated tau.*i3ad calibrate"),
        # Beyond the calibrated T every detection at the defaults would fail, as if the user had asked for it.
        ("detection", {"iterations": 99}, r"its default iterations must be between 0 and 10.*got 99.*--iterations T"),
        # One threshold for every T: with fewer, T = 2 would have borrowed T = 0's (a lower one: false alarms).
        ("calibration", {"score_thresholds": [0.1]}, r"its score thresholds \(1\) do not cover every T = 0\.\.10"),
    ],
)
def test_default_settings_that_no_detection_could_use_are_refused(saved, section, change, message):
    _, folder = saved
    record = json.loads((folder / "detector.json").read_text())
    record[section].update(change)
    (folder / "detector.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)
    load_checkpoint(folder, check_defaults=False)  # as `calibrate`, which the message points to, loads it


def test_a_copied_checkpoint_is_named_after_its_folder(saved):
    _, folder = saved
    copy = shutil.copytree(folder, folder.parent / "i3ad-backup")
    # It was named after detector.json's record, so evaluate labelled both folders' rows "i3ad-test" and report
    # averaged them; now it is the variant every listing calls it.
    assert load_checkpoint(copy).name == "i3ad-backup"
    assert load_checkpoint(folder).name == "i3ad-test"
    link = folder.parent / "i3ad-latest"
    link.symlink_to(folder.name)  # a link is listed under its own name, so it is named so too
    assert list_checkpoints(folder.parent.parent) == {"widget": ["i3ad-backup", "i3ad-latest", "i3ad-test"]}
    assert load_checkpoint(link).name == "i3ad-latest"


def test_folders_whose_names_are_no_valid_names_are_not_listed(saved, tmp_path):
    _, folder = saved
    shutil.copytree(folder, folder.parent.parent / "metal nut" / "i3ad")
    shutil.copytree(folder, folder.parent / "bad model")
    with pytest.warns(UserWarning) as caught:
        found = list_checkpoints(folder.parent.parent)
    assert found == {"widget": ["i3ad-test"]}
    messages = " | ".join(str(warning.message) for warning in caught)
    assert "is left out: model 'bad model' is not a valid name" in messages
    assert "is left out: category 'metal nut' is not a valid name" in messages


@pytest.mark.parametrize("info", [{"train_log": [{"loss": 0.1}]}, {"command": 5}, {"metrics": [1]}, {"training": 1}])
def test_a_training_record_the_model_card_cannot_show_is_refused_on_loading(saved, info):
    _, folder = saved
    record = json.loads((folder / "detector.json").read_text())
    record["info"] = info
    (folder / "detector.json").write_text(json.dumps(record))
    # It loaded, and calibrate or report --update-cards then failed with a traceback when saving the card.
    with pytest.raises(CheckpointError, match=r"detector\.json: its info block is invalid"):
        load_checkpoint(folder)


def test_channel_mismatch_between_preprocessing_and_model(saved):
    _, folder = saved
    record = json.loads((folder / "detector.json").read_text())
    record["preprocessing"]["channels"] = 1
    (folder / "detector.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="channels"):
        load_checkpoint(folder)


def test_an_autoencoder_whose_frame_size_is_not_the_preprocessings_is_refused(tmp_path):
    torch.manual_seed(0)
    detector = _detector(ConvAutoencoder(channels=3, image_size=32, base_width=8, latent_dim=16).eval())
    detector.calibration = Calibration(None, None, [0.7], 4, _normal_error(1))
    folder = save_checkpoint(detector, tmp_path / "ae")
    record = json.loads((folder / "detector.json").read_text())
    record["preprocessing"]["image_size"] = 64  # every detection failed on it (the app's baseline too)
    (folder / "detector.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="preprocessing makes 64-px frames, the autoencoder takes 32-px ones"):
        load_checkpoint(folder)


def test_weights_get_the_permissions_of_the_other_files(saved):
    _, folder = saved
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["normal_error.safetensors"] == modes["detector.json"], modes


@pytest.mark.parametrize(
    ("category", "expected"), [("pill", "cc-by-nc-sa-4.0"), ("magnetic_tile", "other"), ("widget", "other")]
)
def test_model_card_licence_follows_the_training_data(category, expected):
    detector = _detector()
    detector.category = category
    assert f"\nlicense: {expected}\n" in model_card(detector)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name what a descriptor is open on")
def test_saved_files_and_their_renames_are_flushed_to_the_disk(tmp_path, monkeypatch):
    flushed = []
    real_fsync = outputs.os.fsync

    def recorded_fsync(descriptor: int) -> None:
        flushed.append(Path(outputs.os.readlink(f"/proc/self/fd/{descriptor}")).name)
        real_fsync(descriptor)

    monkeypatch.setattr(outputs.os, "fsync", recorded_fsync)
    folder = save_checkpoint(_detector(), tmp_path / "checkpoint")
    files = sorted(path.name for path in folder.iterdir())
    # Every file while still under its temporary name, then the folder that the renames changed.
    staged = [re.fullmatch(r"\.(.+)\.\d+\.partial", name) for name in flushed[:-1]]
    assert sorted(match.group(1) for match in staged) == files and flushed[-1] == "checkpoint"
    flushed.clear()
    write_csv(pd.DataFrame({"a": [1.0]}), tmp_path / "table.csv", float_format="%.1f")
    assert re.fullmatch(r"\.table\.csv\.\d+\.partial", flushed[0]) and flushed[1:] == [tmp_path.name]


def test_a_save_removes_what_saves_killed_long_ago_left_behind(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    killed_long_ago, in_progress = folder / ".model.safetensors.1.partial", folder / ".model.safetensors.2.partial"
    for staged in (killed_long_ago, in_progress):
        staged.write_bytes(b"half a file")
    another_files = folder / ".model.safetensors.bak.1.partial"  # staged for a file named model.safetensors.bak
    another_files.write_bytes(b"half a file")
    two_hours_ago = time.time() - 2 * 3600
    for old in (killed_long_ago, another_files):
        os.utime(old, (two_hours_ago, two_hours_ago))
    save_checkpoint(_detector(), folder)
    assert not killed_long_ago.exists() and in_progress.exists()  # another run's save may still be writing it
    assert another_files.exists()


@pytest.mark.parametrize(("code", "fails"), [(errno.EINVAL, False), (errno.EIO, True)])
def test_a_folder_that_refuses_to_be_flushed_does_not_fail_a_save_but_a_failing_disk_does(
    tmp_path, monkeypatch, code, fails
):
    real_fsync = outputs.os.fsync

    def fsync(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):  # e.g. a network file system that refuses it for folders
            raise OSError(code, os.strerror(code))
        real_fsync(descriptor)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    if fails:
        with pytest.raises(OSError, match=os.strerror(code)):
            save_checkpoint(_detector(), tmp_path / "checkpoint")
    else:
        load_checkpoint(save_checkpoint(_detector(), tmp_path / "checkpoint"))  # saved whole, and no error


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder nobody can write to")
def test_a_folder_that_cannot_be_written_is_found_before_any_work(tmp_path):
    assert ensure_writable_folder(tmp_path / "new" / "folder").is_dir()
    with pytest.raises(ValueError, match="cannot write to /proc/i3ad"):
        ensure_writable_folder("/proc/i3ad")
    with pytest.raises(ValueError, match="cannot write to /proc"):
        save_checkpoint(_detector(), "/proc")


def test_a_table_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    write_csv(pd.DataFrame({"a": [1.0, 2.0]}), path, float_format="%.4f")
    before = path.read_text()
    assert before == "a\n1.0000\n2.0000\n"

    def disk_full_half_way(table, file, **kwargs):  # e.g. a full disk, or a kill, while evaluate rewrites its table
        file.write("a\n1.0")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full_half_way)
    with pytest.raises(OSError, match="No space left"):
        write_csv(pd.DataFrame({"a": [1.0, 2.0, 3.0]}), path, float_format="%.4f")
    assert path.read_text() == before  # the rows written before are all still there
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # and no partial file is left
    monkeypatch.undo()
    path.chmod(0o664)
    link = tmp_path / "link.csv"
    link.symlink_to(path)
    write_csv(pd.DataFrame({"a": [3.0]}), link, float_format="%.1f")
    assert link.is_symlink() and path.read_text() == "a\n3.0\n"  # written through the link, not over it
    assert path.stat().st_mode & 0o777 == 0o664


def test_detect_refuses_images_too_small_to_inspect_as_reading_a_file_does():
    with pytest.raises(ValueError, match=r"images must be at least 8 px a side, got \(4, 30\)"):
        _detector().detect(torch.rand(3, 4, 30))


@pytest.mark.parametrize("geometry", ["stretch", "fit"])
@pytest.mark.parametrize("shape", [(5,), (40,), (1, 3, 0, 5), (3, 7, 0)])
def test_detect_names_a_wrong_image_shape(geometry, shape):
    detector = _detector()
    detector.preprocessing = replace(detector.preprocessing, geometry=geometry)
    # The shape is checked before the image's place in the frame is worked out: a 1-D tensor gave a TypeError about
    # Preprocessing.region's arguments, an empty one a "too elongated" refusal.
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 3, H, W\] with H, W > 0"):
        detector.detect(torch.rand(shape))
