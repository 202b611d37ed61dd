"""Command line: ``python -m i3ad <command> ...``; ``python -m i3ad --help`` lists the commands, ``--help`` on each."""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from i3ad.batching import is_cpu_out_of_memory, unless_out_of_gpu_memory
from i3ad.benchmark import COMPILE_MODES, check_plan, run_benchmark
from i3ad.calibration import DEFAULT_SSIM_QUANTILE, MAX_CALIBRATED_ITERATIONS, check_ssim_quantile
from i3ad.checkpoints import (
    CheckpointError,
    check_free_for_checkpoint,
    default_settings,
    list_checkpoints,
    load_checkpoint,
    save_record,
)
from i3ad.checks import error_summary, is_finite_number
from i3ad.data import (
    CategoryIndex,
    DatasetError,
    check_category_name,
    check_name,
    index_category,
    is_hidden,
    list_categories,
    load_images,
)
from i3ad.detector import AnomalyDetector, check_iterations, check_ssim_threshold, verdict
from i3ad.evaluation import METRIC_COLUMNS, TestSet
from i3ad.images import IMAGE_EXTENSIONS, ImageReadError
from i3ad.models import NORM_LAYERS
from i3ad.outputs import ensure_writable_folder, write_csv
from i3ad.pipeline import (
    evaluate_by_defect,
    evaluate_detector,
    holdout_images,
    holdout_paths,
    holdout_regions,
    load_test_set,
    recalibrate,
    resolve_device,
    split_for_calibration,
    train_category,
)
from i3ad.preprocessing import GEOMETRIES, NORMALIZATIONS
from i3ad.recipes import data_license, data_source, default_augmentations
from i3ad.results import (
    compare_runs,
    headline,
    is_by_defect_table,
    load_results,
    markdown_table,
    missing_rows,
    summary_tables,
    verdict_summary,
)
from i3ad.scoring import ANOMALY_MEASURES, AUTOCAST_DTYPES, ITERATION_PAINTINGS, DetectionSettings
from i3ad.shipped import SHIPPED_SETTINGS, ModelSettings, settings_text
from i3ad.synthetic import make_synthetic_category
from i3ad.synthetic_defects import DEFAULT_LOOKS, DEFECT_LOOKS
from i3ad.training import AUGMENTATIONS, MODEL_KINDS, TrainConfig

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# The columns of detect's scores.csv, one row per input image (an error instead of a score when it failed).
DETECT_COLUMNS = ("file", "score", "threshold", "verdict", "iterations", "ssim_threshold", "heatmap", "error")


def _command_line() -> str:
    """This run's command line, to record with the checkpoint it writes."""
    return "python -m i3ad " + shlex.join(sys.argv[1:])


def _categories(data_root: str, requested: list[str]) -> list[str]:
    if requested == ["all"]:
        found = list_categories(data_root)
        if not found:
            raise DatasetError(f"no category with a train/good folder under {data_root}")
        return found
    return list(dict.fromkeys(check_category_name(c) for c in requested))  # each once, in the order given


def _augmentations(value: str, category: str) -> tuple[str, ...]:
    if value == "default":
        return default_augmentations(category)
    if value == "none":
        return ()
    chosen = tuple(v for v in value.split(",") if v)
    unknown = set(chosen) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(
            f"--augment: unknown {sorted(unknown)}; use 'default', 'none' or a comma list of {AUGMENTATIONS}"
        )
    return chosen


def cmd_train(args: argparse.Namespace) -> None:
    if args.ssim_quantile != 0:
        try:
            check_ssim_quantile(args.ssim_quantile)
        except ValueError as error:
            raise ValueError(f"{error} (or 0 to keep --ssim-threshold)") from None
    rule = _iteration_rule(args)
    if rule and args.model == "ae":
        raise ValueError(
            "--shrinking-masks, --iteration-painting and --last-painting-scores are I3AD settings: the autoencoder "
            "does not iterate"
        )
    name = check_name("model name (--name)", args.name or args.model)
    device = resolve_device(args.device)
    command = _command_line()
    categories = _categories(args.data_root, args.category)
    if not args.overwrite:  # every category's folder, before the first one trains
        for category in categories:
            check_free_for_checkpoint(Path(args.out) / category / name)
    settings = DetectionSettings(iterations=args.iterations, ssim_threshold=args.ssim_threshold, **rule)
    plans = []  # every category's data and held-out split, before the first one trains
    for category in categories:
        index = index_category(args.data_root, category)
        config = TrainConfig(
            model=args.model,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            base_width=args.base_width,
            width_multipliers=tuple(args.width_multipliers),
            patch_size=args.patch_size,
            full_res_width=args.full_res_width,
            norm_layer=args.norm_layer,
            norm_free_levels=args.norm_free_levels,
            latent_dim=args.latent_dim,
            augmentations=_augmentations(args.augment, category),
            grid_cell_sizes=tuple(args.grid_cell_sizes),
            synthetic_defects=args.synthetic_defects,
            synthetic_defect_looks=args.synthetic_defect_looks,
            holdout_fraction=args.holdout,
            seed=args.seed,
            bf16=args.bf16,
            compile=args.compile,
            max_minutes=args.max_minutes,
        )
        split_for_calibration(index, config, settings)
        plans.append((category, index, config))
    for category, index, config in plans:
        out = Path(args.out) / category / name
        started = time.perf_counter()
        detector = train_category(
            index,
            config,
            name=name,
            image_size=args.image_size,
            normalization=args.normalization,
            geometry=args.geometry,
            settings=settings,
            ssim_quantile=None if args.ssim_quantile == 0 else args.ssim_quantile,
            device=device,
            out=out,
            half_precision=args.save_fp16,
            overwrite=args.overwrite,
            info={"command": command, "data_source": data_source(category), "license": data_license(category)},
            progress=not args.quiet,
        )
        steps = [entry["step"] for entry in detector.info["train_log"] if "step" in entry]
        steps_run = steps[-1] if steps else args.steps
        plural = "s" if steps_run != 1 else ""
        print(
            f"{category}/{name}: trained {steps_run} step{plural} in {time.perf_counter() - started:.0f} s on {device} "
            f"({detector.preprocessing.geometry} geometry); tau={detector.calibration.tau_text}; "
            f"saved to {out}"
        )


