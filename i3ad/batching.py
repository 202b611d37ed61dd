"""Running a function over a data set in batches, with smaller batches when a GPU runs out of memory; one call that
survives running out of GPU memory; and a check that data fits into the computer's memory before it is loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

Result = TypeVar("Result")


def map_batches(function: Callable[..., Result], *tensors: Tensor, batch_size: int) -> list[Result]:
    """``function(*batch)`` for consecutive batches of ``tensors`` (all of the same length), in order.

    On a CUDA out-of-memory error the failed batch is tried again at half the size (and later batches keep the smaller
    size), down to one item; a single item that does not fit raises the error.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(tensors[0])
    if any(len(t) != count for t in tensors):
        raise ValueError("all tensors must have the same length")
    results: list[Result] = []
    start = 0
    while start < count:
        batch = [t[start : start + batch_size] for t in tensors]
        try:
            results.append(function(*batch))
            start += len(batch[0])
            continue
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
        # Outside the except block: its traceback still holds the failed batch's tensors.
        del batch
        torch.cuda.empty_cache()
    return results


def unless_out_of_gpu_memory(function: Callable[[], Result]) -> Result | None:
    """``function()``, or None when the GPU ran out of memory in it. The CUDA cache is then emptied, so that what the
    failed call held is free for the next one (a request of the app, the next image of a CLI run)."""
    try:
        return function()
    except torch.cuda.OutOfMemoryError:
        pass
    # Outside the except block: its traceback still holds the failed call's tensors.
    torch.cuda.empty_cache()
    return None


def is_cpu_out_of_memory(error: BaseException) -> bool:
    """True for what torch's CPU allocator raises when memory runs out: a plain RuntimeError, told by its text."""
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the kernel's estimate of what is available without swapping
    (/proc/meminfo), or the headroom under a container's limit (cgroup v2) where that is lower; None where neither
    can be read (not Linux)."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip() if (cgroup / "memory.max").exists() else "max"
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def check_fits_in_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, with ``advice``, work whose data needs more than the memory available: past it the kernel kills the
    process, which can then neither report why nor clean up. MemoryError naming ``what`` and both sizes."""
    available = available_memory()
    if available is not None and needed > available:
        raise MemoryError(
            f"{what} need about {needed / 2**30:.1f} GiB of memory, and {available / 2**30:.1f} GiB are available; "
            f"{advice}"
        )
