"""Anomaly detection by iterative SSIM-masked inpainting (I3AD), and the autoencoder baseline scored the same way.

Both return a ``DetectionResult`` holding every step, so that the app and the notebooks can show the iterations and
the evaluation can score T = 0..T_max from one pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

from i3ad.checks import is_count, is_finite_number
from i3ad.masks import hide_mirror_copies, step0_grid_masks
from i3ad.models import ConvAutoencoder, InpaintingUNet
from i3ad.normal_error import NormalError
from i3ad.preprocessing import pixel_sources
from i3ad.similarity import dilate, gaussian_blur, gradient_magnitude_similarity, ssim_map

ANOMALY_MEASURES = ("ssim", "ssim+gms")
ITERATION_PAINTINGS = ("hole", "cells")
# A guard against runaway loops; the masks settle long before (score thresholds are calibrated up to T = 10).
MAX_ITERATIONS = 100


@dataclass(frozen=True)
class DetectionSettings:
    """Test-time settings of the detector (the calibrated ones are stored with each checkpoint).

    iterations: T, the number of SSIM-masked inpainting steps after step 0.
    ssim_threshold: tau; pixels whose SSIM is below it are hidden and re-painted in the next step.
    step0_masks: K, the number of step-0 masks; the step-0 grid's cells fall into K groups.
    step0_hidden_groups: h, how many of the K groups each step-0 mask hides (1 to K - 1): every pixel is painted h
        times, each time from the (K - h) / K of the image left visible, and its paintings are averaged
        (results/README.md, "A denser step 0").
    step0_cell_size: grid cell side of the step-0 masks, in pixels.
    mask_dilation: the SSIM mask is dilated by this many pixels so that a defect's rim is re-painted too.
    smoothing_sigma: Gaussian smoothing of the anomaly map (0 = none); the image score is the map's maximum.
    anomaly_measure: "ssim" (1 - SSIM) or "ssim+gms" (mean of 1 - SSIM and 1 - multi-scale gradient similarity).
    subtract_normal_error: score the excess of each step's map over the mean map of held-out normal images at that
        step (``i3ad.normal_error``), when the checkpoint has one.
    shrinking_masks: each step's mask is cut to the last one's pixels. A pixel passed through is the input itself;
        its SSIM still drops beside a re-painted neighbour (SSIM's window spans 11 px), and the dilation would then
        widen the mask step after step into normal surroundings (results/README.md, item 9).
    iteration_painting: how steps t >= 1 re-paint their mask. "hole": at once, from the input outside it (the
        reference formulation). "cells": like step 0, in K passes over its grid run as one forward, pass k hiding the
        mask's pixels of step-0 mask k; the network sees the input outside the mask and the last step's
        reconstruction in the rest of it, so a defect's pixels are painted from already re-painted surroundings in
        holes of step 0's size (K times the network's work). Pixels new to the mask show the input there, which is
        why it goes with shrinking_masks.
    last_painting_scores: each pixel of step t's map is scored by the last step (0..t) that re-painted it, so a pixel
        passed through keeps the score it had then. Without it, step t's map compares the input with x_hat_t
        everywhere, and a passed-through pixel, compared with itself, scores about zero even on a defect that the
        mask missed. The image score is still the map's maximum, so it changes too (results/README.md, item 12).
    """

    # Defaults: the setting with the best mean image AUROC over the five benchmark categories for networks trained
    # without synthetic defects (train's default). The shipped networks, trained with them, iterate with shrinking
    # masks painted in cells: i3ad at T = 2, i3ad-small at T = 0 with the rules for a raised T
    # (i3ad.shipped.SHIPPED_SETTINGS; results/README.md, items 9 and 11).
    iterations: int = 1
    ssim_threshold: float = 0.5
    step0_masks: int = 4
    step0_hidden_groups: int = 1
    step0_cell_size: int = 8
    mask_dilation: int = 3
    smoothing_sigma: float = 8.0
    anomaly_measure: str = "ssim+gms"
    subtract_normal_error: bool = True
    shrinking_masks: bool = False
    iteration_painting: str = "hole"
    last_painting_scores: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise ValueError(f"iterations must be a whole number, got {self.iterations!r}")
        if not 0 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must lie between 0 and {MAX_ITERATIONS}, got {self.iterations}")
        if not is_finite_number(self.ssim_threshold) or not -1.0 <= self.ssim_threshold <= 1.0:
            raise ValueError(f"ssim_threshold must lie in [-1, 1] (SSIM's range), got {self.ssim_threshold!r}")
        if not is_count(self.step0_masks) or self.step0_masks < 2:
            raise ValueError(
                f"step0_masks must be a whole number >= 2 so that no pixel sees itself, got {self.step0_masks!r}"
            )
        if not is_count(self.step0_hidden_groups) or self.step0_hidden_groups >= self.step0_masks:
            raise ValueError(
                f"each step-0 mask hides 1 to {self.step0_masks - 1} of the {self.step0_masks} grid groups (one "
                f"must stay visible so that no pixel sees itself), got {self.step0_hidden_groups!r}"
            )
        if not is_count(self.step0_cell_size):
            raise ValueError(f"the step-0 cell size must be a whole number >= 1 px, got {self.step0_cell_size!r}")
        if isinstance(self.mask_dilation, bool) or not isinstance(self.mask_dilation, int) or self.mask_dilation < 0:
            raise ValueError(f"the mask dilation must be a whole number >= 0 px, got {self.mask_dilation!r}")
        if not is_finite_number(self.smoothing_sigma) or self.smoothing_sigma < 0:
            raise ValueError(f"the smoothing sigma must be a finite number >= 0, got {self.smoothing_sigma!r}")
        if self.anomaly_measure not in ANOMALY_MEASURES:
            raise ValueError(f"anomaly_measure must be one of {ANOMALY_MEASURES}, got {self.anomaly_measure!r}")
        if not isinstance(self.subtract_normal_error, bool):
            raise ValueError(f"subtract_normal_error must be true or false, got {self.subtract_normal_error!r}")
        if not isinstance(self.shrinking_masks, bool):
            raise ValueError(f"shrinking_masks must be true or false, got {self.shrinking_masks!r}")
        if not isinstance(self.last_painting_scores, bool):
            raise ValueError(f"last_painting_scores must be true or false, got {self.last_painting_scores!r}")
        if self.iteration_painting not in ITERATION_PAINTINGS:
            raise ValueError(
                f"iteration_painting must be one of {ITERATION_PAINTINGS}, got {self.iteration_painting!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes: object) -> DetectionSettings:
        return replace(self, **changes)


@dataclass
class DetectionResult:
    """Every step of one detection run on a batch of B images [B, C, H, W] (all tensors on the images' device).

    reconstructions[t]: x_hat_t [B, C, H, W]; masks[t]: m_t [B, 1, H, W] (step 0 hides every pixel once, so its
    mask is all ones); ssim_maps[t]: s_t [B, 1, H, W]. The anomaly map of step t (``step_map``) is computed when first
    asked for, from these and the ``settings``: a detection at T = 5 scores only its last step unless the maps of the
    others are wanted too (the app's gallery, calibration; with ``last_painting_scores`` every step's map is computed,
    each building on the last). images: the detection's input in float32 (not copied:
    changing it in place would change the maps computed later). normal_error: the maps become their excess over it.
    region: [B or 1, 1, H, W], 1 where the image lies in the frame (``Preprocessing.region``); only there is it scored.
    None: the whole frame.
    """

    images: Tensor
    settings: DetectionSettings
    reconstructions: list[Tensor]
    masks: list[Tensor]
    ssim_maps: list[Tensor]
    normal_error: NormalError | None = None
    region: Tensor | None = None
    _maps: dict[int, Tensor] = field(default_factory=dict, init=False, repr=False)
    _raw_maps: dict[int, Tensor] = field(default_factory=dict, init=False, repr=False)

    @torch.inference_mode()
    def step_map(self, step: int) -> Tensor:
        """The smoothed anomaly map after ``step`` steps [B, 1, H, W] (negative: counted from the last step)."""
        step = range(len(self.reconstructions))[step]  # IndexError beyond the steps run
        if step not in self._maps:
            raw = self.raw_map(step)
            self._maps[step] = raw if self.normal_error is None else self.normal_error.subtract(raw, step)
        return self._maps[step]

    @torch.inference_mode()
    def raw_map(self, step: int) -> Tensor:
        """``step_map`` before the normal error is subtracted (what the normal error itself is the mean of)."""
        step = range(len(self.reconstructions))[step]
        if step in self._raw_maps:
            return self._raw_maps[step]
        raw = anomaly_map(self.images, self.reconstructions[step], self.settings, self.ssim_maps[step])
        if self.settings.last_painting_scores:
            if step > 0:
                raw = keep_unpainted_scores(raw, self.masks[step], self.raw_map(step - 1))
            self._raw_maps[step] = raw  # the next step's map is built on it
        return raw

    @property
    def anomaly_maps(self) -> list[Tensor]:
        """The map of every step, t = 0..T."""
        return [self.step_map(t) for t in range(len(self.reconstructions))]

    @property
    def anomaly_map(self) -> Tensor:
        """The final map [B, 1, H, W]: high on anomalies, near zero elsewhere."""
        return self.step_map(-1)

    @property
    def scores(self) -> Tensor:
        """Image anomaly scores [B] after the last step."""
        return image_scores(self.anomaly_map, self.region)

    @property
    def step_scores(self) -> Tensor:
        """Image scores after each step, [T + 1, B]: row t is the score a run with T = t would give."""
        return torch.stack([image_scores(a, self.region) for a in self.anomaly_maps])


def anomaly_map(
    images: Tensor, reconstructions: Tensor, settings: DetectionSettings, ssim: Tensor | None = None
) -> Tensor:
    """The smoothed per-pixel anomaly map [B, 1, H, W] of images vs reconstructions (``ssim``: a precomputed map)."""
    ssim = ssim_map(images, reconstructions) if ssim is None else ssim
    dissimilarity = 1.0 - ssim
    if settings.anomaly_measure == "ssim+gms":
        dissimilarity = 0.5 * (dissimilarity + 1.0 - gradient_magnitude_similarity(images, reconstructions))
    return gaussian_blur(dissimilarity, settings.smoothing_sigma)


def keep_unpainted_scores(step_map: Tensor, mask: Tensor, previous_map: Tensor) -> Tensor:
    """Step t's map with the last step's scores where its mask [B, 1, H, W] passed the pixels through
    (``last_painting_scores``): applied step after step, each pixel keeps the score of the last step that painted it."""
    return torch.where(mask > 0.5, step_map, previous_map)


def image_scores(anomaly_maps: Tensor, region: Tensor | None = None) -> Tensor:
    """Image score = maximum of the anomaly map [B, 1, H, W] (inside ``region`` [B or 1, 1, H, W] if given) -> [B]."""
    if region is not None:
        anomaly_maps = anomaly_maps.masked_fill(region.to(anomaly_maps.device) < 0.5, float("-inf"))
    return anomaly_maps.flatten(1).amax(dim=1)


# The precisions a network can run in, as autocast dtypes; None is plain float32 (TF32 convolutions on CUDA by default).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` ("fp32", "bf16" or "fp16"); None for plain float32."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def autocast_for(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on CUDA; None (float32) on other devices."""
    dtype = autocast_dtype(precision)
    return dtype if device.type == "cuda" else None


