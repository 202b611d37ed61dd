"""Checkpoint folders: ``config.json`` + ``model.safetensors`` (huggingface_hub's PyTorchModelHubMixin layout) plus
``detector.json`` (preprocessing, detection settings, calibration, training record), ``normal_error.safetensors``
(the held-out normal images' mean map per step, when the settings subtract it) and a ``README.md`` model card.

Weights are only ever read with safetensors, strictly: a config that does not match them is an error, not a
silently half-loaded model.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shlex
import warnings
from dataclasses import replace
from pathlib import Path
from string import Template

import safetensors
import safetensors.torch
import torch

from i3ad import __version__
from i3ad.calibration import MAX_CALIBRATED_ITERATIONS, Calibration
from i3ad.checks import error_summary, shown
from i3ad.data import DatasetError, check_category_name, check_name
from i3ad.detector import AnomalyDetector, check_iterations
from i3ad.models import ConvAutoencoder, InpaintingUNet, for_device
from i3ad.normal_error import NormalError
from i3ad.outputs import ensure_writable_folder, sync_folder, write_staged
from i3ad.preprocessing import Preprocessing
from i3ad.recipes import data_license
from i3ad.scoring import DetectionSettings

CONFIG_FILE, WEIGHTS_FILE, DETECTOR_FILE, CARD_FILE = "config.json", "model.safetensors", "detector.json", "README.md"
NORMAL_ERROR_FILE = "normal_error.safetensors"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, DETECTOR_FILE)
# Every file a checkpoint folder can hold (the normal error only when its settings subtract it).
CHECKPOINT_FOLDER_FILES = (*CHECKPOINT_FILES, NORMAL_ERROR_FILE, CARD_FILE)
ARCHITECTURES = {"InpaintingUNet": InpaintingUNet, "ConvAutoencoder": ConvAutoencoder}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the problem."""


class DamagedFileError(CheckpointError):
    """A checkpoint file (``path``) that cannot be decoded or gives an input/output error, as one damaged on the disk
    or in a download does (rather than a whole file that describes a checkpoint this version cannot use, or one this
    user may not read): a copy from the Hub is worth downloading again."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _unreadable(path: Path, error: OSError) -> CheckpointError:
    """The error for a file that could not be read: damaged for an input/output error, not for a missing permission
    or too many open files, which downloading it again would not cure."""
    message = f"{path} cannot be read ({error.strerror or error})"
    return DamagedFileError(message, path) if error.errno == errno.EIO else CheckpointError(message)


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # Serialised to bytes rather than with safetensors' save_file, which leaves the file readable by its owner only;
    # this way the weights get the same permissions as the JSON files next to them.
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _write_files(folder: Path, files: dict[str, bytes | None]) -> None:
    """Write (or, for None, remove) the files of a checkpoint folder. Each is written under a temporary name first
    and all are renamed into place only once every one was written, so that a failure part-way (a full disk, an
    interruption) leaves the checkpoint that was there whole rather than half replaced, and all are flushed to the
    disk before the function returns."""
    staged: list[tuple[Path, Path]] = []
    try:
        for name, content in files.items():
            if content is not None:
                final = folder / name
                staged.append((write_staged(final, lambda file, content=content: file.write(content), "wb"), final))
    except BaseException:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)
        raise
    for partial, final in staged:
        partial.replace(final)
    for name, content in files.items():
        if content is None:
            (folder / name).unlink(missing_ok=True)
    sync_folder(folder)


def check_free_for_checkpoint(folder: str | Path) -> None:
    """Refuse a folder that already holds (part of) a checkpoint, so that a new training run cannot replace trained
    weights by accident; ValueError naming the folder. Replacing one is the caller's explicit choice."""
    folder = Path(folder)
    present = [name for name in CHECKPOINT_FOLDER_FILES if (folder / name).exists()]
    if present:
        raise ValueError(
            f"{folder} already holds a checkpoint ({', '.join(present)}): choose another folder (--out, --name) "
            "or replace it (train --overwrite; overwrite=True in Python)"
        )