def _apply_convolution_choices(args: argparse.Namespace) -> None:
    if args.no_tf32:  # PyTorch runs cuDNN convolutions in TF32 unless told otherwise (matrix products it does not)
        torch.backends.cudnn.allow_tf32 = False
    if args.cudnn_benchmark:  # cuDNN times its algorithms for each new input shape and keeps the fastest
        torch.backends.cudnn.benchmark = True


def _writable_out(folder: Path, out: Path) -> Path:
    """``folder``, where ``--out out`` writes, created and checked for writing; the error names the flag."""
    try:
        return ensure_writable_folder(folder)
    except ValueError as error:
        raise ValueError(f"--out {out}: {error}") from None


def _output_file(path: str, *, replace: bool, how_to_replace: str = "add --overwrite to replace it") -> Path:
    """``--out`` as a file that can be written, checked before any work is done; a file already there only when
    ``replace`` (a finished table is not lost to a rerun), else an error that ends with ``how_to_replace``."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'results.csv'}")
    if out.exists() and not replace:
        raise ValueError(f"--out {out} already exists: {how_to_replace}, or give another file")
    _writable_out(out.parent, out)
    return out


def _checkpoints_under(root: str) -> dict[str, list[str]]:
    """{category: [model, ...]} of the checkpoints under ``root``; an error when there are none."""
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"no checkpoints under {root} (expected <category>/<model>/detector.json)")
    return found


def cmd_evaluate(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    _apply_convolution_choices(args)
    # The grid's values are checked before anything is written, loaded or computed (DetectionSettings holds the
    # rules for T, cell sizes and sigmas).
    for threshold in args.thresholds:
        check_ssim_threshold(threshold)
    for cell_size in args.cell_sizes or []:
        DetectionSettings(step0_cell_size=cell_size)
    for sigma in args.sigmas or []:
        DetectionSettings(smoothing_sigma=sigma)
    DetectionSettings(iterations=args.iterations)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    rule = _iteration_rule(args)
    if rule and args.by_defect:
        raise ValueError(
            "--by-defect scores each checkpoint at its own settings and thresholds; set --shrinking-masks, "
            "--iteration-painting or --last-painting-scores with calibrate (on a copy), then evaluate it"
        )
    if args.by_defect and (args.precision != "fp32" or args.compile):
        raise ValueError("--by-defect runs the networks in float32, uncompiled; leave out --bf16, --fp16 and --compile")
    if args.precision != "fp32" and device.type != "cuda":
        print(f"note: --{args.precision} applies on CUDA only; evaluating in float32 on {device}", file=sys.stderr)
    out = _output_file(args.out, replace=args.overwrite)
    available = _checkpoints_under(args.checkpoints)
    # Each category once, in the order given.
    requested = list(dict.fromkeys(map(check_category_name, args.category)))
    categories = sorted(available) if args.category == ["all"] else requested
    # Every category and model is looked up before anything is computed, so a typo does not cost a finished run.
    for category in categories:
        if category not in available:
            raise CheckpointError(
                f"no checkpoint for category {category!r} under {args.checkpoints} "
                f"(have: {', '.join(sorted(available))})"
            )
    for name in args.model or []:
        if not any(name in available[category] for category in categories):
            raise CheckpointError(f"no checkpoint named {name!r} for {', '.join(categories)} under {args.checkpoints}")
    jobs = []
    for category in categories:
        names = [name for name in available[category] if not args.model or name in args.model]
        if not names:
            raise CheckpointError(
                f"no checkpoint named {' or '.join(args.model)} for category {category!r} "
                f"(have: {', '.join(available[category])})"
            )
        try:
            index = index_category(args.data_root, category)
            index.check_test()  # here, not when its turn comes after the other categories' evaluation
            jobs.append((index, names))
        except DatasetError as error:
            if args.category != ["all"]:
                raise
            raise DatasetError(f"{error}; the default --category all takes every category of --checkpoints") from None
    tables = []
    for index, names in jobs:
        test_sets = {}
        for name in names:
            detector = load_checkpoint(Path(args.checkpoints) / index.name / name, device)
            if rule and detector.kind == "i3ad":
                detector = replace(detector, settings=detector.settings.with_(**rule))
            key = tuple(detector.preprocessing.to_dict().values())
            if key not in test_sets:
                test_sets = {key: load_test_set(index, detector.preprocessing, device)}
            started = time.perf_counter()
            if args.by_defect:
                table = evaluate_by_defect(detector, test_sets[key], batch_size=args.batch_size)
                print(f"{index.name}/{name}: {len(table)} defect types in {time.perf_counter() - started:.1f} s")
            else:
                table = _evaluate_sweep(args, detector, index, test_sets[key], device)
                print(f"{index.name}/{name}: {len(table)} rows in {time.perf_counter() - started:.1f} s{_best(table)}")
            tables.append(table)
            # Written after every model, so that an interrupted run keeps what it finished.
            write_csv(pd.concat(tables, ignore_index=True), out, float_format="%.4f")
    print(f"wrote {sum(len(table) for table in tables)} rows to {out}")


def _evaluate_sweep(
    args: argparse.Namespace, detector: AnomalyDetector, index: CategoryIndex, test: TestSet, device: torch.device
) -> pd.DataFrame:
    try:
        holdout = holdout_images(detector, index).to(device)
        regions = holdout_regions(detector, index).to(device)
    except ValueError as error:
        holdout = regions = None
        print(f"{index.name}/{detector.name}: no normal-error rows ({error})")
    return evaluate_detector(
        detector,
        test,
        holdout=holdout,
        holdout_regions=regions,
        thresholds=args.thresholds,
        max_iterations=args.iterations,
        cell_sizes=args.cell_sizes,
        measures=args.measures,
        sigmas=args.sigmas,
        batch_size=args.batch_size,
        precision=args.precision,
        compile_network=args.compile,
    )


def _best(table: pd.DataFrame) -> str:
    """ "; best image AUROC ..." for the progress line, or nothing when the test set has one class only."""
    if table["image_auroc"].isna().all():
        return "; no image AUROC (the test set holds normal or anomalous images only)"
    best = table.loc[table["image_auroc"].idxmax()]
    tau = f", tau={best['ssim_threshold']:.3g}" if best["iterations"] > 0 else ""  # step 0 uses no tau
    return f"; best image AUROC {best['image_auroc']:.3f} (T={best['iterations']}{tau})"


def _step0_changes(old: DetectionSettings, new: DetectionSettings) -> bool:
    return (old.step0_cell_size, old.step0_hidden_groups) != (new.step0_cell_size, new.step0_hidden_groups)


# What only the inpainting detector has: the autoencoder reconstructs once, without masks.
_INPAINTING_SETTINGS = {
    "iterations",
    "step0_cell_size",
    "step0_hidden_groups",
    "shrinking_masks",
    "iteration_painting",
    "last_painting_scores",
}


def cmd_calibrate(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    check_ssim_quantile(args.ssim_quantile)
    changes = {
        k: v
        for k, v in {
            "iterations": args.iterations,
            "step0_cell_size": args.cell_size,
            "step0_hidden_groups": args.hidden_groups,
            "anomaly_measure": args.measure,
            "smoothing_sigma": args.sigma,
            "subtract_normal_error": args.normal_error,
        }.items()
        if v is not None
    } | _iteration_rule(args)
    # Every checkpoint, its folder, its category's data and its new settings are checked first, so that a mistake
    # in the last one does not come after the first ones were rewritten.
    plans = []
    for folder in args.checkpoint:
        detector = load_checkpoint(folder, device, check_defaults=False)  # defaults it is asked to repair, too
        ensure_writable_folder(folder)
        if detector.kind != "i3ad" and set(changes) & _INPAINTING_SETTINGS:
            raise ValueError(f"{folder} is an autoencoder: it has no iterations or step-0 masks to set")
        settings = detector.settings.with_(**changes)
        check_iterations(settings.iterations)
        index = index_category(args.data_root, detector.category)
        holdout_paths(detector, index)  # its held-out images are there
        plans.append((folder, detector, index, settings))
    for folder, detector, index, settings in plans:
        quantile = args.ssim_quantile
        if quantile is None and _step0_changes(detector.settings, settings):
            # tau is a quantile of the held-out images' step-0 SSIM: another step 0 needs it found again.
            quantile = detector.calibration.ssim_quantile
        detector = recalibrate(detector, index, settings, ssim_quantile=quantile)
        detector.info["calibrate_command"] = _command_line()
        save_record(detector, folder)
        iterations = detector.default_iterations
        print(
            f"{folder}: tau={detector.calibration.tau_text}, score threshold at T={iterations}: "
            f"{detector.calibration.score_threshold(iterations):.4f}"
        )


def _inputs(paths: list[str], heatmaps: Path) -> list[Path]:
    """The image files named or found (recursively) in the folders named; the heat-maps and masks that this run's
    ``heatmaps`` folder, or any earlier run's (a heatmaps folder beside a scores.csv), holds are left out, so that
    running the same command twice scores the same images, and so are hidden files and folders and __MACOSX (what
    unpacked archives and notebooks leave: "._x.png" is no image)."""
    files: list[Path] = []
    written = heatmaps.resolve()

    def is_output(folder: Path) -> bool:
        return folder.resolve() == written or (folder.name == "heatmaps" and (folder.parent / "scores.csv").is_file())

    def wanted(path: Path, folder: Path) -> bool:
        inside = path.relative_to(folder)
        if any(map(is_hidden, inside.parts)) or any(is_output(folder / parent) for parent in inside.parents[:-1]):
            return False
        # A link to nothing is kept, so that its row in scores.csv says so rather than it going missing.
        exists = path.is_file() or (path.is_symlink() and not path.exists())
        return exists and path.suffix.lower() in IMAGE_EXTENSIONS

    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if wanted(p, item))
            if not found:
                raise ValueError(f"{item} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif not item.exists():
            raise ValueError(f"{item}: no such file or folder")
        else:
            files.append(item)
    return files


# detect's pictures: numbered, so that equal names from different folders do not collide (masks add "_mask").
_PICTURE_NAME = re.compile(r"\d{5,}_.+\.png")


def _picture_name(number: int, stem: str) -> str:
    return f"{number:05d}_{stem}.png"


def _clear_earlier_detections(out: Path, overwrite: bool) -> None:
    """An earlier run's scores.csv in ``out`` is refused (its rows would be lost, its heat-maps mixed with this run's
    under the same numbers); with ``overwrite``, it and the heat-maps and masks it wrote are removed first."""
    if not (out / "scores.csv").exists():
        return
    if not overwrite:
        raise ValueError(
            f"--out {out} holds the scores.csv of an earlier run; give another folder, or --overwrite to replace it"
        )
    # Only this command's numbered pictures go: anything else a user put into the folder stays.
    for picture in (out / "heatmaps").glob("*.png"):
        if _PICTURE_NAME.fullmatch(picture.name):
            picture.unlink()
    (out / "scores.csv").unlink()


def cmd_detect(args: argparse.Namespace) -> None:
    # Imported here: plotly (for the colour map) is only needed for pictures, not to train or evaluate.
    from i3ad.visualize import heatmap_picture, mask_picture, output_name

    device = resolve_device(args.device)
    detector = load_checkpoint(args.checkpoint, device)
    # The settings are checked once, before any image is read, rather than failing on every image.
    # A checkpoint's own default T is checked as well: it may have been edited beyond the calibrated range.
    iterations = detector.default_iterations
    if detector.kind == "i3ad":
        iterations = check_iterations(iterations if args.iterations is None else args.iterations)
    elif args.iterations is not None or args.ssim_threshold is not None:
        print(
            f"note: {args.checkpoint} is an autoencoder: it has no iterations or tau, so those flags are ignored",
            file=sys.stderr,
        )
    ssim_threshold = check_ssim_threshold(args.ssim_threshold)
    # The tau this run paints with: step 0 and the autoencoder use none.
    tau = detector.settings.ssim_threshold if ssim_threshold is None else ssim_threshold
    tau_used = detector.kind == "i3ad" and iterations > 0
    own_threshold = args.score_threshold is not None
    if own_threshold and not is_finite_number(args.score_threshold):
        raise ValueError(f"the score threshold must be a finite number, got {args.score_threshold}")
    if tau_used and tau != detector.calibration.ssim_threshold and not own_threshold:
        print(
            f"note: the score thresholds were calibrated at tau = {detector.calibration.tau_text}; "
            f"at tau = {tau:.4f} the verdicts are only indicative",
            file=sys.stderr,
        )
    out = Path(args.out)
    inputs = _inputs(args.inputs, out / "heatmaps")
    _writable_out(out / "heatmaps", out)  # first: a folder it cannot write to is left as it is
    _clear_earlier_detections(out, args.overwrite)
    threshold = args.score_threshold if own_threshold else detector.calibration.score_threshold(iterations)
    scored = failures = 0
    # Each row is written as soon as its image is done, so that an interrupted run keeps what it finished.
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(DETECT_COLUMNS))
        writer.writeheader()
        for number, path in enumerate(inputs):
            row = {
                "file": str(path),
                "threshold": f"{threshold:.4f}",
                "iterations": iterations,
                "ssim_threshold": f"{tau:.4f}" if tau_used else "",
            }

            def score_image(number: int = number, path: Path = path) -> dict[str, str]:
                image = detector.read(path)
                note = detector.preprocessing.distortion_note(*image.shape[-2:])
                if note is not None:
                    print(f"note: {path}: {note}", file=sys.stderr)
                result = detector.detect(image, iterations=iterations, ssim_threshold=ssim_threshold)
                score = result.scores[0].item()
                heatmap = out / "heatmaps" / _picture_name(number, output_name(path))  # cut to fit the file system
                anomaly_map = detector.crop(result.anomaly_map, image)[0].cpu()
                heatmap_picture(image, anomaly_map, threshold).save(heatmap)
                if args.save_masks:
                    mask_picture(image, anomaly_map, threshold).save(heatmap.with_name(heatmap.stem + "_mask.png"))
                return {"score": f"{score:.4f}", "verdict": verdict(score, threshold), "heatmap": str(heatmap)}

            try:
                row.update(
                    unless_out_of_gpu_memory(score_image)
                    or {"error": "the GPU ran out of memory on this image; try --device cpu"}
                )
            except (ImageReadError, ValueError, OSError) as error:  # OSError: its pictures could not be written
                row["error"] = str(error)
            if row.get("error"):
                failures += 1
                # Errors about reading a file already start with its path.
                reason = row["error"] if row["error"].startswith(str(path)) else f"{path}: {row['error']}"
                print(f"skipped {reason}", file=sys.stderr)
            else:
                scored += 1
                print(f"{path}: score {row['score']} -> {row['verdict']}")
            writer.writerow(row)
            handle.flush()
    print(f"scored {scored} of {len(inputs)} images; wrote {out / 'scores.csv'}")
    if failures == len(inputs):
        raise SystemExit(1)


# Columns every table of ``bench`` has held, from its first version on: a file without them is not one that --append
# may add to (other columns came later, and older tables lack them).
_BENCH_TABLE_COLUMNS = ("device", "images_per_s")


def _earlier_bench_table(out: Path) -> pd.DataFrame:
    """The table ``bench --append`` adds to, read before anything is timed; an error naming the file when it is not
    one that bench wrote."""
    not_a_table = f"--append: {out} is not a table of `python -m i3ad bench`"
    try:
        table = pd.read_csv(out)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{not_a_table} ({error_summary(error)})") from None
    missing = [column for column in _BENCH_TABLE_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{not_a_table} (it lacks the column {missing[0]}); give another --out")
    return table


def cmd_bench(args: argparse.Namespace) -> None:
    check_plan(args.batch_sizes, args.iterations, args.repeats, args.sweep_images)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    how_to_replace = "add --overwrite to replace it or --append to add rows to it"
    out = (
        _output_file(args.out, replace=args.overwrite or args.append, how_to_replace=how_to_replace)
        if args.out
        else None
    )
    device = resolve_device(args.device)
    _apply_convolution_choices(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = load_checkpoint(args.checkpoint, device)
    if detector.kind != "i3ad":
        raise ValueError(f"bench times the iterative inpainting: {args.checkpoint} is an autoencoder, give an I3AD one")
    if args.data_root:
        index = index_category(args.data_root, detector.category)
        if not index.test:
            raise ValueError(f"{index.root / 'test'} holds no test images to time the detection on")
        images = load_images([s.image for s in index.test][: max(args.batch_sizes)], detector.preprocessing)
    else:
        with tempfile.TemporaryDirectory() as folder:
            root = make_synthetic_category(
                folder,
                size=detector.preprocessing.image_size,
                channels=detector.preprocessing.channels,
                train=0,
                test_good=8,
                test_per_defect=4,
            )
            images = load_images(sorted(root.glob("test/*/*.png")), detector.preprocessing)
    earlier = _earlier_bench_table(out) if out is not None and args.append and out.exists() else None

    def save(table: pd.DataFrame) -> None:
        if earlier is not None:  # rows written before a column existed get it empty; the columns keep today's order
            older_only = [column for column in earlier.columns if column not in table.columns]
            table = pd.concat([earlier, table], ignore_index=True)[[*table.columns, *older_only]]
        write_csv(table, out, float_format="%.4g")

    table = run_benchmark(
        detector,
        images.to(device),
        batch_sizes=args.batch_sizes,
        iterations=args.iterations,
        precisions=args.precisions,
        repeats=args.repeats,
        sweep_images=args.sweep_images,
        compile_mode=args.compile,
        static_shapes=args.static_shapes,
        channels_last=args.channels_last,
        profile_convolutions=args.profile_convolutions,
        # Saved as it is measured: a long run (a CPU grid takes most of an hour) stopped early keeps its rows.
        on_rows=save if out is not None else None,
    )
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.3g}".format):
        print(table.drop(columns=["date", "torch"]).to_string(index=False))
    if out is not None:  # saved by run_benchmark as it measured
        print(f"wrote {out}")


def _settings_of_checkpoints(root: str) -> dict[str, DetectionSettings]:
    """{model: the default settings of its checkpoints under ``root``} (tau aside, calibrated per category); an
    error when one model's checkpoints differ, since its rows are summarised at one setting."""
    found: dict[str, dict[str, DetectionSettings]] = {}
    for category, names in _checkpoints_under(root).items():
        for name in names:
            settings = default_settings(Path(root) / category / name)
            found.setdefault(name, {})[category] = settings.with_(ssim_threshold=DetectionSettings.ssim_threshold)
    for name, by_category in found.items():
        if len(set(by_category.values())) > 1:
            detail = "; ".join(f"{category}: {settings_text(s)}" for category, s in sorted(by_category.items()))
            raise ValueError(
                f"the {name} checkpoints under {root} differ in their default settings ({detail}); summarise their "
                "rows with --iterations, --hidden-groups and the iteration-rule flags instead"
            )
    return {name: next(iter(by_category.values())) for name, by_category in found.items()}


