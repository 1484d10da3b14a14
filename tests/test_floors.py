"""The cheap paths of the engine give what the general ones give.

Serial runs copy plain structures part by part instead of pickling them, chunks travel
packed to and from workers, and the pool's dispatcher keeps one selector: each is checked
here against the pickle round trip, the serial run, or plain results.
"""

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from wfl_like import OutputSpec
from wfl_like.autoparallelize import autoparallelize
from wfl_like.autoparallelize.frame_items import FrameItem
from wfl_like.autoparallelize.workers.isolation import copy_rngs, isolated, lendable
from wfl_like.structures import is_plain_atoms
from wfl_like.autoparallelize.workers.packing import PackedList, packed, unpacked
from wfl_like.autoparallelize.workers.pool import WorkerPool


def round_trip(obj):
    return pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def structure(i, **info):
    atoms = Atoms("CuH", positions=[[0.0, 0.0, 0.1 * i], [1.0, 1.0, 1.0]], cell=[[3, 0, 0], [1, 3, 0], [0, 0, 4]],
                  pbc=[True, False, True])
    atoms.info.update(info)
    return atoms


def varied():
    """Plain structures with info of many kinds, and structures that are not plain."""
    items = [
        structure(0, label=0, text="caf\u00e9", flag=True, vector=np.arange(3.0), nested={"a": [1, (2, 3)]},
                  number=np.float32(1.5), _ConfigSet_loc=(0, 1)),
        structure(1, label=1),
        structure(2, energy=-1.25, cplx=1 + 2j, none=None, data=b"\x00\x01"),
    ]
    with_arrays = structure(3)
    with_arrays.arrays["forces"] = np.ones((2, 3))
    with_arrays.arrays["tags_text"] = np.array(["a", "b"])
    items.append(with_arrays)
    molecule = Atoms("H2O", positions=np.eye(3))           # no cell, no pbc
    items.append(molecule)
    with_calc = structure(5)
    with_calc.calc = SinglePointCalculator(with_calc, energy=2.0, forces=np.zeros((2, 3)))
    items.append(with_calc)
    constrained = structure(6)
    constrained.set_constraint(FixAtoms([0]))
    items.append(constrained)
    with_object = structure(7, thing=Atoms("H"))            # info that is not plain data
    items.append(with_object)
    fortran = structure(8)
    fortran.arrays["positions"] = np.asfortranarray(fortran.arrays["positions"])
    items.append(fortran)
    items.append({"not": "an Atoms"})
    return items


def same(a, b):
    """Equal as structures (numbers, positions, cell, pbc, info, arrays, constraints, results) and types."""
    assert type(a) is type(b)
    if not isinstance(a, Atoms):
        assert a == b
        return
    assert a == b
    assert a.info.keys() == b.info.keys()
    for key, value in a.info.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b.info[key].dtype and np.array_equal(value, b.info[key])
        elif isinstance(value, Atoms):
            assert value == b.info[key]
        else:
            assert value == b.info[key] and type(value) is type(b.info[key])
    assert list(a.arrays) == list(b.arrays)
    for name, value in a.arrays.items():
        assert value.dtype == b.arrays[name].dtype and np.array_equal(value, b.arrays[name])
        assert value.flags.c_contiguous == b.arrays[name].flags.c_contiguous
    assert [repr(c) for c in a.constraints] == [repr(c) for c in b.constraints]
    assert (a.calc is None) == (b.calc is None)
    if a.calc is not None:
        assert a.calc.results.keys() == b.calc.results.keys()


def shares_nothing(original, copy):
    if isinstance(original, Atoms):
        assert copy is not original and copy.info is not original.info and copy.arrays is not original.arrays
        for name in original.arrays:
            assert not np.shares_memory(copy.arrays[name], original.arrays[name])
        assert not np.shares_memory(copy.cell.array, original.cell.array)


def test_isolated_copies_equal_the_pickle_round_trip_and_share_nothing():
    items = varied()
    copies, reference = isolated(items), round_trip(items)
    for original, copy, expected in zip(items, copies, reference):
        same(expected, copy)
        shares_nothing(original, copy)
    # the copy is the caller's no more: changing it leaves the original as it was
    copies[0].positions += 1.0
    copies[0].info["nested"]["a"].append(9)
    assert items[0].positions[0, 2] == 0.0 and items[0].info["nested"] == {"a": [1, (2, 3)]}


def test_frame_items_are_not_copied():
    frame = FrameItem("in.xyz", 0, 10, (0,))
    assert isolated([frame])[0] is frame


