"""Running a function over a data set in batches, with smaller batches when a GPU runs out of memory; one call that
survives running out of GPU memory; and a check that data fits into the computer's memory before it is loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

Result = TypeVar("Result")


def map_batches(function: Callable[..., Result], *tensors: Tensor | None, batch_size: int) -> list[Result]:
    """``function(*batch)`` for consecutive batches of ``tensors`` (all of the same length), in order; a tensor given
    as None (an optional one, such as absent regions) is passed as None with every batch.

    On a CUDA out-of-memory error the failed batch is tried again at half the size (and later batches keep the smaller
    size), down to one item; a single item that does not fit raises the error.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(tensors[0])
    if any(t is not None and len(t) != count for t in tensors):
        raise ValueError("all tensors must have the same length")
    results: list[Result] = []
    start = 0
    while start < count:
        batch = [None if t is None else t[start : start + batch_size] for t in tensors]
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


def available_memory(proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes of memory this process can still take: the kernel's estimate of what is available without swapping
    (``/proc/meminfo``), or the headroom under the memory limit of the cgroup mounted at ``cgroup`` (a container's
    limit; v2 or v1) where that is lower; None where neither can be read (not Linux). A limit set on a parent cgroup
    outside the container's view is not seen."""
    found = [_meminfo_available(proc), _cgroup_headroom(cgroup)]
    known = [value for value in found if value is not None]
    return min(known) if known else None


def _meminfo_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Limits this large mean "no limit" (cgroup v1 writes the largest page-aligned number it can).
_NO_LIMIT = 2**60


def _cgroup_headroom(cgroup: Path) -> int | None:
    """The cgroup's limit less its usage, counting inactive file cache as free (the kernel reclaims it before it
    kills): v2 files (memory.max, memory.current, memory.stat's inactive_file) or v1 ones (memory/memory.limit_in_bytes,
    memory.usage_in_bytes, memory.stat's total_inactive_file)."""
    for limit_file, usage_file, stat_file, cache_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        try:
            limit_text = (cgroup / limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
                return None
            usage = int((cgroup / usage_file).read_text())
        except (OSError, ValueError):
            continue
        return max(0, int(limit_text) - usage + _stat(cgroup / stat_file, cache_key))
    return None


def _stat(path: Path, key: str) -> int:
    """One counter of a cgroup's memory.stat file; 0 where it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def check_fits_in_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, with ``advice``, work whose data needs more than the memory available: past it the kernel kills the
    process, which can then neither report why nor clean up. MemoryError naming ``what`` and both sizes."""
    available = available_memory()
    if available is not None and needed > available:
        raise MemoryError(
            f"{what} need about {needed / 2**30:.1f} GiB of memory, and {available / 2**30:.1f} GiB are available; "
            f"{advice}"
        )