def cmd_report(args: argparse.Namespace) -> None:
    summary_flags = {
        "--checkpoints": args.checkpoints,
        "--iterations": args.iterations,
        "--hidden-groups": args.hidden_groups,
        "--shrinking-masks": args.shrinking_masks,
        "--iteration-painting": args.iteration_painting,
        "--last-painting-scores": args.last_painting_scores,
    }
    given = [flag for flag, value in summary_flags.items() if value is not None]
    if given and (args.compare or args.update_cards or is_by_defect_table(args.results)):
        raise ValueError(
            f"{', '.join(given)} {'choose' if len(given) > 1 else 'chooses'} the rows of the summary tables; "
            "--compare, --update-cards (each checkpoint at its own settings) and a per-defect table do not use them"
        )
    if is_by_defect_table(args.results):
        if args.compare or args.update_cards:
            raise ValueError(f"{args.results} is a per-defect table: --compare and --update-cards take a results table")
        print("Verdicts at each checkpoint's calibrated score threshold (its default T and tau):\n")
        print(markdown_table(verdict_summary(pd.read_csv(args.results))))
        return
    results = load_results(args.results)
    if args.compare:
        changes = compare_runs(results, load_results(args.compare))
        print(f"Largest change from {args.results} to {args.compare} over the settings both hold:\n")
        print(markdown_table(changes, digits=4))
        return
    if args.update_cards:
        for category, names in _checkpoints_under(args.update_cards).items():
            for name in names:
                folder = Path(args.update_cards) / category / name
                detector = load_checkpoint(folder)
                rows = headline(results, detector.settings)
                row = rows[(rows["category"] == category) & (rows["model"] == name)]
                if row.empty:
                    continue
                tau = detector.settings.ssim_threshold if detector.kind == "i3ad" else None
                if tau is not None and abs(row.iloc[0]["ssim_threshold"] - tau) > 5e-5:  # the table keeps 4 decimals
                    print(
                        f"note: {folder} was re-calibrated (tau {tau:.4f}) after {args.results} was computed "
                        f"(tau {row.iloc[0]['ssim_threshold']:.4f}): evaluate it again; its card is left as it is",
                        file=sys.stderr,
                    )
                    continue
                metrics = {k: round(float(row.iloc[0][k]), 4) for k in METRIC_COLUMNS if pd.notna(row.iloc[0][k])}
                detector.info["metrics"] = {**metrics, "source": f"{args.results} at the checkpoint's default settings"}
                save_record(detector, folder)
                print(f"{folder}: model card metrics updated")
        return
    changes = {"iterations": args.iterations, "step0_hidden_groups": args.hidden_groups}
    changes = {key: value for key, value in changes.items() if value is not None} | _iteration_rule(args)
    if args.iterations is not None:
        check_iterations(args.iterations)
    settings = SHIPPED_SETTINGS
    if args.checkpoints:
        own = _settings_of_checkpoints(args.checkpoints)
        settings = ModelSettings(settings.others, {**settings.per_model, **own})
    settings = settings.with_(**changes)
    tables = summary_tables(results, settings)
    for note in missing_rows(results, settings):
        print(f"note: {note}")
    print("Metrics at the settings of each model (I3AD: calibrated tau):")
    print(f"- {settings.describe(separator=chr(10) + '- ')}\n")
    print(markdown_table(tables["per_category"]))
    print("\nI3AD image AUROC, mean over categories, against the number of iterations T (calibrated tau):\n")
    print(markdown_table(tables["mean_by_iterations"]))
    print("\nThresholds: I3AD image AUROC, mean over categories, at fixed tau values and the calibrated one:\n")
    print(markdown_table(tables["thresholds"]))
    print("\nScoring variants: I3AD image AUROC, mean over categories, at the calibrated tau:\n")
    print(markdown_table(tables["scoring_variants"]))
    print("\nNormal error: image AUROC, mean over categories, with raw maps and with the normal error subtracted:\n")
    print(markdown_table(tables["normal_error"]))


