"""map_batches: order, equality with one big call, and the out-of-memory fallback (simulated: the CPU has no OOM);
the check that data fits into memory before it is loaded."""

import sys

import pytest
import torch

import i3ad.batching
from i3ad.batching import available_memory, check_fits_in_memory, map_batches


def test_batches_in_order_cover_everything():
    data, other = torch.arange(10), torch.arange(10) * 2
    parts = map_batches(lambda a, b: torch.stack([a, b]), data, other, batch_size=4)
    assert [len(p[0]) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p[0] for p in parts]), data)
    assert torch.equal(torch.cat([p[1] for p in parts]), other)


def test_out_of_memory_halves_the_batch_and_keeps_every_result():
    calls = []

    def squares(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return batch**2

    data = torch.arange(7.0)
    parts = map_batches(squares, data, batch_size=8)
    assert torch.equal(torch.cat(parts), data**2)
    assert calls == [7, 4, 2, 2, 2, 1]  # 8 -> 4 -> 2, then the smaller size is kept


def test_a_single_item_that_does_not_fit_raises():
    def never_fits(batch):
        raise torch.cuda.OutOfMemoryError("simulated")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        map_batches(never_fits, torch.arange(3.0), batch_size=4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(lambda b: b, torch.arange(3), batch_size=0)
    with pytest.raises(ValueError, match="same length"):
        map_batches(lambda a, b: a, torch.arange(3), torch.arange(4), batch_size=2)


def test_available_memory_is_read_from_the_kernel_on_linux():
    available = available_memory()
    if sys.platform.startswith("linux"):
        assert isinstance(available, int) and 0 < available < 2**50
    else:
        assert available is None


def test_work_that_needs_more_memory_than_is_available_is_refused_with_both_sizes(monkeypatch):
    monkeypatch.setattr(i3ad.batching, "available_memory", lambda: 2**30)
    check_fits_in_memory(2**29, "some images", "use fewer")  # fits: nothing happens
    with pytest.raises(MemoryError, match=r"some images need about 3\.0 GiB of memory, and 1\.0 GiB are available"):
        check_fits_in_memory(3 * 2**30, "some images", "use fewer")
    monkeypatch.setattr(i3ad.batching, "available_memory", lambda: None)  # unknown: not refused
    check_fits_in_memory(2**60, "some images", "use fewer")


def _cgroup(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


GIB = 2**30


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),  # no cgroup files: no limit known
        ({"memory.max": "max\n", "memory.current": "5\n"}, None),  # v2 without a limit
        (  # v2: limit less usage, inactive file cache counted as free
            {
                "memory.max": f"{4 * GIB}\n",
                "memory.current": f"{3 * GIB}\n",
                "memory.stat": f"anon 1\ninactive_file {GIB}\n",
            },
            2 * GIB,
        ),
        ({"memory.max": f"{GIB}\n", "memory.current": f"{2 * GIB}\n"}, 0),  # over the limit: no headroom, not negative
        ({"memory.max": "garbage\n", "memory.current": "1\n"}, None),  # unreadable: not used
        ({"memory.max": f"{GIB}\n"}, None),  # usage missing: not used
        (  # v1, its "no limit" being a huge number
            {"memory/memory.limit_in_bytes": f"{2**63 - 4096}\n", "memory/memory.usage_in_bytes": "1\n"},
            None,
        ),
        (
            {
                "memory/memory.limit_in_bytes": f"{4 * GIB}\n",
                "memory/memory.usage_in_bytes": f"{GIB}\n",
                "memory/memory.stat": f"cache 7\ntotal_inactive_file {GIB}\n",
            },
            4 * GIB,
        ),
    ],
)
def test_the_containers_headroom_is_read_from_its_cgroup(tmp_path, files, expected):
    no_proc = tmp_path / "no_proc"
    assert available_memory(no_proc, _cgroup(tmp_path / "cgroup", files)) == expected


def test_the_lower_of_the_kernels_estimate_and_the_cgroups_headroom_counts(tmp_path):
    proc = _cgroup(tmp_path / "proc", {"meminfo": "MemTotal: 9000 kB\nMemAvailable: 3 kB\n"})
    cgroup = _cgroup(tmp_path / "cgroup", {"memory.max": "10000\n", "memory.current": "1000\n"})
    assert available_memory(proc, cgroup) == 3 * 1024
    assert available_memory(proc, tmp_path / "none") == 3 * 1024
    roomy = _cgroup(tmp_path / "roomy", {"memory.max": "2048\n", "memory.current": "0\n"})
    assert available_memory(proc, roomy) == 2048
    broken = _cgroup(tmp_path / "broken", {"meminfo": "MemAvailable: lots\n"})
    assert available_memory(broken, cgroup) == 9000  # an unreadable meminfo leaves the cgroup's figure