def network_autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The context a network runs in: autocast to ``dtype`` on ``device``, or plain float32 for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_images(images: Tensor, channels: int) -> None:
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"expected images [B, {channels}, H, W] for this model, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("the images hold NaN or infinite values")


def paint(model: InpaintingUNet, images: Tensor, masks: Tensor, autocast_dtype: torch.dtype | None = None) -> Tensor:
    """m * G(x * (1 - m), m) + (1 - m) * x: hidden pixels re-painted, every other pixel passed through bit-exactly."""
    with network_autocast(images.device, autocast_dtype):
        painting = model(images, masks).float()
    return torch.where(masks > 0.5, painting, images)


@torch.inference_mode()
def inpaint_step0(
    model: InpaintingUNet,
    images: Tensor,
    settings: DetectionSettings,
    *,
    autocast_dtype: torch.dtype | None = None,
    region: Tensor | None = None,
) -> Tensor:
    """Paint K grid masks in turn and stitch the paintings: a reconstruction [B, C, H, W] in which every pixel was
    painted without seeing itself (the mean of its paintings when each mask hides several grid groups). ``region``
    [B or 1, 1, H, W]: where the images lie in their frames (``Preprocessing.region``); the mirror copies of a hidden
    pixel on the fill around them are hidden with it."""
    _check_images(images, model.config["channels"])
    return _paint_step0(model, images, settings, autocast_dtype, _frame_sources(region, images))


