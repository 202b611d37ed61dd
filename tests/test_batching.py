"""map_batches: order, equality with one big call, and the out-of-memory fallback (simulated: the CPU has no OOM)."""

import pytest
import torch

from i3ad.batching import map_batches


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
