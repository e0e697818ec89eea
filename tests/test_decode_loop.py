"""jasco_fast/decode_loop.py on its own (tests/integration/test_cli*.py run it through `jasco-fast decode`):
torchrun's sharding gives each file to exactly one rank, clashing output names are refused on every rank alike,
and only items of equal length share a batch."""

from __future__ import annotations

import torch

from jasco_fast.decode_loop import DecodeLoop, Item, Shard, stem_clashes


def test_each_file_goes_to_exactly_one_rank(monkeypatch):
    files = [f"in/{i:02d}.pt" for i in range(7)]
    shares = [Shard(rank, 3).files(files) for rank in range(3)]
    assert sorted(f for share in shares for f in share) == files
    assert all(len(share) in (2, 3) for share in shares)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert Shard.from_environment() == Shard(2, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Shard.from_environment() == Shard(0, 1) and Shard().gather("x") == ["x"]


def test_stem_clashes_name_the_earlier_file():
    clashes = stem_clashes(["a/x.pt", "a/y.pt", "b/x.npy"])
    assert list(clashes) == ["b/x.npy"] and "a/x.pt" in clashes["b/x.npy"]


def test_only_items_of_equal_length_share_a_batch():
    loop = DecodeLoop.__new__(DecodeLoop)  # batches() needs only the batch size
    loop.batch_size = 2
    items = [Item(f"i{n}", torch.zeros(t, 8)) for n, t in enumerate([5, 3, 5, 5, 3])]
    items.append(Item("codes", torch.zeros(5, 4, dtype=torch.long), codes=True))
    batches = [[it.name for it in batch] for batch in loop.batches(items)]
    assert batches == [["i1", "i4"], ["i0", "i2"], ["i3"], ["codes"]]