def cmd_synth(args: argparse.Namespace) -> None:
    root = make_synthetic_category(
        args.out, args.category, size=args.size, channels=1 if args.greyscale else 3, seed=args.seed
    )
    print(f"wrote {root}")


def cmd_upload(args: argparse.Namespace) -> None:
    from i3ad.hub import upload_checkpoints

    uploaded = upload_checkpoints(
        args.checkpoints, args.repo_id, categories=args.category, variants=args.model, private=args.private
    )
    print(f"uploaded {', '.join(uploaded)} to Hub repo {args.repo_id}")


def _add_convolution_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-tf32", action="store_true", help="full float32 CUDA convolutions instead of TF32 (slower; less rounding)"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its convolution algorithms for each input shape and keep the fastest (a GPU warm-up per "
        "shape; the chosen algorithms may round differently)",
    )


def _add_iteration_rule_arguments(
    parser: argparse.ArgumentParser, scope: str, defaults: tuple[str, str, str] = ("the checkpoint's choice",) * 3
) -> None:
    """--shrinking-masks, --iteration-painting and --last-painting-scores (``DetectionSettings``), for ``train``,
    ``calibrate``, ``evaluate`` and ``report``."""
    parser.add_argument(
        "--shrinking-masks",
        action=argparse.BooleanOptionalAction,
        help=f"cut each step's mask to the last one's pixels ({scope}; default: {defaults[0]})",
    )
    parser.add_argument(
        "--iteration-painting",
        choices=ITERATION_PAINTINGS,
        help="re-paint each step's mask at once (hole) or in step 0's grid cells, from the last reconstruction "
        f"(cells) ({scope}; default: {defaults[1]})",
    )
    parser.add_argument(
        "--last-painting-scores",
        action=argparse.BooleanOptionalAction,
        help="score each pixel by the last step that re-painted it, so that one passed through keeps its earlier "
        f"score ({scope}; default: {defaults[2]})",
    )


