"""Whole-category workflows on top of the pieces: train + calibrate + save, and evaluate a checkpoint."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from i3ad.batching import map_batches
from i3ad.calibration import (
    DEFAULT_SSIM_QUANTILE,
    MIN_HOLDOUT_WITH_NORMAL_ERROR,
    Calibration,
    calibrate_autoencoder,
    calibrate_inpainting,
    check_ssim_quantile,
)
from i3ad.checkpoints import check_free_for_checkpoint, save_checkpoint
from i3ad.data import NORMAL, CategoryIndex, DatasetError, load_images, load_masks, load_regions
from i3ad.detector import AnomalyDetector, check_iterations
from i3ad.evaluation import (
    BY_DEFECT_COLUMNS,
    RESULT_COLUMNS,
    TestSet,
    metrics_by_defect,
    sweep_autoencoder,
    sweep_inpainting,
)
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.outputs import ensure_writable_folder, removed_if_left_empty
from i3ad.preprocessing import Preprocessing
from i3ad.scoring import DetectionSettings, autocast_for
from i3ad.training import TrainConfig, build_model, split_holdout, train


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, else the CPU; asking for CUDA without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one i3ad runs on; use auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu")
    return chosen


def split_for_calibration(
    index: CategoryIndex, config: TrainConfig, settings: DetectionSettings
) -> tuple[list[int], list[int]]:
    """The indices (train, held out) of the category's train/good images; ValueError when too few are held out for
    calibrating at ``settings`` (checked for every category before the first one trains)."""
    train_ids, holdout_ids = split_holdout(len(index.train), config.holdout_fraction, config.seed)
    needed = MIN_HOLDOUT_WITH_NORMAL_ERROR if settings.subtract_normal_error else 1
    if len(holdout_ids) < needed:
        raise ValueError(
            f"{index.name}: {len(index.train)} image(s) in train/good at holdout fraction {config.holdout_fraction} "
            f"leave {len(holdout_ids)} held out to calibrate on, and calibration needs {needed}; use at least "
            f"{2 * needed} images and a fraction of at least {needed}/N (--holdout)"
        )
    return train_ids, holdout_ids


def train_category(
    index: CategoryIndex,
    config: TrainConfig,
    *,
    name: str,
    image_size: int = 256,
    normalization: str = "none",
    geometry: str = "auto",
    settings: DetectionSettings = DetectionSettings(),
    ssim_quantile: float | None = DEFAULT_SSIM_QUANTILE,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    half_precision: bool = False,
    overwrite: bool = False,
    info: dict | None = None,
    progress: bool = True,
) -> AnomalyDetector:
    """Train on train/good minus a held-out share, calibrate on that share, and save to ``out`` if given
    (``half_precision``: float16 weights, half the file size; a checkpoint already in ``out`` is refused before
    training unless ``overwrite``). ``geometry`` "auto" is "stretch" when every training image is square and "fit"
    otherwise."""
    device = torch.device(device)
    # Checked before training, not after it: the default T needs calibrated thresholds, tau a valid quantile,
    # calibration held-out images, and the checkpoint a folder it can be written to.
    check_iterations(settings.iterations)
    check_ssim_quantile(ssim_quantile)
    if out is not None and not overwrite:
        check_free_for_checkpoint(out)
    if geometry == "auto":
        # On square images fit only shrinks the image to make room for its mirrored margin: that helped toothbrush
        # but cost pill 5-12 points of image AUROC (results/square_fit_check.csv), so it is kept for other shapes.
        geometry = "stretch" if index.square else "fit"
    preprocessing = Preprocessing(
        image_size=image_size, channels=1 if index.greyscale else 3, normalization=normalization, geometry=geometry
    )
    build_model(config, preprocessing.channels, image_size)  # its sizes are checked before any image is loaded
    train_ids, holdout_ids = split_for_calibration(index, config, settings)
    # A run that fails or is interrupted leaves no empty checkpoint folder behind.
    with removed_if_left_empty(out) if out is not None else contextlib.nullcontext():
        if out is not None:
            ensure_writable_folder(out)
        images = load_images(index.train, preprocessing)
        regions = load_regions(index.train, preprocessing)
        model, log = train(images[train_ids], config, regions=regions[train_ids], device=device, progress=progress)
        if half_precision:
            # Calibrate the weights exactly as they will be stored, so the thresholds fit the saved model.
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    if tensor.is_floating_point():  # a BatchNorm's step counter stays a whole number
                        tensor.copy_(tensor.half())
        settings, calibration = calibrate(
            model,
            images[holdout_ids].to(device),
            settings,
            ssim_quantile=ssim_quantile,
            regions=regions[holdout_ids].to(device),
        )
        detector = AnomalyDetector(
            model=model,
            preprocessing=preprocessing,
            settings=settings,
            calibration=calibration,
            category=index.name,
            name=name,
            info={
                "training": config.to_dict(),
                "train_log": log,
                "device": str(device),
                "train_images": len(train_ids),
                # By name, so that evaluate and calibrate find exactly these again (``holdout_images``).
                "holdout_files": [index.train[i].name for i in holdout_ids],
                **(info or {}),
            },
        )
        if out is not None:
            save_checkpoint(detector, out, half_precision=half_precision)
    return detector


def calibrate(
    model: InpaintingUNet | ConvAutoencoder,
    holdout: torch.Tensor,
    settings: DetectionSettings,
    *,
    ssim_quantile: float | None,
    regions: torch.Tensor | None = None,
) -> tuple[DetectionSettings, Calibration]:
    """Thresholds from held-out normal images [N, C, S, S] (``regions``: where each lies in its frame, None:
    everywhere): tau (inpainting model) and the score thresholds. Returns the settings with the calibrated tau, and
    the calibration. In float32 for a model trained with bfloat16 autocast too: every verdict is given in float32,
    and thresholds found under autocast were a few per cent off the scores that detect then compared with them."""
    model.eval()  # as every verdict is given: a BatchNorm with its learnt statistics, not the held-out batch's
    if isinstance(model, InpaintingUNet):
        calibration = calibrate_inpainting(model, holdout, settings, ssim_quantile=ssim_quantile, regions=regions)
        return settings.with_(ssim_threshold=calibration.ssim_threshold), calibration
    return settings, calibrate_autoencoder(model, holdout, settings, regions=regions)


def holdout_paths(detector: AnomalyDetector, index: CategoryIndex) -> list[Path]:
    """The checkpoint's held-out images in ``index``: by their recorded names, or for a checkpoint that records only
    its split, the same split of a train/good folder of the same size. Any other folder would mix images the model
    was trained on into the held-out ones, so it is refused."""
    names = detector.info.get("holdout_files")
    if names is not None:
        folder = index.root / "train" / NORMAL
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise DatasetError(
                f"{folder} lacks {len(missing)} of the {len(names)} images {detector.category}/{detector.name} was "
                f"calibrated on (e.g. {missing[0]!r}): evaluate and calibrate need the data it was trained on"
            )
        return [folder / name for name in names]
    training = detector.info.get("training", {})
    if "holdout_fraction" not in training or "seed" not in training:
        raise ValueError("the checkpoint does not record its training split (info.training.holdout_fraction, seed)")
    split_over = detector.info.get("train_images", 0) + detector.calibration.holdout_images
    if len(index.train) != split_over:
        raise DatasetError(
            f"{detector.category}/{detector.name} was split over {split_over} images of train/good and "
            f"{index.root / 'train' / NORMAL} holds {len(index.train)}: its held-out images cannot be found again "
            "there; evaluate and calibrate need the data it was trained on"
        )
    _, holdout_ids = split_holdout(len(index.train), training["holdout_fraction"], training["seed"])
    return [index.train[i] for i in holdout_ids]


def holdout_images(detector: AnomalyDetector, index: CategoryIndex) -> torch.Tensor:
    """The held-out normal images the checkpoint was calibrated on (same split as in training), preprocessed."""
    return load_images(holdout_paths(detector, index), detector.preprocessing)


def holdout_regions(detector: AnomalyDetector, index: CategoryIndex) -> torch.Tensor:
    """Where each of ``holdout_images`` lies in its frame (``Preprocessing.region``)."""
    return load_regions(holdout_paths(detector, index), detector.preprocessing)


def recalibrate(
    detector: AnomalyDetector, index: CategoryIndex, settings: DetectionSettings, *, ssim_quantile: float | None
) -> AnomalyDetector:
    """The detector with new default settings and thresholds re-calibrated on its own held-out images.

    ssim_quantile None keeps the checkpoint's tau (and its recorded quantile) and re-calibrates the score thresholds.
    """
    check_iterations(settings.iterations)  # the new default T needs calibrated thresholds
    paths = holdout_paths(detector, index)
    holdout = load_images(paths, detector.preprocessing).to(detector.device)
    regions = load_regions(paths, detector.preprocessing).to(detector.device)
    new_settings, calibration = calibrate(
        detector.model, holdout, settings, ssim_quantile=ssim_quantile, regions=regions
    )
    if ssim_quantile is None:
        # The recorded quantile still describes tau only when tau stayed the calibrated one (a repaired checkpoint
        # whose detection tau had been set by hand keeps that tau, which no quantile produced).
        same_tau = new_settings.ssim_threshold == detector.calibration.ssim_threshold
        calibration = replace(calibration, ssim_quantile=detector.calibration.ssim_quantile if same_tau else None)
    info = detector.info
    if new_settings != detector.settings:
        # The recorded metrics were measured at the old defaults (`report --update-cards` measures the new ones).
        info = {key: value for key, value in info.items() if key != "metrics"}
    return replace(detector, settings=new_settings, calibration=calibration, info=info)


def load_test_set(index: CategoryIndex, preprocessing: Preprocessing, device: torch.device | str = "cpu") -> TestSet:
    """The category's test images, labels and (if it has them) masks, preprocessed and on ``device``."""
    index.check_test()
    paths = [s.image for s in index.test]
    images = load_images(paths, preprocessing).to(device)
    labels = torch.tensor([s.label for s in index.test], device=device)
    masks = load_masks(index.test, preprocessing.image_size).to(device) if index.has_masks else None
    regions = load_regions(paths, preprocessing).to(device)
    return TestSet(images, labels, masks, defects=[s.defect for s in index.test], regions=regions)


