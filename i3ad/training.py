"""Training the inpainting network (I3AD) or the autoencoder baseline on the normal images of one category."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import Tensor
from tqdm import tqdm

from i3ad.masks import GRID_CELL_SIZES, check_cell_sizes, hide_mirror_copies, random_training_masks
from i3ad.models import ConvAutoencoder, InpaintingUNet, check_norm_free_levels, for_device
from i3ad.preprocessing import pixel_sources
from i3ad.scoring import autocast_for, network_autocast, paint
from i3ad.synthetic_defects import (
    DEFAULT_LOOKS,
    add_synthetic_defects,
    canonical_looks,
    check_defect_looks,
    check_defect_share,
)

MODEL_KINDS = ("i3ad", "ae")
AUGMENTATIONS = ("hflip", "vflip", "rot90")
# Gradients are clipped to this norm: the first steps on a fresh network (and an AE's SSIM loss) can spike.
MAX_GRADIENT_NORM = 1.0


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved into the checkpoint's detector.json)."""

    model: str = "i3ad"  # "i3ad" (inpainting U-Net) or "ae" (AE-SSIM baseline)
    steps: int = 2000  # optimiser steps
    batch_size: int = 32
    learning_rate: float = 5e-4  # AdamW peak; linear warm-up (100 steps, a tenth of short runs), cosine decay to 5 %
    weight_decay: float = 1e-4
    base_width: int = 32  # U-Net / autoencoder width; 16 gives the CPU demo model
    width_multipliers: tuple[int, ...] = (1, 2, 4, 4, 4)  # U-Net channels per level, times base_width
    patch_size: int = 1  # U-Net: pixels folded into channels per side before the first level (ignored for the AE)
    full_res_width: int = 0  # U-Net with patch_size > 1: channels of its thin full-resolution path (0: none)
    norm_layer: str = "group"  # U-Net: "group", "batch" or "none" (ignored for the AE)
    norm_free_levels: int = 0  # U-Net: levels from full resolution down without normalisation (ignored for the AE)
    latent_dim: int = 128  # autoencoder bottleneck size (ignored for i3ad)
    l2_weight: float = 1.0  # loss = (1 - SSIM) + l2_weight * MSE, on the re-painted image
    augmentations: tuple[str, ...] = ()  # any of "hflip", "vflip", "rot90"; only what the category allows
    grid_cell_sizes: tuple[int, ...] = GRID_CELL_SIZES  # cell sizes (px) of the random grid masks it learns to fill
    synthetic_defects: float = 0.0  # i3ad: share of training images given a synthetic defect the network must not copy
    synthetic_defect_looks: tuple[str, ...] = DEFAULT_LOOKS  # what those defects look like (synthetic_defects.py)
    holdout_fraction: float = 0.1  # share of train/good kept out of training, for calibration
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast on CUDA; off: on an H200 it ran slower than float32/TF32 for these nets
    compile: bool = False  # run the network's forward and backward through torch.compile (its warm-up counts as time)
    log_every: int = 100
    # A time budget: the step count is cut to what fits, measured on the first steps, so that the learning-rate
    # schedule still decays to its end; training stops at the budget regardless (then calibrates and saves).
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        unknown = set(self.augmentations) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
        check_cell_sizes(self.grid_cell_sizes)
        check_defect_share(self.synthetic_defects)
        check_defect_looks(self.synthetic_defect_looks)
        self.synthetic_defect_looks = canonical_looks(self.synthetic_defect_looks)  # as recorded: the order used
        if self.model != "i3ad" and self.synthetic_defects > 0:
            raise ValueError("synthetic defects teach the inpainting network; the autoencoder baseline trains without")
        if self.synthetic_defects == 0 and self.synthetic_defect_looks != DEFAULT_LOOKS:
            raise ValueError("synthetic defect looks were chosen, but no synthetic defects (give their share too)")
        check_norm_free_levels(self.norm_free_levels, len(self.width_multipliers))
        if self.steps < 1:
            raise ValueError(f"the number of training steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"the batch size must be >= 1, got {self.batch_size}")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:
            raise ValueError(f"the time budget must be a finite number of minutes above 0, got {self.max_minutes}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"the held-out share must lie in [0, 1), got {self.holdout_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


def split_holdout(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, holdout) of ``count`` normal images; the holdout has round(fraction * count) images, at least 1
    when fraction > 0, and never more than half (so none of a single image)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held = 0 if fraction <= 0 else min(max(1, round(fraction * count)), count // 2)
    return sorted(order[held:]), sorted(order[:held])


def build_model(config: TrainConfig, channels: int, image_size: int) -> InpaintingUNet | ConvAutoencoder:
    if config.model == "i3ad":
        return InpaintingUNet(
            channels=channels,
            base_width=config.base_width,
            width_multipliers=tuple(config.width_multipliers),
            patch_size=config.patch_size,
            full_res_width=config.full_res_width,
            norm_layer=config.norm_layer,
            norm_free_levels=config.norm_free_levels,
        )
    return ConvAutoencoder(
        channels=channels, image_size=image_size, base_width=config.base_width, latent_dim=config.latent_dim
    )


def augment(images: Tensor, augmentations: tuple[str, ...], generator: torch.Generator) -> Tensor:
    """Random flips / quarter turns, chosen per image. images: [B, C, H, W] (square for rot90)."""
    batch = images.shape[0]

    def chosen() -> Tensor:
        return (torch.rand(batch, generator=generator, device=images.device) < 0.5).view(-1, 1, 1, 1)

    if "hflip" in augmentations:
        images = torch.where(chosen(), images.flip(-1), images)
    if "vflip" in augmentations:
        images = torch.where(chosen(), images.flip(-2), images)
    if "rot90" in augmentations:
        images = torch.where(chosen(), images.rot90(1, dims=(-2, -1)), images)
    return images


def _learning_rate(step: int, total_steps: int, peak: float) -> float:
    warmup = min(100, total_steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


# Steps timed to fit a run into its time budget (after the first ones, which include cuDNN's warm-up).
_TIMING_STEPS = (20, 70)


def steps_within_budget(seconds_per_step: float, elapsed: float, config: TrainConfig) -> int:
    """How many steps in all fit into ``config.max_minutes`` (with 5 % to spare), never more than config.steps and
    never fewer than the timing window; the warm-up (the first 100 steps) is the same for any count >= 1000."""
    remaining = 0.95 * 60 * config.max_minutes - elapsed
    fitting = _TIMING_STEPS[1] + int(max(0.0, remaining) / max(seconds_per_step, 1e-9))
    return max(_TIMING_STEPS[1], min(config.steps, fitting))


def reconstruction_loss(reconstructions: Tensor, images: Tensor, l2_weight: float) -> Tensor:
    """(1 - SSIM) + l2_weight * MSE, in float32 (pytorch-msssim's Gaussian SSIM, window 11)."""
    reconstructions, images = reconstructions.float(), images.float()
    window = (min(11, images.shape[-1], images.shape[-2]) - 1) // 2 * 2 + 1  # the largest odd size <= 11 that fits
    similarity = ssim(reconstructions, images, data_range=1.0, size_average=True, win_size=window)
    return (1.0 - similarity) + l2_weight * F.mse_loss(reconstructions, images)


def train(
    images: Tensor,
    config: TrainConfig,
    *,
    regions: Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[InpaintingUNet | ConvAutoencoder, list[dict]]:
    """Train a fresh model on normal images [N, C, S, S] (already preprocessed) and return it with its loss log.
    ``regions`` [N, 1, S, S]: where each image lies in its frame (``Preprocessing.region``; None: everywhere); the
    masks then hide a hidden pixel's mirror copies on the fill too, as detection's do.

    The images are moved to ``device`` once; masks and augmentations are drawn there, so a GPU never waits for data.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    data = images.to(device)
    count, channels, size = data.shape[0], data.shape[1], data.shape[-1]
    if count == 0:
        raise ValueError("no training images")
    if regions is not None and regions.shape != (count, 1, *data.shape[-2:]):
        raise ValueError(f"regions {tuple(regions.shape)} do not match images {tuple(data.shape)}: one [1, S, S] each")
    # Carried along as an extra channel, so that flips and turns move it with the pixels it describes.
    sources = None if regions is None or config.model != "i3ad" else pixel_sources(regions.to(device))
    # The seed decides the initial weights without resetting the caller's random numbers (all later draws use
    # ``generator``).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = for_device(build_model(config, channels, size), device)
    # The compiled module shares the model's parameters; the model itself is what gets returned and saved.
    network = torch.compile(model) if config.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    autocast_dtype = autocast_for(device, "bf16" if config.bf16 else "fp32")
    log: list[dict] = []
    started = time.perf_counter()
    total_steps = config.steps
    timing_budget = config.max_minutes is not None and config.steps > _TIMING_STEPS[1]
    timing_started: float | None = None
    bar = tqdm(total=total_steps, desc=f"train {config.model}", disable=not progress, mininterval=1.0)
    model.train()
    step = 0
    while step < total_steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, total_steps, config.learning_rate)
        # 1. A batch of normal images, augmented as the category allows.
        picks = torch.randint(count, (config.batch_size,), generator=generator, device=device)
        batch = data[picks] if sources is None else torch.cat([data[picks], sources[picks]], dim=1)
        batch = augment(batch, config.augmentations, generator)
        batch, batch_sources = (batch, None) if sources is None else (batch[:, :channels], batch[:, channels:])
        # 2. Reconstruct: the U-Net re-paints randomly hidden pixels; the autoencoder rebuilds the whole image.
        if config.model == "i3ad":
            masks = random_training_masks(
                config.batch_size,
                (size, size),
                generator=generator,
                device=device,
                grid_cell_sizes=config.grid_cell_sizes,
            )
            masks = hide_mirror_copies(masks, batch_sources)
            inputs = add_synthetic_defects(batch, config.synthetic_defects, generator, config.synthetic_defect_looks)
            reconstructions = paint(network, inputs, masks, autocast_dtype)
            # Hidden pixels are to be painted normal; kept ones pass through, so their target is the input itself.
            targets = torch.where(masks > 0.5, batch, inputs)
        else:
            with network_autocast(device, autocast_dtype):
                reconstructions = network(batch)
            targets = batch
        # 3. Loss on the image as detection will see it (kept pixels are exact, so only hidden ones teach).
        loss = reconstruction_loss(reconstructions, targets, config.l2_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRADIENT_NORM)
        optimizer.step()
        step += 1
        bar.update(1)
        timing_step = timing_budget and step in _TIMING_STEPS
        if timing_step and device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if timing_step:
            if timing_started is None:
                timing_started = elapsed
            else:
                seconds_per_step = (elapsed - timing_started) / (_TIMING_STEPS[1] - _TIMING_STEPS[0])
                total_steps = steps_within_budget(seconds_per_step, elapsed, config)
                bar.total = total_steps
                log.append({"steps_within_budget": total_steps, "seconds_per_step": round(seconds_per_step, 4)})
        # The budget is also a hard limit, checked after every step: the fitted step count can be wrong when the
        # machine slows down, and short runs (or the timing steps themselves) have no fitted count at all.
        out_of_time = config.max_minutes is not None and elapsed > 60 * config.max_minutes and step < total_steps
        if step % config.log_every == 0 or step == total_steps or out_of_time:
            entry = {"step": step, "loss": loss.item(), "seconds": round(elapsed, 1)}
            if not math.isfinite(entry["loss"]):
                raise FloatingPointError(
                    f"training diverged at step {step} (loss {entry['loss']}); lower the learning rate"
                )
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
        if out_of_time:
            log.append({"stopped_early_at_step": step, "reason": f"max_minutes={config.max_minutes}"})
            break
    bar.close()
    model.eval()
    return model, log