def test_isolated_keeps_an_object_given_twice_as_one_object():
    atoms = structure(0)
    copies = isolated([atoms, structure(1), atoms])
    assert copies[0] is copies[2] and copies[0] is not atoms


def test_only_plain_atoms_take_the_fast_copy():
    kinds = [is_plain_atoms(item) for item in varied()]
    assert kinds == [True, True, True, True, True, False, False, True, False, False]


def test_rng_copies_continue_the_streams_and_leave_the_originals():
    rngs = [np.random.default_rng(5), None]
    copies = copy_rngs(rngs)
    assert copies[1] is None and copies[0] is not rngs[0]
    assert copies[0].random() == np.random.default_rng(5).random()
    assert rngs[0].random() == np.random.default_rng(5).random()     # not advanced by the copy's draw


@pytest.mark.parametrize("items", [
    varied(),
    [structure(i, label=i) for i in range(5)],
    [structure(0), None, structure(1), None],
], ids=["varied", "plain", "with None"])
def test_a_packed_list_unpickles_as_the_list_pickle_gives(items):
    wrapped = packed(items)
    assert isinstance(wrapped, PackedList)
    received = round_trip(wrapped)
    assert type(received) is list and len(received) == len(items)
    for expected, got in zip(round_trip(items), received):
        if expected is None:
            assert got is None
        else:
            same(expected, got)
            if isinstance(got, Atoms):
                assert not any(np.shares_memory(got.positions, other.positions)
                               for other in received if isinstance(other, Atoms) and other is not got)
    assert unpacked(wrapped) is items


def test_lists_that_do_not_pay_or_would_differ_are_not_packed():
    atoms = structure(0)
    other_layout = structure(1)
    other_layout.arrays["forces"] = np.zeros((2, 3))
    for items in ([atoms], [atoms, atoms], [atoms, other_layout], [atoms, {"x": 1}], "text", None):
        assert packed(items) is items


def structures_whose_arrays_are_not_one_row_per_atom():
    """Pairs that cutting by atom would garble: an array longer than the structure has atoms
    (an assignment to ``atoms.arrays`` makes one), and zero-dimensional arrays."""
    longer_2, longer_3 = structure(0), Atoms("H3", positions=np.zeros((3, 3)), cell=[4, 4, 4], pbc=True)
    longer_2.arrays["x"] = np.array([0.0, 1.0, 2.0])
    longer_3.arrays["x"] = np.array([10.0, 11.0, 12.0])
    scalar_1, scalar_2 = structure(1), structure(2)
    scalar_1.arrays["z"] = np.array(1.0)
    scalar_2.arrays["z"] = np.array(2.0)
    fine_a, fine_b = structure(3), structure(4)
    fine_a.arrays["x"], fine_b.arrays["x"] = np.array([3.0, 4.0]), np.array([5.0, 6.0])
    longer_later = Atoms("H3", positions=np.ones((3, 3)), cell=[4, 4, 4], pbc=True)
    longer_later.arrays["x"] = np.arange(5.0)
    return [[longer_2, longer_3], [scalar_1, scalar_2], [fine_a, fine_b, longer_later]]


@pytest.mark.parametrize("index", range(3), ids=["longer first", "zero-dimensional", "longer later"])
def test_arrays_that_are_not_one_row_per_atom_arrive_as_pickle_brings_them(index):
    items = structures_whose_arrays_are_not_one_row_per_atom()[index]
    received = round_trip(packed(items))
    for expected, got in zip(round_trip(items), received):
        same(expected, got)


def mutate_then_fail(items):
    for atoms in items:
        atoms.positions += 10.0
        atoms.info["touched"] = True
    if any(atoms.info["label"] == 3 for atoms in items):
        raise ValueError("item 3 is bad")
    return items


@pytest.mark.filterwarnings("ignore::wfl_like.errors.FailedItemsWarning")
@pytest.mark.parametrize("workers", [0, 2])
def test_items_of_a_failed_chunk_rerun_from_the_original_state_and_callers_objects_stay(workers):
    items = [structure(i, label=i) for i in range(6)]
    before = round_trip(items)
    result = autoparallelize(mutate_then_fail, items, OutputSpec(), autopara_info={
        "num_python_subprocesses": workers, "num_inputs_per_python_subprocess": 3, "errors": "skip"})
    outputs = list(result)
    assert [f.index for f in result.failures] == [3]
    # each output was moved once: the rerun of its chunk began from what the caller gave
    assert [round(a.positions[0, 2] - 10.0, 9) for a in outputs] == [round(0.1 * i, 9) for i in (0, 1, 2, 4, 5)]
    for original, kept in zip(items, before):
        same(kept, original)


