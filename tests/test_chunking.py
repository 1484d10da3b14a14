"""``num_inputs_per_python_subprocess="auto"``: chunk sizes that follow the operation's cost."""

import os
import types

import numpy as np
import pytest
from ase import Atoms

from wfl_like import ConfigSet, OutputSpec
from wfl_like.autoparallelize import AutoparaInfo, autoparallelize
from wfl_like.autoparallelize import chunks
from wfl_like.autoparallelize.chunks import AdaptiveChunkSize, make_chunks


def record_chunk_sizes(items, directory, _autopara_per_item_info=None):
    """A cheap op that notes how many items each call received, and draws from each item's rng."""
    with open(os.path.join(directory, f"sizes-{os.getpid()}"), "a") as f:
        f.write(f"{len(items)}\n")
    for atoms, info in zip(items, _autopara_per_item_info):
        atoms.info["draw"] = info["rng"].normal()
    return items


def sleep_and_record(items, directory, seconds):
    import time

    with open(os.path.join(directory, f"sizes-{os.getpid()}"), "a") as f:
        f.write(f"{len(items)}\n")
    for _ in items:
        time.sleep(seconds)
    return items


def chunk_sizes(directory):
    return [int(line) for path in directory.glob("sizes-*") for line in path.read_text().split()]


def structures(n):
    return [Atoms("H", cell=[2, 2, 2], pbc=True, info={"label": i}) for i in range(n)]


def run(tmp_path, name, n_items, workers, chunk, rng_seed=7):
    sizes = tmp_path / f"sizes-of-{name}"
    sizes.mkdir()
    out = tmp_path / f"{name}.xyz"
    autoparallelize(record_chunk_sizes, structures(n_items), OutputSpec(out), str(sizes),
                    rng=np.random.default_rng(rng_seed),
                    autopara_info={"num_python_subprocesses": workers, "num_inputs_per_python_subprocess": chunk})
    return out, chunk_sizes(sizes)


def test_auto_chunks_grow_for_a_cheap_op_and_outputs_are_those_of_chunks_of_one(tmp_path):
    n_items = 4000
    auto_out, auto_sizes = run(tmp_path, "auto", n_items, 2, "auto")
    ones_out, ones_sizes = run(tmp_path, "ones", n_items, 2, 1)
    serial_out, _ = run(tmp_path, "serial", n_items, 0, 1)
    assert sum(auto_sizes) == n_items
    assert max(auto_sizes) > 1, "chunks never grew for an op that costs next to nothing"
    assert len(auto_sizes) < len(ones_sizes)
    # same structures, same random draws, same order, byte for byte
    assert auto_out.read_bytes() == ones_out.read_bytes() == serial_out.read_bytes()
    assert [a.info["label"] for a in ConfigSet(auto_out)] == list(range(n_items))


def test_auto_chunks_stay_at_one_item_for_an_op_slower_than_the_target(tmp_path):
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    # 0.3 s per item is above the 0.2 s a chunk should take: every chunk keeps one item
    result = autoparallelize(sleep_and_record, structures(8), OutputSpec(), str(sizes), 0.3,
                             autopara_info={"num_python_subprocesses": 2, "num_inputs_per_python_subprocess": "auto"})
    assert [a.info["label"] for a in result] == list(range(8))
    assert chunk_sizes(sizes) == [1] * 8


def test_auto_works_serially_and_with_the_journal(tmp_path):
    out, sizes = run(tmp_path, "serial-auto", 500, 0, "auto")
    assert sum(sizes) == 500
    reference, _ = run(tmp_path, "reference", 500, 0, 1)
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "big", True])
def test_a_chunk_size_that_is_neither_a_whole_number_nor_auto_is_refused(bad):
    with pytest.raises(ValueError, match="num_inputs_per_python_subprocess.*'auto'"):
        autoparallelize(sleep_and_record, structures(2), OutputSpec(), "unused", 0,
                        autopara_info=AutoparaInfo(num_inputs_per_python_subprocess=bad))


@pytest.mark.parametrize("inputs", [list(range(1000)), range(1000)], ids=["list", "range"])
def test_auto_chunks_shrink_at_the_end_of_a_known_input_so_that_every_slot_gets_a_share(inputs):
    sizer = AdaptiveChunkSize()
    sizer.size = 100                      # as grown for a cheap operation
    sizer.completed(1, slots=4)           # a first chunk came back, from one of 4 slots
    sizes = [len(chunk.items) for chunk in make_chunks(inputs, sizer)]
    assert sum(sizes) == 1000
    assert sizes[:6] == [100] * 6         # far from the end: the grown size
    first = 0
    for size in sizes:
        # never more than a slot's share of what is left: the last inputs go to every slot
        assert size <= -(-(1000 - first) // 4)
        first += size
    assert sizes[-1] == 1


def test_auto_chunks_keep_their_size_where_the_number_of_inputs_is_unknown():
    sizer = AdaptiveChunkSize()
    sizer.size = 100
    sizer.completed(1, slots=4)
    sizes = [len(chunk.items) for chunk in make_chunks(iter(range(1000)), sizer)]
    assert sizes == [100] * 10


class StepClock:
    """A clock for the sizer's measurements that moves only when told to."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def returned(sizer, clock, chunks_back, seconds_apart, slots):
    """Report ``chunks_back`` chunks of the sizer's current size, one every ``seconds_apart``."""
    for _ in range(chunks_back):
        clock.now += seconds_apart
        sizer.completed(sizer(), slots)


def test_auto_grows_eightfold_after_two_chunks_per_slot_where_chunks_are_far_too_small(monkeypatch):
    clock = StepClock()
    monkeypatch.setattr(chunks, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    sizer = AdaptiveChunkSize()
    sizer.completed(1, 2)                           # the first chunk back starts the measurement
    # 10 us per item on 2 slots: a chunk of one comes back every 5 us
    returned(sizer, clock, 3, 5e-6, 2)
    assert sizer() == 1, "judged before two chunks per slot came back"
    returned(sizer, clock, 1, 5e-6, 2)
    assert sizer() == 8
    returned(sizer, clock, 4, 8 * 5e-6, 2)
    assert sizer() == 64


def test_auto_waits_for_eight_chunks_per_slot_or_a_target_s_worth_where_growth_is_finer(monkeypatch):
    clock = StepClock()
    monkeypatch.setattr(chunks, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    sizer = AdaptiveChunkSize()
    sizer.size = 64
    sizer.completed(64, 2)
    # 1 ms per item on 2 slots, chunks of 64: one back every 32 ms; 200 items make 0.2 s
    returned(sizer, clock, 4, 0.032, 2)             # two per slot, 0.128 s: 200 wanted, not 512
    assert sizer() == 64
    returned(sizer, clock, 3, 0.032, 2)             # 0.224 s: a target's worth has passed
    assert sizer() in (199, 200)                    # 0.2 s / 1 ms, as floats round
