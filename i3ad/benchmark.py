"""Speed benchmark: network throughput, iterative detection against bare forwards, and a whole-category sweep.

``python -m i3ad bench`` prints the table and can save it as CSV. Timings synchronise the GPU and take the median of
several repeats after a warm-up.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from i3ad.detector import AnomalyDetector, check_iterations
from i3ad.evaluation import TestSet, sweep_inpainting
from i3ad.models import InpaintingUNet
from i3ad.scoring import autocast_dtype, detect_by_inpainting, network_autocast

# torch.compile modes the benchmark can try ("reduce-overhead" also captures CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# The timed evaluation sweep: every T from 0 to this, in batches of this size (as ``python -m i3ad evaluate``).
SWEEP_MAX_ITERATIONS = 10
SWEEP_BATCH_SIZE = 32


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def convolution_time(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds in convolutions, seconds in all) per call of ``run``, profiled over ``repeats`` calls after one
    warm-up: every ``aten::convolution`` with what it launches, as torch.profiler measures it (GPU time on a GPU, CPU
    time on a CPU), against the wall time of the same profiled calls (profiling slows a CPU's calls down). The first
    is NaN where no convolution call is seen: a CUDA graph (torch.compile modes reduce-overhead and max-autotune)
    replays its kernels without them."""
    run()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        _synchronize(device)
        seconds = time.perf_counter() - started
    convolutions = [event for event in profile.key_averages() if event.key == "aten::convolution"]
    microseconds = sum(e.device_time_total if device.type == "cuda" else e.cpu_time_total for e in convolutions)
    return (microseconds / 1e6 / repeats if microseconds > 0 else math.nan), seconds / repeats