def label_with_pid(items):
    for atoms in items:
        atoms.info["pid"] = os.getpid()
    return items


def test_pool_with_packed_chunks_gives_the_serial_outputs():
    items = [structure(i, label=i) for i in range(40)] + [Atoms("H2O", positions=np.eye(3))]
    runs = {}
    for workers in (0, 2):
        result = autoparallelize(label_with_pid, items, OutputSpec(), autopara_info={
            "num_python_subprocesses": workers, "num_inputs_per_python_subprocess": 7})
        runs[workers] = list(result)
    assert len({a.info["pid"] for a in runs[2]}) >= 1 and os.getpid() not in {a.info["pid"] for a in runs[2]}
    for serial, pooled in zip(runs[0], runs[2]):
        serial.info.pop("pid")
        pooled.info.pop("pid")
        same(serial, pooled)


def square(x):
    return x * x


def test_many_workers_return_every_result_to_its_future():
    with WorkerPool(12) as pool:
        futures = [pool.submit(square, i) for i in range(600)]
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(600)]
        assert len(pool.pids) == 12


def exit_on(x, bad):
    if x == bad:
        os._exit(3)
    return x


def test_a_worker_dying_among_many_fails_only_its_task_and_the_pool_carries_on():
    with WorkerPool(8) as pool:
        futures = [pool.submit(exit_on, i, 17) for i in range(100)]
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=120))
            except Exception as exc:
                results.append(type(exc).__name__)
        assert results[17] == "WorkerDiedError"
        assert results[:17] + results[18:] == [i for i in range(100) if i != 17]
        assert pool.submit(square, 3).result(timeout=60) == 9


class RecordingExecutor(ProcessPoolExecutor):
    """A process pool that notes, for each task, whether it carried the call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.carried = []

    def submit(self, fn, /, *args, **kwargs):
        self.carried.append(args[0] is not None)
        return super().submit(fn, *args, **kwargs)


def test_an_executor_gets_the_call_once_per_process_not_with_every_chunk():
    items = [structure(i, label=i) for i in range(40)]
    serial = list(autoparallelize(label_with_pid, items, OutputSpec(),
                                  autopara_info={"num_inputs_per_python_subprocess": 2}))
    with RecordingExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        result = list(autoparallelize(label_with_pid, items, OutputSpec(), autopara_info={
            "num_inputs_per_python_subprocess": 2, "executor": executor}))
    for expected, got in zip(serial, result):
        expected.info.pop("pid")
        got.info.pop("pid")
        same(expected, got)
    # 20 chunks, at most 4 in flight when the first comes back, and each of the 2 processes
    # may ask for the call once more
    assert len(executor.carried) >= 20
    assert sum(executor.carried) <= 4 + 2


# --- which items a worker may lend to the operation --------------------------------------


def test_only_structures_whose_every_mutable_part_is_theirs_alone_are_lendable():
    def plain(i=0):
        atoms = Atoms("CuH", positions=[[0, 0, 0], [1, 1, 1]], cell=[2, 2, 2], pbc=True)
        atoms.info.update(label=i, nested={"a": [1, (2, 3)]}, numbers=np.arange(3), constant=(1, "x"))
        return atoms

    assert lendable([plain(0), plain(1)])
    a, b = plain(0), plain(1)
    b.info["nested"]["a"] = a.info["nested"]["a"]        # one list in two structures
    assert not lendable([a]) and not lendable([b])
    a = plain()
    held = a.info["numbers"]                             # held outside the structure
    assert not lendable([a])
    del held
    assert lendable([a])
    a = plain()
    a.info["view"] = np.arange(4)[1:]                    # a view shares its base's memory
    assert not lendable([a])
    a, b = plain(0), plain(1)
    a.info["pair"] = b.info["pair"] = ([1],)             # a tuple of a list, in two structures
    assert not lendable([a])
    a, b = plain(0), plain(1)
    a.info["pair"] = b.info["pair"] = (1, "one")         # a tuple of immutable values: nothing to change
    assert lendable([a, b])
    a = plain()
    a.arrays["positions"] = a.arrays["positions"][:]     # a view of an array nobody else names
    assert not lendable([a])
    a = plain()
    a.calc = SinglePointCalculator(a, energy=1.0)        # not plain
    assert not lendable([a])