def evaluate_detector(
    detector: AnomalyDetector,
    test: TestSet,
    *,
    thresholds: list[float] | None = None,
    max_iterations: int = 10,
    cell_sizes: list[int] | None = None,
    measures: list[str] | None = None,
    sigmas: list[float] | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    holdout: torch.Tensor | None = None,
    holdout_regions: torch.Tensor | None = None,
    compile_network: bool = False,
) -> pd.DataFrame:
    """Metrics of one checkpoint for T = 0..max_iterations at each SSIM threshold (the calibrated one is always
    included and flagged in the ``calibrated_threshold`` column); one row per scoring variant for the autoencoder.
    With the checkpoint's held-out normal images (``holdout_images``, on the detector's device, and where they lie in
    their frames: ``holdout_regions``) every row comes twice: raw maps, and maps minus that setting's normal error.
    ``compile_network`` runs the network through torch.compile (faster on a GPU after a warm-up;
    ``results/perf_gpu.csv``); ``precision`` "bf16" or "fp16" runs it under that autocast on CUDA (the maps and
    metrics stay float32)."""
    if (
        holdout is not None
        and holdout_regions is None
        and detector.preprocessing.geometry == "fit"
        and detector.kind == "i3ad"
    ):
        raise ValueError("held-out images in fit frames need their holdout_regions (pipeline.holdout_regions)")
    autocast_dtype = autocast_for(detector.device, precision)
    model = torch.compile(detector.model) if compile_network else detector.model
    if detector.kind == "i3ad":
        tau = detector.settings.ssim_threshold
        taus = sorted({*(thresholds or []), tau})
        table = sweep_inpainting(
            model,
            test,
            detector.settings,
            thresholds=taus,
            max_iterations=max_iterations,
            cell_sizes=cell_sizes,
            measures=measures,
            sigmas=sigmas,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            holdout=holdout,
            holdout_regions=holdout_regions,
        )
        table = table.assign(calibrated_threshold=table["ssim_threshold"] == tau)
    else:
        table = sweep_autoencoder(
            model,
            test,
            detector.settings,
            measures=measures,
            sigmas=sigmas,
            batch_size=batch_size,
            autocast_dtype=autocast_dtype,
            holdout=holdout,
        )
        table = table.assign(calibrated_threshold=False)
    table = table.assign(category=detector.category, model=detector.name)
    return table[list(RESULT_COLUMNS)]


def evaluate_by_defect(detector: AnomalyDetector, test: TestSet, *, batch_size: int = 32) -> pd.DataFrame:
    """Metrics of one checkpoint at its default settings, one row per defect type, and the share of each type's
    images (and of the normal ones) its verdicts call anomalous (see ``metrics_by_defect``)."""
    maps = map_batches(
        lambda images, regions: detector.run(images, region=regions).anomaly_map,
        test.images,
        test.regions,
        batch_size=batch_size,
    )
    threshold = detector.calibration.score_threshold(detector.default_iterations)
    table = metrics_by_defect(test, torch.cat(maps), score_threshold=threshold)
    table = table.assign(category=detector.category, model=detector.name, iterations=detector.default_iterations)
    return table[list(BY_DEFECT_COLUMNS)]