def _paint_step0(
    model: InpaintingUNet,
    images: Tensor,
    settings: DetectionSettings,
    autocast_dtype: torch.dtype | None,
    frame_sources: Tensor | None,
) -> Tensor:
    """``inpaint_step0`` on images already checked: every pixel re-painted in cells."""
    everything = torch.ones(len(images), 1, *images.shape[-2:], device=images.device)
    return _paint_in_cells(model, images, everything, settings, autocast_dtype, frame_sources)


def _paint_in_cells(
    model: InpaintingUNet,
    context: Tensor,
    hidden: Tensor,
    settings: DetectionSettings,
    autocast_dtype: torch.dtype | None,
    frame_sources: Tensor | None,
) -> Tensor:
    """Re-paint the pixels of ``hidden`` [B, 1, H, W] in the K passes of step 0's grid, all in one forward: pass k
    hides those in the grid groups of step-0 mask k and shows ``context`` [B, C, H, W] everywhere else. A pixel
    painted in several passes gets the mean of its paintings; the others come back as ``context``, bit-exactly.
    ``frame_sources``: ``pixel_sources`` of the frames (None: the images fill them), for hiding the mirror copies of
    each pass's pixels, which the grid alone would leave in view."""
    context = context.float()
    batch, _, height, width = context.shape
    grid = step0_grid_masks(
        settings.step0_masks, settings.step0_hidden_groups, settings.step0_cell_size, height, width, context.device
    )
    count = grid.shape[0]
    passes = (grid[:, None] * hidden[None]).flatten(0, 1)  # [K * B, 1, H, W]: pass k for every image, in one forward
    passes = hide_mirror_copies(passes, frame_sources)
    paintings = paint(model, context.repeat(count, 1, 1, 1), passes, autocast_dtype)
    painted = (paintings * passes).view(count, batch, *context.shape[1:]).sum(dim=0) / settings.step0_hidden_groups
    return torch.where(hidden > 0.5, painted, context)