def _iteration_rule(args: argparse.Namespace) -> dict[str, object]:
    """The setting changes --shrinking-masks, --iteration-painting and --last-painting-scores ask for (none given:
    none)."""
    changes = {
        "shrinking_masks": args.shrinking_masks,
        "iteration_painting": args.iteration_painting,
        "last_painting_scores": args.last_painting_scores,
    }
    return {key: value for key, value in changes.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    # Run as `python -m i3ad` argv[0] is __main__.py; installed, it is the `i3ad` command.
    command = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog="python -m i3ad" if command == "__main__.py" else command,
        description="Anomaly detection by iterative SSIM-masked inpainting. Each command has its own --help.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model per category, calibrate it and save a checkpoint")
    train.add_argument("--data-root", required=True, help="folder holding categories in the MVTec AD layout")
    train.add_argument("--category", nargs="+", required=True, help="category names, or 'all'")
    train.add_argument("--model", choices=MODEL_KINDS, default="i3ad", help="i3ad: inpainting U-Net; ae: the baseline")
    train.add_argument("--name", help="checkpoint variant name (default: the model kind), e.g. i3ad-small")
    train.add_argument("--out", default="checkpoints", help="checkpoints root; writes OUT/<category>/<name>/")
    train.add_argument(
        "--steps", type=int, default=TrainConfig.steps, help="optimiser steps (an upper bound with --max-minutes)"
    )
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="images per step")
    train.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate, help="AdamW peak rate")
    train.add_argument(
        "--base-width", type=int, default=TrainConfig.base_width, help="channels of the first layer (16: i3ad-small)"
    )
    train.add_argument(
        "--width-multipliers",
        type=int,
        nargs="+",
        default=list(TrainConfig.width_multipliers),
        help="U-Net channels per level as multiples of the base width; each level halves the resolution",
    )
    train.add_argument(
        "--patch-size",
        type=int,
        default=TrainConfig.patch_size,
        help="U-Net: fold each P x P block of pixels into channels before the first level (1: none)",
    )
    train.add_argument(
        "--full-res-width",
        type=int,
        default=TrainConfig.full_res_width,
        help="U-Net with --patch-size above 1: channels of a thin full-resolution path (0: none)",
    )
    train.add_argument(
        "--norm-layer",
        choices=NORM_LAYERS,
        default=TrainConfig.norm_layer,
        help="U-Net: GroupNorm, BatchNorm (fixed statistics at detection), or none (residual branches start at zero)",
    )
    train.add_argument(
        "--norm-free-levels",
        type=int,
        default=TrainConfig.norm_free_levels,
        help="U-Net: how many levels, from full resolution down, go without normalisation layers "
        "(0: all have them; at most the number of --width-multipliers)",
    )
    train.add_argument("--latent-dim", type=int, default=TrainConfig.latent_dim, help="AE bottleneck size")
    train.add_argument("--image-size", type=int, default=256, help="side of the square frame the network sees")
    train.add_argument(
        "--normalization", choices=NORMALIZATIONS, default="none", help="per-image standardisation against illumination"
    )
    train.add_argument(
        "--geometry",
        choices=("auto", *GEOMETRIES),
        default="auto",
        help="stretch: resize to the square frame; fit: keep the aspect ratio, fill the frame with the image's mirror; "
        "auto: stretch when every training image is square, fit otherwise",
    )
    train.add_argument("--augment", default="default", help="'default' (per category), 'none', or e.g. hflip,vflip")
    train.add_argument(
        "--grid-cell-sizes",
        type=int,
        nargs="+",
        default=TrainConfig.grid_cell_sizes,
        help="cell sizes (px) of the random grid masks the inpainting network learns to fill",
    )
    train.add_argument(
        "--synthetic-defects",
        type=float,
        default=TrainConfig.synthetic_defects,
        metavar="SHARE",
        help="share of training images given a synthetic defect (strokes or blobs) that the inpainting network learns "
        "to paint over with normal texture instead of continuing it into a hole (i3ad only)",
    )
    train.add_argument(
        "--synthetic-defect-looks",
        nargs="+",
        choices=DEFECT_LOOKS,
        default=TrainConfig.synthetic_defect_looks,
        metavar="LOOK",
        help="what synthetic defects look like, each defect one of these with equal chances: "
        f"{', '.join(DEFECT_LOOKS)} (foreign texture; a brightness shift, with a tint in colour images; lost texture: "
        f"the image blurred); needs --synthetic-defects; default: {' '.join(DEFAULT_LOOKS)}",
    )
    train.add_argument(
        "--holdout", type=float, default=TrainConfig.holdout_fraction, help="share of train/good kept for calibration"
    )
    train.add_argument(
        "--ssim-quantile",
        type=float,
        default=DEFAULT_SSIM_QUANTILE,
        help="tau = this quantile of held-out normal SSIM (0: keep --ssim-threshold)",
    )
    train.add_argument(
        "--ssim-threshold",
        type=float,
        default=DetectionSettings.ssim_threshold,
        help="tau stored with the checkpoint when --ssim-quantile is 0 (default: %(default)s)",
    )
    train.add_argument(
        "--iterations", type=int, default=DetectionSettings.iterations, help="default T stored with the checkpoint"
    )
    library_rule = (
        "on" if DetectionSettings.shrinking_masks else "off",
        DetectionSettings.iteration_painting,
        "on" if DetectionSettings.last_painting_scores else "off",
    )
    _add_iteration_rule_arguments(train, "stored with the checkpoint", defaults=library_rule)
    train.add_argument("--seed", type=int, default=0, help="draws the initial weights, masks and held-out split")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA")
    train.add_argument("--compile", action="store_true", help="train through torch.compile (a GPU warm-up first)")
    train.add_argument(
        "--max-minutes", type=float, help="stop training early after this long (still calibrates and saves)"
    )
    train.add_argument("--save-fp16", action="store_true", help="store float16 weights (half the size)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a checkpoint already in OUT/<category>/<name>/ (refused otherwise)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="metrics of checkpoints on test sets, for T = 0..N and several tau, to CSV"
    )
    evaluate.add_argument(
        "--data-root",
        required=True,
        help="folder holding the categories (test images, and train/good for the held-out normal images)",
    )
    evaluate.add_argument("--checkpoints", default="checkpoints", help="checkpoints root: <category>/<model>/")
    evaluate.add_argument(
        "--category", nargs="+", default=["all"], help="categories (default: every one under --checkpoints)"
    )
    evaluate.add_argument("--model", nargs="+", help="checkpoint variants to evaluate (default: all)")
    evaluate.add_argument(
        "--iterations", type=int, default=MAX_CALIBRATED_ITERATIONS, help="evaluate T = 0..this (default: %(default)s)"
    )
    evaluate.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=list(DEFAULT_THRESHOLDS),
        help="tau values (the calibrated one is added; default: %(default)s)",
    )
    evaluate.add_argument(
        "--cell-sizes", type=int, nargs="+", help="step-0 grid cell sizes (default: the checkpoint's)"
    )
    evaluate.add_argument(
        "--measures", nargs="+", choices=ANOMALY_MEASURES, help="anomaly measures (default: the checkpoint's)"
    )
    evaluate.add_argument("--sigmas", type=float, nargs="+", help="map smoothing sigmas (default: the checkpoint's)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    evaluate.add_argument("--device", default="auto")
    precision = evaluate.add_mutually_exclusive_group()
    precision.add_argument(
        "--bf16", dest="precision", action="store_const", const="bf16", default="fp32", help="bfloat16 autocast on CUDA"
    )
    precision.add_argument(
        "--fp16", dest="precision", action="store_const", const="fp16", help="float16 autocast on CUDA"
    )
    evaluate.add_argument("--compile", action="store_true", help="run the networks through torch.compile")
    _add_convolution_flags(evaluate)
    evaluate.add_argument(
        "--by-defect",
        action="store_true",
        help="instead of the sweep: each checkpoint at its default settings, one row per defect type (the sweep's "
        "--iterations, --thresholds, --cell-sizes, --measures and --sigmas do not apply)",
    )
    _add_iteration_rule_arguments(evaluate, "for the sweep only")
    evaluate.add_argument("--out", default="results/evaluation.csv", help="the results CSV to write")
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results CSV if --out names one already (refused otherwise)",
    )
    evaluate.set_defaults(run=cmd_evaluate)

    detect = commands.add_parser("detect", help="score images or folders with a checkpoint; heat-maps and a CSV")
    detect.add_argument("inputs", nargs="+", help="image files or folders")
    detect.add_argument("--checkpoint", required=True, help="a checkpoint folder, e.g. checkpoints/bottle/i3ad")
    detect.add_argument("--iterations", type=int, help="T (default: the checkpoint's)")
    detect.add_argument("--ssim-threshold", type=float, help="tau (default: the calibrated one)")
    detect.add_argument(
        "--score-threshold",
        type=float,
        help="call images scoring above it anomalous (default: the checkpoint's, calibrated on held-out normal images "
        "at its tau and the chosen T), e.g. one chosen on the scores of your own normal images",
    )
    detect.add_argument(
        "--out",
        default="detections",
        help="folder for scores.csv and heatmaps/ (default: %(default)s); heat-maps at the input's size, smaller for "
        "very large inputs",
    )
    detect.add_argument("--save-masks", action="store_true", help="also save the binary anomaly masks (same size)")
    detect.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's scores.csv and heat-maps in OUT (refused otherwise)",
    )
    detect.add_argument("--device", default="auto")
    detect.set_defaults(run=cmd_detect)

    calibrate = commands.add_parser(
        "calibrate", help="change a checkpoint's default settings and re-calibrate its thresholds"
    )
    calibrate.add_argument("checkpoint", nargs="+", help="checkpoint folders")
    calibrate.add_argument(
        "--data-root", required=True, help="the data the checkpoint was trained on (its held-out images are reused)"
    )
    calibrate.add_argument("--iterations", type=int, help="new default T")
    calibrate.add_argument("--cell-size", type=int, help="new step-0 grid cell size")
    calibrate.add_argument(
        "--hidden-groups",
        type=int,
        help="new number of the step-0 grid's groups each step-0 mask hides (1 to K - 1, K = 4: every pixel is "
        "painted that many times and the paintings averaged)",
    )
    calibrate.add_argument("--measure", choices=ANOMALY_MEASURES, help="new anomaly measure")
    calibrate.add_argument("--sigma", type=float, help="new map smoothing sigma")
    calibrate.add_argument(
        "--normal-error",
        action=argparse.BooleanOptionalAction,
        help="subtract the held-out images' mean map per step (default: keep the checkpoint's choice)",
    )
    _add_iteration_rule_arguments(calibrate, "as the new default")
    calibrate.add_argument(
        "--ssim-quantile",
        type=float,
        help="re-calibrate tau at this quantile (default: keep the checkpoint's tau, or re-calibrate it at the "
        "checkpoint's quantile when --cell-size or --hidden-groups changes step 0)",
    )
    calibrate.add_argument("--device", default="auto")
    calibrate.set_defaults(run=cmd_calibrate)

    bench = commands.add_parser("bench", help="speed benchmark: forwards, detection at several T, evaluation sweep")
    bench.add_argument(
        "--checkpoint", default="checkpoints/bottle/i3ad", help="an I3AD checkpoint folder (default: %(default)s)"
    )
    bench.add_argument(
        "--data-root", help="take test images of the checkpoint's category from here (default: synthetic)"
    )
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    bench.add_argument(
        "--iterations",
        type=int,
        nargs="*",
        default=[0, 1, 5, 10],
        help="T values of the detections to time; none: time the network forwards only",
    )
    bench.add_argument("--precisions", nargs="+", choices=list(AUTOCAST_DTYPES), default=["fp32"])
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--sweep-images", type=int, default=0, help="also time a T=0..10 evaluation sweep over N images")
    bench.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--compile", choices=COMPILE_MODES, help="run the network through torch.compile in this mode")
    bench.add_argument(
        "--static-shapes", action="store_true", help="with --compile: one graph per input shape (dynamic=False)"
    )
    bench.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory for the network on a GPU (on a CPU the network always runs channels-last)",
    )
    bench.add_argument(
        "--profile-convolutions",
        action="store_true",
        help="also give the share of the network's time spent in convolutions and their own TFLOP/s (torch.profiler)",
    )
    _add_convolution_flags(bench)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--out", help="write (or with --append, add to) a CSV")
    existing_out = bench.add_mutually_exclusive_group()
    existing_out.add_argument("--append", action="store_true", help="add the rows to the CSV --out names")
    existing_out.add_argument(
        "--overwrite", action="store_true", help="replace the CSV if --out names one already (refused otherwise)"
    )
    bench.set_defaults(run=cmd_bench)

    report = commands.add_parser("report", help="print the README's tables from a results CSV")
    report.add_argument("--results", default="results/benchmark.csv")
    report.add_argument(
        "--update-cards", metavar="CHECKPOINTS", help="write each checkpoint's metrics into its model card"
    )
    report.add_argument(
        "--compare", metavar="CSV", help="print how far another results table (e.g. --bf16 or --fp16) moves the metrics"
    )
    report.add_argument(
        "--checkpoints",
        metavar="CHECKPOINTS",
        help="summarise each model at the default settings of its checkpoints under this folder, e.g. your own "
        "(default: each model's shipped settings)",
    )
    report.add_argument(
        "--iterations", type=int, help="the T of the per-category table, for every model (default: each model's)"
    )
    report.add_argument(
        "--hidden-groups",
        type=int,
        help="summarise the I3AD rows whose step-0 masks hide this many grid groups, for every model (default: each "
        "model's)",
    )
    _add_iteration_rule_arguments(
        report,
        "the rows to summarise, on top of each model's shipped settings",
        defaults=("each model's shipped one",) * 3,
    )
    report.set_defaults(run=cmd_report)

    synth = commands.add_parser("synth", help="write a small synthetic category (textures with painted defects)")
    synth.add_argument("--out", required=True, help="data root to write the category into")
    synth.add_argument("--category", default="synthetic")
    synth.add_argument("--size", type=int, default=64, help="image side in px")
    synth.add_argument("--greyscale", action="store_true", help="one channel instead of RGB")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)

    upload = commands.add_parser(
        "upload", help="upload checkpoint folders to a Hugging Face Hub model repo (<category>/<variant>/ layout)"
    )
    upload.add_argument("--checkpoints", default="checkpoints", help="the local checkpoints root")
    upload.add_argument("--repo-id", required=True, help="the Hub model repo, e.g. user/i3ad-checkpoints")
    upload.add_argument("--category", nargs="+", help="categories to upload (default: all)")
    upload.add_argument("--model", nargs="+", help="checkpoint variants to upload (default: all)")
    upload.add_argument(
        "--private", action="store_true", help="create the repo as private; an existing public repo is refused"
    )
    upload.set_defaults(run=cmd_upload)
    return parser