def forward_flops(model: InpaintingUNet, image_size: int) -> int:
    """Floating-point operations of one forward pass on one image (torch.utils.flop_counter)."""
    channels = model.config["channels"]
    device = next(model.parameters()).device
    images = torch.zeros(1, channels, image_size, image_size, device=device)
    masks = torch.zeros(1, 1, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(images, masks)
    return counter.get_total_flops()


@contextmanager
def counting_forwards(model: InpaintingUNet) -> Iterator[list[int]]:
    """Counts the images the network paints while the context is open: yields a one-element list."""
    count = [0]
    handle = model.register_forward_pre_hook(lambda _module, inputs: count.__setitem__(0, count[0] + len(inputs[0])))
    try:
        yield count
    finally:
        handle.remove()


def _is_channels_last(model: torch.nn.Module) -> bool:
    weight = next(p for p in model.parameters() if p.dim() == 4)
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def _timed_row(
    task: str,
    precision: str,
    batch: int,
    iterations: int | None,
    seconds: float,
    forwards_per_image: float,
    flops: int,
    device: torch.device,
) -> dict:
    """One table row of a timed run of ``batch`` images that made ``forwards_per_image`` network forwards each (bare
    forwards: their share of the time is all of it)."""
    return {
        "task": task,
        "precision": precision,
        "batch": batch,
        "iterations": iterations,
        "images_per_s": batch / seconds,
        "latency_ms": 1000 * seconds,
        "forwards_per_image": forwards_per_image,
        "gflop_per_image": forwards_per_image * flops / 1e9,
        "tflops": forwards_per_image * flops * batch / seconds / 1e12,
        "network_share": 1.0,
        "vs_bare_forwards": 1.0,
        "peak_memory_mb": _peak_memory_mb(device),
    }


def check_plan(batch_sizes: list[int], iterations: list[int], repeats: int, sweep_images: int = 0) -> None:
    """Refuse a benchmark plan that cannot be timed, before any image is loaded. ValueError naming the value."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if sweep_images < 0:
        raise ValueError(f"the evaluation sweep needs >= 0 images (0: no sweep), got {sweep_images}")
    for t in iterations:
        check_iterations(t)


def run_benchmark(
    detector: AnomalyDetector,
    images: torch.Tensor,
    *,
    batch_sizes: list[int],
    iterations: list[int],
    precisions: list[str],
    repeats: int = 5,
    sweep_images: int = 0,
    compile_mode: str | None = None,
    static_shapes: bool = False,
    channels_last: bool = False,
    profile_convolutions: bool = False,
    on_rows: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Rows of measurements on ``images`` [N, C, S, S] (preprocessed, on the detector's device; batches are drawn
    from them cyclically). ``sweep_images`` > 0 also times a T = 0..10 evaluation sweep over that many images.
    ``compile_mode``: run the network through torch.compile in that mode; ``static_shapes``: compile one graph per
    input shape instead of dynamo's shape-generic graph, which it switches to once a second batch size appears (step 0
    paints K times the batch) and whose kernels run slower; ``channels_last``: channels-last memory
    for the network and its inputs (otherwise the model keeps its own layout, recorded in ``memory_format``);
    ``profile_convolutions``: the network-forward rows also give the share of their time spent in convolutions and
    the rate of the convolutions alone (``convolution_time``), which tells slow convolutions from time lost
    around them (normalisation, activations, copies). ``on_rows`` is given the table measured so far after each batch
    size, profiling and sweep (last: the whole table), so that a long run stopped early keeps what it measured."""
    check_plan(batch_sizes, iterations, repeats, sweep_images)
    model, device = detector.model, detector.device
    size = images.shape[-1]
    flops = forward_flops(model, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    # Without the flag the model keeps the layout it was loaded in (channels-last on a CPU, see models.for_device).
    memory_format = "channels_last" if _is_channels_last(model) else "contiguous"
    # Autocast on any device (bench also times the CPU's); every precision checked before the first is timed.
    dtypes = {precision: autocast_dtype(precision) for precision in precisions}
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    if static_shapes and compile_mode is None:
        raise ValueError("static_shapes applies to a compiled network: give a compile_mode too")
    eager_model = model
    settings = detector.settings
    rows = []

    def table() -> pd.DataFrame:
        measured = pd.DataFrame(rows)
        measured.insert(
            0, "device", torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        )
        measured.insert(1, "threads", torch.get_num_threads())
        measured.insert(2, "model", f"{detector.category}/{detector.name}")
        compiled = "eager" if compile_mode is None else compile_mode + (" static" if static_shapes else "")
        measured.insert(3, "compile", compiled)
        measured.insert(4, "memory_format", memory_format)
        measured.insert(5, "tf32_convolutions", device.type == "cuda" and torch.backends.cudnn.allow_tf32)
        measured.insert(6, "cudnn_benchmark", device.type == "cuda" and torch.backends.cudnn.benchmark)
        measured["date"] = date.today().isoformat()
        measured["torch"] = torch.__version__
        return measured

    def measured_so_far() -> None:
        if on_rows is not None:
            on_rows(table())

    for precision in precisions:
        dtype = dtypes[precision]
        if compile_mode is not None:
            # A fresh compilation per precision: autocast is part of dynamo's guards, so one compiled model shared by
            # two precisions recompiles until it hits dynamo's recompile limit and silently falls back to eager.
            torch._dynamo.reset()
            model = torch.compile(eager_model, mode=compile_mode, dynamic=False if static_shapes else None)
        to_profile = []  # (row, forward) of this precision's network forwards
        for batch_size in batch_sizes:
            batch = images[torch.arange(batch_size) % len(images)]
            masks = torch.zeros(batch_size, 1, size, size, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def forward(batch=batch, masks=masks, dtype=dtype, model=model):
                with (
                    torch.inference_mode(),
                    network_autocast(device, dtype),
                ):
                    model(batch, masks)

            forward_seconds = median_seconds(forward, device, repeats)
            row = _timed_row("network forward", precision, batch_size, None, forward_seconds, 1.0, flops, device)
            rows.append(row)
            if profile_convolutions:
                to_profile.append((row, forward))
            for t in iterations:
                run = settings.with_(iterations=t)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)

                # As the detector runs it (``AnomalyDetector.run``), its normal error subtracted from the final map.
                normal_error = detector.normal_error_for(run)

                def detect(batch=batch, run=run, dtype=dtype, model=model, normal_error=normal_error):
                    result = detect_by_inpainting(model, batch, run, autocast_dtype=dtype, normal_error=normal_error)
                    return result.anomaly_map

                seconds = median_seconds(detect, device, repeats)
                with counting_forwards(model) as painted:
                    detect()
                row = _timed_row("detection", precision, batch_size, t, seconds, painted[0] / batch_size, flops, device)
                # The same number of forwards at this batch size's bare speed, against the whole detection.
                bare = row["forwards_per_image"] * forward_seconds
                rows.append({**row, "network_share": bare / seconds, "vs_bare_forwards": seconds / bare})
            measured_so_far()
        # Profiled after this precision's timings, which the profiler's instrumentation might otherwise slow down.
        for row, forward in to_profile:
            in_convolutions, profiled = convolution_time(forward, device, repeats)
            # The model's FLOPs are its convolutions' (the flop counter counts no other operation of this network).
            row["convolution_share"] = in_convolutions / profiled
            row["convolution_tflops"] = flops * row["batch"] / in_convolutions / 1e12
        if to_profile:
            measured_so_far()
    if sweep_images > 0:
        subset = images[torch.arange(sweep_images) % len(images)]
        test = TestSet(subset, torch.arange(sweep_images, device=device) % 2, None)
        started = time.perf_counter()
        sweep_inpainting(
            model,
            test,
            settings,
            thresholds=[settings.ssim_threshold],
            max_iterations=SWEEP_MAX_ITERATIONS,
            batch_size=SWEEP_BATCH_SIZE,
        )
        _synchronize(device)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "task": f"evaluation sweep T=0..{SWEEP_MAX_ITERATIONS}, {sweep_images} images",
                "precision": "fp32",
                "batch": SWEEP_BATCH_SIZE,
                "iterations": SWEEP_MAX_ITERATIONS,
                "images_per_s": sweep_images / seconds,
                "latency_ms": 1000 * seconds,
            }
        )
        measured_so_far()
    return table()