def _frame_sources(region: Tensor | None, images: Tensor) -> Tensor | None:
    """``pixel_sources`` of each image's frame [B, 1, H, W], on the images' device (None without a region, or when
    every image fills its frame)."""
    sources = None if region is None else pixel_sources(region.to(images.device))
    return None if sources is None else sources.expand(len(images), -1, -1, -1)


def _repaint(
    model: InpaintingUNet,
    source: Tensor,
    mask: Tensor,
    settings: DetectionSettings,
    autocast_dtype: torch.dtype | None,
    frame_sources: Tensor | None,
) -> Tensor:
    """Step t >= 1: the mask's pixels re-painted as ``settings.iteration_painting`` says, every other pixel passed
    through bit-exactly. ``source`` is what the network may see: the input ("hole"), or the input with the last
    reconstruction inside the mask ("cells"). ``frame_sources``: as for ``_paint_in_cells`` (the mask hides the
    mirror copies of its pixels already)."""
    if settings.iteration_painting == "cells":
        return _paint_in_cells(model, source, mask, settings, autocast_dtype, frame_sources)
    return paint(model, source, mask, autocast_dtype)


@torch.inference_mode()
def detect_by_inpainting(
    model: InpaintingUNet,
    images: Tensor,
    settings: DetectionSettings = DetectionSettings(),
    *,
    autocast_dtype: torch.dtype | None = None,
    step0: Tensor | None = None,
    normal_error: NormalError | None = None,
    region: Tensor | None = None,
) -> DetectionResult:
    """Iterative SSIM-masked inpainting on a batch of preprocessed images [B, C, H, W] in [0, 1], by a ``model`` in
    eval mode (a BatchNorm network in training mode would use and update the batch's statistics; ``AnomalyDetector``
    and calibration put it in eval mode).

    step0: the step-0 reconstruction of these images if already computed (it does not depend on the threshold, so
        a sweep over thresholds computes it once). autocast_dtype: e.g. torch.bfloat16 for the network on a GPU.
    normal_error: the maps become their excess over it (the masks still come from the SSIM maps alone).
    region: where the images lie in their frames [B or 1, 1, H, W] (``Preprocessing.region``), for the scores
        (``DetectionResult.region``) and for the masks, which hide a pixel's mirror copies on the fill around an
        image with it (so must the given ``step0``: ``inpaint_step0`` with this region).
    """
    _check_images(images, model.config["channels"])
    batch, _, height, width = images.shape
    images = images.float()
    frame_sources = _frame_sources(region, images)

    # 1. Step 0: a full reconstruction in which no pixel sees itself.
    if step0 is None:
        step0 = _paint_step0(model, images, settings, autocast_dtype, frame_sources)  # the images were checked above
    reconstruction = step0
    result = DetectionResult(
        images,
        settings,
        [reconstruction],
        [torch.ones(batch, 1, height, width, device=images.device)],
        [ssim_map(images, reconstruction)],
        normal_error,
        region,
    )

    previous_mask = None
    in_cells = settings.iteration_painting == "cells"
    for _ in range(settings.iterations):
        # 2. The SSIM map of the last step becomes the mask: hide what does not look like its reconstruction.
        mask = dilate((result.ssim_maps[-1] < settings.ssim_threshold).float(), settings.mask_dilation)
        if settings.shrinking_masks:
            mask = mask * result.masks[-1]
        mask = hide_mirror_copies(mask, frame_sources)
        # 3. Re-paint the hidden pixels from their visible surroundings. With an empty mask the input passes through;
        #    painted at once, a mask equal to the last step's gives the same painting again (the network is
        #    deterministic). Painted in cells, it does not: the cells around each hole hold the last reconstruction.
        hides_pixels = mask.flatten(1).amax(dim=1) > 0
        same_mask = (
            torch.zeros_like(hides_pixels)
            if previous_mask is None or in_cells
            else (mask == previous_mask).flatten(1).all(1)
        )
        source = torch.where(mask > 0.5, reconstruction, images) if in_cells else images
        # The one wait for the device in a step: which images to paint decides the network's batch.
        to_paint = (hides_pixels & ~same_mask).nonzero().squeeze(1)
        if batch > 0 and len(to_paint) == batch:
            reconstruction = _repaint(model, source, mask, settings, autocast_dtype, frame_sources)
        else:
            reconstruction = torch.where(hides_pixels.view(-1, 1, 1, 1), reconstruction, images)
            if len(to_paint) > 0:
                chosen = None if frame_sources is None else frame_sources[to_paint]
                painted = _repaint(model, source[to_paint], mask[to_paint], settings, autocast_dtype, chosen)
                reconstruction = reconstruction.index_copy(0, to_paint, painted)
        # 4. Compare the new reconstruction with the input (the anomaly map follows from it when asked for).
        result.reconstructions.append(reconstruction)
        result.masks.append(mask)
        result.ssim_maps.append(ssim_map(images, reconstruction))
        previous_mask = mask
    return result


@torch.inference_mode()
def detect_by_autoencoder(
    model: ConvAutoencoder,
    images: Tensor,
    settings: DetectionSettings = DetectionSettings(),
    *,
    autocast_dtype: torch.dtype | None = None,
    normal_error: NormalError | None = None,
    region: Tensor | None = None,
) -> DetectionResult:
    """AE-SSIM baseline: one reconstruction AE(x), scored like step 0 of I3AD (``iterations`` is ignored)."""
    _check_images(images, model.config["channels"])
    images = images.float()
    with network_autocast(images.device, autocast_dtype):
        reconstruction = model(images).float()
    ssim = ssim_map(images, reconstruction)
    return DetectionResult(images, settings, [reconstruction], [torch.ones_like(ssim)], [ssim], normal_error, region)