def _discard_further_output() -> None:
    """Point stdout at the null device, so that Python's own flush at exit does not fail on the broken pipe again."""
    # When stdout is no file descriptor (captured output), nothing is flushed to a pipe at exit either.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# Batches shrink by themselves on a GPU (i3ad.batching), but evaluate keeps every step's maps of a whole category.
_MEMORY_ADVICE = (
    "use a smaller --batch-size, and for evaluate fewer --iterations, --thresholds, --cell-sizes or --measures "
    "(it keeps the maps of every setting of a category at once)"
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # --no-tf32, --cudnn-benchmark and --threads change process-wide torch settings; whoever calls main() gets its own
    # back.
    tf32, cudnn_benchmark, threads = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )
    try:
        args.run(args)
        sys.stdout.flush()  # a reader that went away shows up here, not in the interpreter's flush at exit
    except BrokenPipeError:
        # The reader of the output stopped early (`... | head`): end quietly, like other command-line tools.
        _discard_further_output()
        return 141  # 128 + SIGPIPE, the shell's status for a process the broken pipe stopped
    # OSError covers a missing file as well as a full disk while writing results: a message, not a traceback.
    except (DatasetError, CheckpointError, ImageReadError, ValueError, FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(f"error: the GPU ran out of memory; {_MEMORY_ADVICE}", file=sys.stderr)
        return 2
    except MemoryError as error:  # refused before loading (batching.check_fits_in_memory), or Python's own (no text)
        print(f"error: {str(error) or f'the computer ran out of memory; {_MEMORY_ADVICE}'}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not is_cpu_out_of_memory(error):
            raise
        print(f"error: the computer ran out of memory; {_MEMORY_ADVICE}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # What was finished is on disk: evaluate's rows up to the last model, detect's up to the last image, bench's
        # up to the last batch size.
        print("\ninterrupted: what was finished before is kept", file=sys.stderr)
        return 130
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.set_num_threads(threads)
    return 0