def save_checkpoint(detector: AnomalyDetector, folder: str | Path, *, half_precision: bool = False) -> Path:
    """Write the detector's checkpoint folder (created if needed). ``half_precision`` stores float16 weights (half
    the size; they are widened back to float32 on loading)."""
    folder = ensure_writable_folder(folder)
    model = detector.model
    state = {
        # Only floating-point tensors are halved: a BatchNorm's step counter stays an integer.
        k: v.detach().to("cpu", torch.float16 if half_precision and v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    config = {**model.config, "architecture": type(model).__name__, "i3ad_version": __version__}
    _write_files(
        folder, {CONFIG_FILE: _json_bytes(config), WEIGHTS_FILE: _safetensors_bytes(state), **_record_files(detector)}
    )
    return folder


def save_record(detector: AnomalyDetector, folder: str | Path) -> None:
    """(Re)write detector.json, the normal error and the model card, e.g. after re-calibration; the weights are left
    alone."""
    _write_files(Path(folder), _record_files(detector))


def _record_files(detector: AnomalyDetector) -> dict[str, bytes | None]:
    """The contents of detector.json, the normal error (None: no such file) and the model card."""
    normal_error = detector.calibration.normal_error
    if detector.settings.subtract_normal_error and normal_error is None:
        raise ValueError("the settings subtract the normal error but the calibration has none: calibrate first")
    maps = None if normal_error is None else normal_error.maps.detach().to("cpu", torch.float16).contiguous()
    record = {
        "category": detector.category,
        "name": detector.name,
        "preprocessing": detector.preprocessing.to_dict(),
        "detection": detector.settings.to_dict(),
        "calibration": detector.calibration.to_dict(),
        "info": detector.info,
        "i3ad_version": __version__,
    }
    return {
        NORMAL_ERROR_FILE: None if maps is None else _safetensors_bytes({"mean_anomaly_maps": maps}),
        DETECTOR_FILE: _json_bytes(record),
        CARD_FILE: model_card(detector).encode(),
    }


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: a checkpoint folder holds {', '.join(CHECKPOINT_FILES)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{path} is not valid JSON ({error})", path) from None
    except OSError as error:  # a folder in its place, no permission, a failing disk
        raise _unreadable(path, error) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> InpaintingUNet | ConvAutoencoder:
    """Build the network from config.json and load model.safetensors into it, strictly."""
    folder = Path(folder)
    config = _read_json(folder / CONFIG_FILE)
    architecture = config.pop("architecture", None)
    config.pop("i3ad_version", None)
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})"
        )
    if "group_norm" in config:
        # Written before the U-Net's normalisation became a choice of three (norm_layer): false meant none.
        legacy = config.pop("group_norm")
        if not isinstance(legacy, bool):
            raise CheckpointError(f"{folder / CONFIG_FILE}: group_norm must be true or false, got {legacy!r}")
        if "norm_layer" in config:
            raise CheckpointError(f"{folder / CONFIG_FILE} names both group_norm and norm_layer: keep norm_layer")
        if not legacy:
            config["norm_layer"] = "none"
    try:
        # Built without memory (the weights are assigned below), so that a config naming absurd sizes is refused by
        # the strict weight check instead of allocating (or failing to allocate) a network of that size first.
        with torch.device("meta"):
            model = ARCHITECTURES[architecture](**config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:  # sizes beyond any tensor: RuntimeError
        raise CheckpointError(f"{folder / CONFIG_FILE} does not describe a valid {architecture}: {error}") from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing (only safetensors weights are loaded)")
    try:
        state = safetensors.torch.load_file(weights, device="cpu")
    except (safetensors.SafetensorError, ValueError) as error:
        raise DamagedFileError(f"{weights} is damaged or not a safetensors file ({error})", weights) from None
    except OSError as error:
        raise _unreadable(weights, error) from None
    # Each tensor must be of the kind the network holds there: an integer variance or a fractional step counter
    # would be assigned as it is, and fail (or count wrongly) only at detection.
    expected = model.state_dict()
    mistyped = [
        name
        for name, tensor in state.items()
        if name in expected and tensor.is_floating_point() != expected[name].is_floating_point()
    ]
    if mistyped:
        name = mistyped[0]
        kinds = ("whole numbers", "fractions")
        stored, held = kinds[::-1] if state[name].is_floating_point() else kinds
        raise CheckpointError(f"{weights} stores {stored} in {name!r}, where the network holds {held}: retrain it")
    # Assigned, not copied, into the memoryless network: as float32, whatever precision the file stores.
    state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        summary = error_summary(error)
        raise CheckpointError(f"{weights} does not match {folder / CONFIG_FILE}: {summary}") from None
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        # NaN weights paint NaN, whose SSIM masks nothing: every image would pass as normal.
        raise CheckpointError(f"{weights} holds NaN or infinite values (in {broken[0]!r}): retrain the model")
    # A BatchNorm divides by the square root of its variance: a negative one paints NaN just the same.
    negative = [name for name, tensor in state.items() if name.endswith(".running_var") and (tensor < 0).any()]
    if negative:
        raise CheckpointError(f"{weights} holds a negative variance (in {negative[0]!r}): retrain the model")
    return for_device(model, device).eval()


def load_normal_error(path: Path) -> NormalError:
    """The normal-error maps of a checkpoint (safetensors only). Raises CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing, but detector.json asks to subtract the normal error")
    try:
        tensors = safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, ValueError) as error:
        raise DamagedFileError(f"{path} is damaged or not a safetensors file ({error})", path) from None
    except OSError as error:
        raise _unreadable(path, error) from None
    try:
        return NormalError(tensors["mean_anomaly_maps"])
    except (KeyError, ValueError) as error:  # a whole file, but not the normal error this version reads
        raise CheckpointError(f"{path} is not a normal-error file ({error!r})") from None


def _check_defaults(detector: AnomalyDetector, folder: Path) -> None:
    """Refuse default settings that no detection could use as they stand (see ``load_checkpoint``)."""
    try:
        check_iterations(detector.settings.iterations)
    except ValueError as error:  # else every detection at the defaults would fail, as if the user had asked for T
        raise CheckpointError(
            f"{folder / DETECTOR_FILE}: its default {error}; run `python -m i3ad calibrate {folder} --iterations T`"
        ) from None
    thresholds = len(detector.calibration.score_thresholds)
    if detector.kind == "i3ad" and thresholds < MAX_CALIBRATED_ITERATIONS + 1:
        # Each T has its own threshold; with fewer, a detection at a larger T would borrow a smaller T's one.
        raise CheckpointError(
            f"{folder / DETECTOR_FILE}: its score thresholds ({thresholds}) do not cover every T = 0.."
            f"{MAX_CALIBRATED_ITERATIONS}; run `python -m i3ad calibrate {folder}` to calibrate them again"
        )
    tau, calibrated_tau = detector.settings.ssim_threshold, detector.calibration.ssim_threshold
    if detector.kind == "i3ad" and tau != calibrated_tau:
        # The score thresholds hold only at the tau they were calibrated at; the app starts at that one, the CLI at
        # the detection settings' one, so a file where the two differ would give two different verdicts.
        raise CheckpointError(
            f"{folder / DETECTOR_FILE}: the detection tau {shown(tau)} is not the calibrated tau "
            f"{shown(calibrated_tau)}; run `python -m i3ad calibrate {folder}` to set both"
        )


def _detection_settings(record: dict) -> DetectionSettings:
    # Checkpoints written before the normal error existed score raw maps.
    return DetectionSettings(**{"subtract_normal_error": False, **record["detection"]})


def default_settings(folder: str | Path) -> DetectionSettings:
    """A checkpoint's default detection settings, from its detector.json alone (no weights are read); the
    autoencoder's T, which it does not use, reads as 0."""
    path = Path(folder) / DETECTOR_FILE
    record = _read_json(path)
    try:
        settings = _detection_settings(record)
        return settings.with_(iterations=0) if record["calibration"]["ssim_threshold"] is None else settings
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is incomplete or invalid: {error!r}") from None


def load_checkpoint(
    folder: str | Path, device: torch.device | str = "cpu", *, check_defaults: bool = True
) -> AnomalyDetector:
    """Load a checkpoint folder written by ``save_checkpoint``. Raises CheckpointError with the reason.

    ``check_defaults=False`` accepts default settings that no detection could use as they stand (a T beyond the
    calibrated range, a tau or a count of score thresholds that does not match the calibration): for ``calibrate``,
    which replaces them, and which the errors about them point to."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    record = _read_json(folder / DETECTOR_FILE)
    model = load_model(folder, device)
    try:
        settings = _detection_settings(record)
        calibration = Calibration(**record["calibration"])
        if settings.subtract_normal_error:
            calibration = replace(calibration, normal_error=load_normal_error(folder / NORMAL_ERROR_FILE))
        detector = AnomalyDetector(
            model=model,
            preprocessing=Preprocessing(**record["preprocessing"]),
            settings=settings,
            calibration=calibration,
            category=check_category_name(record["category"]),  # it names folders (checkpoints, data, outputs)
            # The folder names the variant, as in every listing: a copied or renamed checkpoint (e.g. i3ad kept as
            # i3ad-backup) is no longer reported under the name it was trained with.
            name=Path(os.path.abspath(folder)).name,  # the link's own name for a linked folder, as listings show
            info=dict(record.get("info", {})),
        )
    except CheckpointError:
        raise  # a damaged normal-error file says so itself
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / DETECTOR_FILE} is incomplete or invalid: {error!r}") from None
    if check_defaults:
        _check_defaults(detector, folder)
    if detector.preprocessing.channels != model.config["channels"]:
        raise CheckpointError(
            f"{folder}: preprocessing has {detector.preprocessing.channels} channels, "
            f"the model {model.config['channels']}"
        )
    try:
        # The training record is free-form JSON; rendered now, a hand-edited one that the model card cannot show is
        # found here, not when calibrate or report --update-cards saves the card after their work.
        model_card(detector)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{folder / DETECTOR_FILE}: its info block is invalid ({error!r})") from None
    if model.config.get("image_size", detector.preprocessing.image_size) != detector.preprocessing.image_size:
        # The autoencoder takes one frame size only: every detection would fail (and the app's baseline with it).
        raise CheckpointError(
            f"{folder}: preprocessing makes {detector.preprocessing.image_size}-px frames, the autoencoder takes "
            f"{model.config['image_size']}-px ones"
        )
    return detector


def list_checkpoints(root: str | Path) -> dict[str, list[str]]:
    """{category: [variant, ...]} for every ``root/<category>/<variant>/`` that holds a detector.json. A folder
    whose name cannot be a category or model name (e.g. "metal nut") is left out with a warning: offered in a menu,
    it would only be refused when chosen."""
    root = Path(root)
    found: dict[str, list[str]] = {}
    for record in sorted(root.glob(f"*/*/{DETECTOR_FILE}")) if root.is_dir() else []:
        if not record.is_file():
            continue  # not a checkpoint (loading would say so), so not offered
        category, variant = record.parent.parent.name, record.parent.name
        try:
            check_name("category", category)
            check_name("model", variant)
        except DatasetError as error:
            warnings.warn(f"{record.parent} is left out: {error}", stacklevel=2)
            continue
        found.setdefault(category, []).append(variant)
    return found


def _metrics_table(metrics: dict) -> str:
    if not metrics:
        return "Not evaluated yet."
    lines = ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    ]
    return "\n".join(lines)


def _with_placeholders(command: str) -> str:
    """A recorded command with the paths of the machine that ran it written as placeholders.

    The data folder becomes DATA_ROOT, train's output root OUT and calibrate's checkpoint folders CHECKPOINT (one
    calibrate command may have served several checkpoints; each is calibrated on its own). The command is read with
    the CLI's own parser, so options before the folders, ``--option=value`` and abbreviated options are all found; one
    it cannot read (edited by hand, or from a version with other options) is shown as it is.
    """
    from i3ad.cli import build_parser  # imported here: the CLI imports this module

    try:
        tokens = shlex.split(command)
        start = tokens.index("i3ad") + 1
        with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its complaint before it exits
            args, _ = build_parser().parse_known_args(tokens[start:])
    except (ValueError, SystemExit):
        return command
    placeholders = {args.data_root: "DATA_ROOT"} if getattr(args, "data_root", None) else {}
    if args.command == "train":
        placeholders[args.out] = "OUT"
    folders = set(args.checkpoint) if args.command == "calibrate" else set()
    shown = tokens[:start]
    for token in tokens[start:]:
        option, equals, value = token.partition("=")
        if token in folders:
            if "CHECKPOINT" not in shown:  # several folders, one placeholder
                shown.append("CHECKPOINT")
        elif token in placeholders:
            shown.append(placeholders[token])
        elif equals and option.startswith("--") and value in placeholders:
            shown.append(f"{option}={placeholders[value]}")
        else:
            shown.append(token)
    return shlex.join(shown)


_PLACEHOLDER_NOTES = {
    "DATA_ROOT": "the folder that held the category in the MVTec AD layout",
    "OUT": "the checkpoints root the network was written under",
    "CHECKPOINT": "this checkpoint's folder (OUT/<category>/<name> of the training command)",
}


def _placeholder_note(command: str) -> str:
    """What each placeholder in ``command`` stands for, as a line under it (empty if it holds none)."""
    notes = [f"{name}: {meaning}" for name, meaning in _PLACEHOLDER_NOTES.items() if re.search(rf"\b{name}\b", command)]
    return f"\n({'; '.join(notes)}.)\n" if notes else ""


def model_card(detector: AnomalyDetector) -> str:
    """The README.md of a checkpoint folder, from ``templates/model_card.md``."""
    template = Template((Path(__file__).parent / "templates" / "model_card.md").read_text())
    info = detector.info
    training = info.get("training", {})
    iterations = detector.default_iterations
    if detector.kind == "i3ad":
        compared = (
            "each pixel with the last reconstruction that re-painted it"
            if detector.settings.last_painting_scores
            else "the input with the final reconstruction"
        )
        description = (
            "I3AD inpainting U-Net: the pixels whose SSIM to the input is below tau are re-painted from their "
            f"surroundings, iteratively; the anomaly map compares {compared} (measure "
            f"`{detector.settings.anomaly_measure}`)."
        )
        if detector.settings.shrinking_masks:
            description += " Each step's mask is cut to the last step's pixels."
        if detector.settings.iteration_painting == "cells":
            description += " Each step re-paints its mask in step 0's grid cells, from the last reconstruction."
    else:
        description = (
            "AE-SSIM baseline (Bergmann et al. 2018): a convolutional autoencoder; the anomaly map compares the input "
            f"with its reconstruction (measure `{detector.settings.anomaly_measure}`)."
        )
    if detector.settings.subtract_normal_error:
        description += (
            " The map is the excess over the normal error, the mean map of the held-out normal images after the same "
            f"step (`{NORMAL_ERROR_FILE}`)."
        )
    log = [entry for entry in info.get("train_log", []) if "loss" in entry]
    steps_done = log[-1]["step"] if log else training.get("steps", "?")
    # Under a time budget the planned count is the one that fitted, not the configured upper bound.
    budgeted = [entry["steps_within_budget"] for entry in info.get("train_log", []) if "steps_within_budget" in entry]
    planned = budgeted[0] if budgeted else training.get("steps", "?")
    summary = f"{steps_done} of {planned} steps, batch {training.get('batch_size', '?')}"
    if log:
        summary += f", final loss {log[-1]['loss']:.4f}, {log[-1]['seconds']} s on {info.get('device', '?')}"
    command = _with_placeholders(info["command"]) if "command" in info else "(not recorded)"
    if "calibrate_command" in info:
        calibrate = _with_placeholders(info["calibrate_command"])
        command += f"\n{calibrate}  # then: new default settings, re-calibrated"
    return template.substitute(
        license=info.get("license") or data_license(detector.category),
        title=f"i3ad checkpoint {detector.category}/{detector.name}",
        description=description,
        category=detector.category,
        architecture=type(detector.model).__name__,
        parameters=f"{sum(p.numel() for p in detector.model.parameters()):,}",
        image_size=detector.preprocessing.image_size,
        channels=detector.preprocessing.channels,
        normalization=detector.preprocessing.normalization,
        geometry=detector.preprocessing.geometry,
        iterations=iterations,
        ssim_threshold=detector.calibration.tau_text,
        score_threshold=f"{detector.calibration.score_threshold(iterations):.4f}",
        holdout_images=detector.calibration.holdout_images,
        version=__version__,
        data_source=info.get("data_source", "Normal images of the category's train/good folder."),
        command=command,
        placeholder_note=_placeholder_note(command),
        train_summary=summary,
        metrics=_metrics_table(info.get("metrics", {})),
    )
